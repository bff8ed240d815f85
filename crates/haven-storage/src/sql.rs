//! Every statement, written once for both backends. Parameters are `$1…$n` and must first
//! appear in increasing order: PostgreSQL numbers them explicitly, SQLite by first appearance
//! (checked by a test below).
//!
//! A limit is written `LIMIT ($n + 0)`, never `LIMIT $n`: SQLite reads the value bound to a bare
//! limit parameter while planning, so it plans the statement again every time one is bound, and
//! a cached statement is parsed afresh on every use (a recipient's lookup on every send, every
//! claim of the sending loops on the one write connection). An expression is not read that way.
//! PostgreSQL plans both alike. (Checked by tests here and in `inline`.)

#[cfg(test)]
pub const ACCOUNT_COLS: &str = "id, parent_id, name, status, created_at_ms, updated_at_ms";

pub const BOOTSTRAP_ROOT: &str = "INSERT INTO accounts (id, parent_id, is_root, name, status, created_at_ms, updated_at_ms) \
     VALUES ($1, NULL, 1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
pub const ROOT_ACCOUNT: &str = "SELECT id, parent_id, name, status, created_at_ms, updated_at_ms FROM accounts WHERE is_root = 1";
pub const INSERT_ACCOUNT: &str = "INSERT INTO accounts (id, parent_id, is_root, name, status, created_at_ms, updated_at_ms) \
     VALUES ($1, $2, 0, $3, $4, $5, $6)";
pub const GET_ACCOUNT: &str =
    "SELECT id, parent_id, name, status, created_at_ms, updated_at_ms FROM accounts WHERE id = $1";
pub const LIST_ACCOUNTS: &str = "SELECT id, parent_id, name, status, created_at_ms, updated_at_ms FROM accounts \
     WHERE (id = $1 OR parent_id = $1) AND id > $2 ORDER BY id LIMIT ($3 + 0)";
pub const LIST_ALL_ACCOUNTS: &str = "SELECT id, parent_id, name, status, created_at_ms, updated_at_ms FROM accounts \
     WHERE id > $1 ORDER BY id LIMIT ($2 + 0)";
pub const UPDATE_ACCOUNT: &str = "UPDATE accounts SET name = COALESCE($1, name), status = COALESCE($2, status), updated_at_ms = $3 \
     WHERE id = $4 RETURNING id, parent_id, name, status, created_at_ms, updated_at_ms";

#[cfg(test)]
const KEY_COLS: &str = "id, account_id, name, scopes, allowed_cidrs, expires_at_ms, created_at_ms, last_used_at_ms, \
     revoked_at_ms, rotated_at_ms, secret_hash, previous_secret_hash, previous_secret_expires_at_ms";
pub const INSERT_KEY: &str = "INSERT INTO api_keys (id, account_id, name, scopes, allowed_cidrs, expires_at_ms, created_at_ms, \
     last_used_at_ms, revoked_at_ms, rotated_at_ms, secret_hash, previous_secret_hash, previous_secret_expires_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, $8, NULL, NULL)";
pub const GET_KEY: &str = "SELECT id, account_id, name, scopes, allowed_cidrs, expires_at_ms, created_at_ms, last_used_at_ms, \
     revoked_at_ms, rotated_at_ms, secret_hash, previous_secret_hash, previous_secret_expires_at_ms FROM api_keys WHERE id = $1";
pub const LIST_KEYS: &str = "SELECT id, account_id, name, scopes, allowed_cidrs, expires_at_ms, created_at_ms, last_used_at_ms, \
     revoked_at_ms, rotated_at_ms, secret_hash, previous_secret_hash, previous_secret_expires_at_ms FROM api_keys \
     WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT ($3 + 0)";
pub const ROTATE_KEY: &str = "UPDATE api_keys SET secret_hash = $1, previous_secret_hash = $2, previous_secret_expires_at_ms = $3, \
     rotated_at_ms = $4 WHERE id = $5 AND revoked_at_ms IS NULL RETURNING id, account_id, name, scopes, allowed_cidrs, \
     expires_at_ms, created_at_ms, last_used_at_ms, revoked_at_ms, rotated_at_ms, secret_hash, previous_secret_hash, \
     previous_secret_expires_at_ms";
pub const REVOKE_KEY: &str = "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2 RETURNING id, \
     account_id, name, scopes, allowed_cidrs, expires_at_ms, created_at_ms, last_used_at_ms, revoked_at_ms, rotated_at_ms, \
     secret_hash, previous_secret_hash, previous_secret_expires_at_ms";
pub const TOUCH_KEY: &str = "UPDATE api_keys SET last_used_at_ms = $1 WHERE id = $2 AND (last_used_at_ms IS NULL OR last_used_at_ms < $1)";

/// A fixed window per subject: the first failure opens it; reaching the threshold within it
/// locks the subject until `now + lockout`.
pub const RECORD_FAILURE: &str = "INSERT INTO auth_failures (subject, window_start_ms, failures, locked_until_ms) \
     VALUES ($1, $2, 1, CASE WHEN 1 >= $3 THEN $2 + $4 ELSE NULL END) \
     ON CONFLICT (subject) DO UPDATE SET \
       failures = CASE WHEN auth_failures.window_start_ms <= $2 - $5 THEN 1 ELSE auth_failures.failures + 1 END, \
       locked_until_ms = CASE WHEN (CASE WHEN auth_failures.window_start_ms <= $2 - $5 THEN 1 ELSE auth_failures.failures + 1 END) >= $3 \
                              THEN $2 + $4 ELSE auth_failures.locked_until_ms END, \
       window_start_ms = CASE WHEN auth_failures.window_start_ms <= $2 - $5 THEN $2 ELSE auth_failures.window_start_ms END \
     RETURNING locked_until_ms";
pub const LOCKED_UNTIL_1: &str =
    "SELECT MAX(locked_until_ms) FROM auth_failures WHERE subject = $1 AND locked_until_ms > $2";
pub const LOCKED_UNTIL_2: &str = "SELECT MAX(locked_until_ms) FROM auth_failures WHERE (subject = $1 OR subject = $2) AND locked_until_ms > $3";

pub const REVOKE_TOKEN: &str =
    "INSERT INTO revoked_tokens (jti, expires_at_ms) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING";
pub const TOKEN_REVOKED: &str = "SELECT 1 FROM revoked_tokens WHERE jti = $1";
pub const PURGE_TOKENS: &str = "DELETE FROM revoked_tokens WHERE expires_at_ms < $1";
pub const PURGE_FAILURES: &str = "DELETE FROM auth_failures WHERE window_start_ms < $1 AND (locked_until_ms IS NULL OR locked_until_ms < $2)";
pub const PURGE_IDEMPOTENCY: &str = "DELETE FROM idempotency_keys WHERE expires_at_ms < $1";

pub const LIST_SIGNING_KEYS: &str =
    "SELECT kid, public_key, sealed_private_key, created_at_ms FROM signing_keys";
pub const INSERT_SIGNING_KEY: &str = "INSERT INTO signing_keys (kid, public_key, sealed_private_key, created_at_ms) VALUES ($1, $2, $3, $4)";

pub const GET_SYSTEM_SECRET: &str = "SELECT sealed FROM system_secrets WHERE name = $1";
pub const PUT_SYSTEM_SECRET: &str = "INSERT INTO system_secrets (name, sealed, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";

pub const IDEM_CLAIM: &str = "INSERT INTO idempotency_keys (account_id, key, fingerprint, status, body, created_at_ms, expires_at_ms) \
     VALUES ($1, $2, $3, NULL, NULL, $4, $5) ON CONFLICT (account_id, key) DO NOTHING";
pub const IDEM_GET: &str = "SELECT fingerprint, status, body, expires_at_ms, created_at_ms FROM idempotency_keys WHERE account_id = $1 AND key = $2";
pub const IDEM_DELETE_EXPIRED: &str = "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 \
     AND (expires_at_ms <= $3 OR (status IS NULL AND created_at_ms < $4))";
pub const IDEM_COMPLETE: &str =
    "UPDATE idempotency_keys SET status = $1, body = $2 WHERE account_id = $3 AND key = $4";
pub const IDEM_ABANDON: &str =
    "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2 AND status IS NULL";

pub const AUDIT_INSERT_PREFIX: &str = "INSERT INTO audit_log (leaf_index, event_id, at_ms, action, outcome, account_id, \
     credential_id, auth_method, source_addr, user_agent, resource_type, resource_id, reason, request_id) ";
#[cfg(test)]
const AUDIT_COLS: &str = "leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, source_addr, \
     user_agent, resource_type, resource_id, reason, request_id";
pub const AUDIT_SELECT: &str = "SELECT leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, \
     source_addr, user_agent, resource_type, resource_id, reason, request_id FROM audit_log";
pub const AUDIT_EVENT: &str = "SELECT leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, \
     source_addr, user_agent, resource_type, resource_id, reason, request_id FROM audit_log WHERE event_id = $1";
pub const AUDIT_SCAN: &str = "SELECT leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, \
     source_addr, user_agent, resource_type, resource_id, reason, request_id FROM audit_log \
     WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT ($2 + 0)";
pub const AUDIT_INSERT_UNNEST: &str = "INSERT INTO audit_log (leaf_index, event_id, at_ms, action, outcome, account_id, \
     credential_id, auth_method, source_addr, user_agent, resource_type, resource_id, reason, request_id) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
     $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])";
pub const AUDIT_NODES_UNNEST: &str = "INSERT INTO audit_nodes (level, idx, hash) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[])";
pub const AUDIT_LEAF_HASHES: &str =
    "SELECT hash FROM audit_nodes WHERE level = 0 AND idx >= $1 AND idx < $2 ORDER BY idx";
pub const AUDIT_PRUNED_BELOW: &str = "SELECT pruned_below FROM audit_state WHERE singleton = 1";
/// The first event at or after the cutoff bounds the prefix that may go.
pub const AUDIT_PRUNE_BOUNDARY: &str = "SELECT COALESCE(MIN(leaf_index), (SELECT tree_size FROM audit_state WHERE singleton = 1)) FROM audit_log WHERE at_ms >= $1";
pub const AUDIT_PRUNE: &str = "DELETE FROM audit_log WHERE leaf_index < $1";
pub const AUDIT_SET_PRUNED: &str =
    "UPDATE audit_state SET pruned_below = $1 WHERE singleton = 1 AND pruned_below < $1";
pub const AUDIT_SIZE: &str = "SELECT tree_size FROM audit_state WHERE singleton = 1";
pub const AUDIT_SIZE_FOR_UPDATE: &str =
    "SELECT tree_size FROM audit_state WHERE singleton = 1 FOR UPDATE";
pub const AUDIT_SET_SIZE: &str = "UPDATE audit_state SET tree_size = $1 WHERE singleton = 1";
pub const AUDIT_LATEST_HEAD: &str = "SELECT tree_size, timestamp_ms, root_hash, signature FROM audit_tree_heads ORDER BY tree_size DESC LIMIT 1";
pub const AUDIT_HEADS: &str =
    "SELECT tree_size, timestamp_ms, root_hash, signature FROM audit_tree_heads ORDER BY tree_size";
pub const AUDIT_INSERT_HEAD: &str = "INSERT INTO audit_tree_heads (tree_size, timestamp_ms, root_hash, signature) VALUES ($1, $2, $3, $4)";

// Encryption at rest.
#[cfg(test)]
const ACCOUNT_KEY_COLS_: &str = "id, account_id, purpose, wrapped, created_at_ms, retired_at_ms";
pub const ACTIVE_ACCOUNT_KEY: &str = "SELECT id, account_id, purpose, wrapped, created_at_ms, retired_at_ms FROM account_keys \
     WHERE account_id = $1 AND purpose = $2 AND retired_at_ms IS NULL";
pub const GET_ACCOUNT_KEY: &str = "SELECT id, account_id, purpose, wrapped, created_at_ms, retired_at_ms FROM account_keys WHERE id = $1";
pub const RETIRE_ACCOUNT_KEY: &str =
    "UPDATE account_keys SET retired_at_ms = $1 WHERE id = $2 AND retired_at_ms IS NULL";
pub const INSERT_ACCOUNT_KEY: &str = "INSERT INTO account_keys (id, account_id, purpose, wrapped, created_at_ms, retired_at_ms) \
     VALUES ($1, $2, $3, $4, $5, NULL) ON CONFLICT DO NOTHING";
pub const DATA_KEYS_DUE: &str = "SELECT id, account_id, purpose, wrapped, created_at_ms, retired_at_ms FROM account_keys \
     WHERE purpose = 'data' AND retired_at_ms IS NULL AND created_at_ms < $1 ORDER BY created_at_ms LIMIT ($2 + 0)";
pub const INSERT_SUBJECT_KEY: &str = "INSERT INTO subject_keys (subject_id, account_id, key_id, data_key_id, wrapped, created_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6)";
pub const GET_SUBJECT_KEY: &str = "SELECT subject_id, account_id, key_id, data_key_id, wrapped, created_at_ms FROM subject_keys \
     WHERE subject_id = $1";
/// PostgreSQL: [`GET_SUBJECT_KEY`] for many subjects (`$1` the array of their ids); each row
/// with `i`, its subject's place (from 1).
pub const SUBJECT_KEYS_GATHERED: &str = "SELECT k.i, s.subject_id, s.account_id, s.key_id, \
     s.data_key_id, s.wrapped, s.created_at_ms \
     FROM UNNEST($1::text[]) WITH ORDINALITY AS k (subject_id, i) \
     JOIN subject_keys s ON s.subject_id = k.subject_id";
pub const DELETE_SUBJECT_KEY: &str = "DELETE FROM subject_keys WHERE subject_id = $1";
pub const WRAPPED_SYSTEM: &str = "SELECT name, sealed FROM system_secrets ORDER BY name";
pub const WRAPPED_SIGNING: &str = "SELECT kid, sealed_private_key FROM signing_keys ORDER BY kid";
pub const WRAPPED_ACCOUNT: &str = "SELECT id, wrapped FROM account_keys ORDER BY id";
pub const REWRAP_SYSTEM: &str =
    "UPDATE system_secrets SET sealed = $1 WHERE name = $2 AND sealed = $3";
pub const REWRAP_SIGNING: &str =
    "UPDATE signing_keys SET sealed_private_key = $1 WHERE kid = $2 AND sealed_private_key = $3";
pub const REWRAP_ACCOUNT: &str =
    "UPDATE account_keys SET wrapped = $1 WHERE id = $2 AND wrapped = $3";

#[cfg(test)]
const CONTACT_COLS_: &str = "id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, name_ct, phone_ct, \
     email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms";
pub const INSERT_CONTACT: &str = "INSERT INTO contacts (id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, \
     name_ct, phone_ct, email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL)";
pub const GET_CONTACT: &str = "SELECT id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, name_ct, phone_ct, \
     email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms FROM contacts WHERE id = $1";
pub const LIST_CONTACTS: &str = "SELECT id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, name_ct, phone_ct, \
     email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms FROM contacts \
     WHERE account_id = $1 AND id > $2 AND ($3 IS NULL OR reference_bidx = $3) AND ($4 IS NULL OR phone_bidx = $4) \
     AND ($5 IS NULL OR email_bidx = $5) ORDER BY id LIMIT ($6 + 0)";
/// [`LIST_CONTACTS`] narrowed by one blind index, as every send looks its recipient up: with one
/// text per index the planner uses that index (an `($n IS NULL OR col = $n)` test cannot, so
/// the general text walks all of the account's contacts, and SQLite plans it again whenever a
/// value is bound to it). Parameters: account, after, the index, the limit.
pub const LIST_CONTACTS_BY_REFERENCE: &str = "SELECT id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, \
     name_ct, phone_ct, email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms FROM contacts \
     WHERE account_id = $1 AND id > $2 AND reference_bidx = $3 ORDER BY id LIMIT ($4 + 0)";
pub const LIST_CONTACTS_BY_PHONE: &str = "SELECT id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, \
     name_ct, phone_ct, email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms FROM contacts \
     WHERE account_id = $1 AND id > $2 AND phone_bidx = $3 ORDER BY id LIMIT ($4 + 0)";
pub const LIST_CONTACTS_BY_EMAIL: &str = "SELECT id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, \
     name_ct, phone_ct, email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms FROM contacts \
     WHERE account_id = $1 AND id > $2 AND email_bidx = $3 ORDER BY id LIMIT ($4 + 0)";
/// PostgreSQL: `LIST_CONTACTS_BY_*` with no cursor and a page of one, for many keys (`$1`, `$2`
/// the arrays of their accounts and blind indexes in `$col`); each row with `i`, its key's place
/// (from 1).
macro_rules! contacts_gathered_by {
    ($col:literal) => {
        concat!(
            "SELECT k.i, c.* \
             FROM UNNEST($1::text[], $2::bytea[]) WITH ORDINALITY AS k (account_id, bidx, i) \
             CROSS JOIN LATERAL (SELECT id, account_id, reference_bidx, phone_bidx, email_bidx, reference_ct, \
             name_ct, phone_ct, email_ct, attributes_ct, created_at_ms, updated_at_ms, erased_at_ms FROM contacts \
             WHERE contacts.account_id = k.account_id AND ",
            $col,
            " = k.bidx ORDER BY id LIMIT 2) c ORDER BY k.i, c.id"
        )
    };
}
/// By phone index.
pub const CONTACTS_BY_PHONE_GATHERED: &str = contacts_gathered_by!("phone_bidx");
/// By email index.
pub const CONTACTS_BY_EMAIL_GATHERED: &str = contacts_gathered_by!("email_bidx");
pub const UPDATE_CONTACT: &str = "UPDATE contacts SET reference_bidx = $1, phone_bidx = $2, email_bidx = $3, reference_ct = $4, \
     name_ct = $5, phone_ct = $6, email_ct = $7, attributes_ct = $8, updated_at_ms = $9 WHERE id = $10 AND erased_at_ms IS NULL";
pub const ERASE_CONTACT: &str = "UPDATE contacts SET reference_bidx = NULL, phone_bidx = NULL, email_bidx = NULL, \
     reference_ct = NULL, name_ct = NULL, phone_ct = NULL, email_ct = NULL, attributes_ct = NULL, erased_at_ms = $1, \
     updated_at_ms = $1 WHERE id = $2 AND erased_at_ms IS NULL";

pub const INSERT_ENDPOINT: &str = "INSERT INTO webhook_endpoints (id, account_id, url_ct, event_types, status, secret_ct, \
     previous_secret_ct, previous_secret_expires_at_ms, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub const GET_ENDPOINT: &str = "SELECT id, account_id, url_ct, event_types, status, secret_ct, previous_secret_ct, \
     previous_secret_expires_at_ms, created_at_ms, updated_at_ms FROM webhook_endpoints WHERE id = $1";
pub const LIST_ENDPOINTS: &str = "SELECT id, account_id, url_ct, event_types, status, secret_ct, previous_secret_ct, \
     previous_secret_expires_at_ms, created_at_ms, updated_at_ms FROM webhook_endpoints WHERE account_id = $1 AND id > $2 \
     ORDER BY id LIMIT ($3 + 0)";
pub const UPDATE_ENDPOINT: &str = "UPDATE webhook_endpoints SET url_ct = $1, event_types = $2, status = $3, secret_ct = $4, \
     previous_secret_ct = $5, previous_secret_expires_at_ms = $6, updated_at_ms = $7 WHERE id = $8";
pub const DELETE_ENDPOINT: &str = "DELETE FROM webhook_endpoints WHERE id = $1";
pub const KILL_ENDPOINT_DELIVERIES: &str = "UPDATE webhook_deliveries SET status = 'dead', last_error = 'the endpoint was deleted', \
     completed_at_ms = $1 WHERE endpoint_id = $2 AND status = 'pending'";
pub const PARENT_OF: &str = "SELECT parent_id FROM accounts WHERE id = $1";
pub const UNFANNED_EVENTS: &str = "SELECT id, account_id, event_type, payload, envelope, created_at_ms FROM webhook_events \
     WHERE fanned_out = 0 ORDER BY created_at_ms, id LIMIT ($1 + 0)";
pub const ENDPOINTS_FOR: &str = "SELECT id, account_id, event_types FROM webhook_endpoints WHERE status = 'enabled' \
     AND (account_id = $1 OR account_id = (SELECT parent_id FROM accounts WHERE id = $1)) ORDER BY id";
pub const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, account_id, status, attempts, \
     next_attempt_at_ms, lease_until_ms, created_at_ms) VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, $6)";
#[cfg(test)]
const DELIVERY_COLS_: &str = "id, event_id, endpoint_id, account_id, status, attempts, next_attempt_at_ms, last_status_code, \
     last_error, created_at_ms, completed_at_ms";
/// SQLite has one writer, so a plain UPDATE … RETURNING is already exclusive.
pub const CLAIM_DUE_SQLITE: &str = "UPDATE webhook_deliveries SET lease_until_ms = $1 WHERE id IN (SELECT id FROM webhook_deliveries \
     WHERE status = 'pending' AND next_attempt_at_ms <= $2 AND lease_until_ms <= $2 ORDER BY next_attempt_at_ms LIMIT ($3 + 0)) \
     RETURNING id, event_id, endpoint_id, account_id, status, attempts, next_attempt_at_ms, last_status_code, \
     last_error, created_at_ms, completed_at_ms";
/// Several nodes claim at once: each skips rows another holds.
pub const CLAIM_DUE_PG: &str = "UPDATE webhook_deliveries SET lease_until_ms = $1 WHERE id IN (SELECT id FROM webhook_deliveries \
     WHERE status = 'pending' AND next_attempt_at_ms <= $2 AND lease_until_ms <= $2 ORDER BY next_attempt_at_ms LIMIT ($3 + 0) \
     FOR UPDATE SKIP LOCKED) RETURNING id, event_id, endpoint_id, account_id, status, attempts, next_attempt_at_ms, \
     last_status_code, last_error, created_at_ms, completed_at_ms";
pub const GET_EVENT: &str = "SELECT id, account_id, event_type, payload, envelope, created_at_ms FROM webhook_events WHERE id = $1";
pub const INSERT_ATTEMPT: &str = "INSERT INTO webhook_attempts (delivery_id, attempt, event_id, endpoint_id, at_ms, status_code, \
     error, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (delivery_id, attempt) DO NOTHING";
pub const FINISH_DELIVERY: &str = "UPDATE webhook_deliveries SET status = $1, attempts = $2, next_attempt_at_ms = $3, lease_until_ms = 0, \
     last_status_code = $4, last_error = $5, completed_at_ms = $6 WHERE id = $7";
pub const LIST_EVENTS: &str = "SELECT id, account_id, event_type, payload, envelope, created_at_ms FROM webhook_events \
     WHERE (account_id = $1 OR account_id IN (SELECT id FROM accounts WHERE parent_id = $1)) AND id > $2 ORDER BY id LIMIT ($3 + 0)";
pub const DELIVERIES_OF_EVENT: &str = "SELECT id, event_id, endpoint_id, account_id, status, attempts, next_attempt_at_ms, \
     last_status_code, last_error, created_at_ms, completed_at_ms FROM webhook_deliveries WHERE event_id = $1 ORDER BY id";
pub const LIST_DELIVERIES: &str = "SELECT id, event_id, endpoint_id, account_id, status, attempts, next_attempt_at_ms, \
     last_status_code, last_error, created_at_ms, completed_at_ms FROM webhook_deliveries \
     WHERE account_id = $1 AND ($2 IS NULL OR status = $2) AND id > $3 ORDER BY id LIMIT ($4 + 0)";
pub const ATTEMPTS_OF_EVENT: &str = "SELECT delivery_id, attempt, event_id, endpoint_id, at_ms, status_code, error, duration_ms \
     FROM webhook_attempts WHERE event_id = $1 ORDER BY at_ms, delivery_id, attempt";

pub const PING: &str = "SELECT 1";

// ------------------------------------------------------------------ messaging --

macro_rules! message_cols {
    () => {
        "id, account_id, direction, channel, status, sender_id, contact_id, to_ct, from_ct, content_ct, \
         client_ref_ct, client_ref_bidx, want_receipt, parts, route, error_code, error_reason, attempts, \
         next_attempt_at_ms, expires_at_ms, created_by, created_at_ms, updated_at_ms, submitted_at_ms, final_at_ms, \
         peer_bidx, workflow_id"
    };
}

/// PostgreSQL: a batch of messages, each column one array (see `messages::insert_messages_pg`).
pub const INSERT_MESSAGES_PG: &str = concat!(
    "INSERT INTO messages (",
    message_cols!(),
    ", lease_until_ms, due_at_ms) SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], \
     $4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::bytea[], $10::bytea[], \
     $11::bytea[], $12::bytea[], $13::boolean[], $14::bigint[], $15::text[], $16::text[], \
     $17::text[], $18::bigint[], $19::bigint[], $20::bigint[], $21::text[], $22::bigint[], \
     $23::bigint[], $24::bigint[], $25::bigint[], $26::bytea[], $27::text[], $28::bigint[], \
     $29::bigint[])"
);

pub const INSERT_SENDER: &str = "INSERT INTO senders (id, account_id, channel, address, created_at_ms) VALUES ($1, $2, $3, $4, $5)";
pub const GET_SENDER: &str =
    "SELECT id, account_id, channel, address, created_at_ms FROM senders WHERE id = $1";
pub const SENDER_BY_ADDRESS: &str = "SELECT id, account_id, channel, address, created_at_ms FROM senders \
     WHERE channel = $1 AND address = $2";
pub const LIST_SENDERS: &str = "SELECT id, account_id, channel, address, created_at_ms FROM senders \
     WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT ($3 + 0)";
pub const DELETE_SENDER: &str = "DELETE FROM senders WHERE id = $1";
/// The columns of `messages`, in the order every statement binds them.
pub const MESSAGE_COLS: &str = message_cols!();
pub const GET_MESSAGE: &str = concat!("SELECT ", message_cols!(), " FROM messages WHERE id = $1");
pub const LIST_MESSAGES: &str = concat!(
    "SELECT ",
    message_cols!(),
    " FROM messages WHERE account_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR channel = $3) \
     AND ($4 IS NULL OR direction = $4) AND ($5 IS NULL OR client_ref_bidx = $5) AND id > $6 ORDER BY id LIMIT ($7 + 0)"
);
pub const CLAIM_MESSAGES_SQLITE: &str = concat!(
    "UPDATE messages SET lease_until_ms = $1, due_at_ms = $1 WHERE id IN (SELECT id FROM messages WHERE due_at_ms <= $2 \
     AND status = 'accepted' AND lease_until_ms <= $2 ORDER BY due_at_ms LIMIT ($3 + 0)) RETURNING ",
    message_cols!()
);
/// Several nodes claim at once: each skips rows another holds.
pub const CLAIM_MESSAGES_PG: &str = concat!(
    "UPDATE messages SET lease_until_ms = $1, due_at_ms = $1 WHERE id IN (SELECT id FROM messages WHERE due_at_ms <= $2 \
     AND status = 'accepted' AND lease_until_ms <= $2 ORDER BY due_at_ms LIMIT ($3 + 0) \
     FOR UPDATE SKIP LOCKED) RETURNING ",
    message_cols!()
);
pub const RETRY_MESSAGE: &str = "UPDATE messages SET attempts = $1, next_attempt_at_ms = $2, due_at_ms = $2, error_reason = $3, \
     updated_at_ms = $4, lease_until_ms = 0 WHERE id = $5 AND status = 'accepted'";
pub const FINAL_MESSAGE: &str = "UPDATE messages SET status = $1, error_code = $2, error_reason = $3, final_at_ms = $4, \
     updated_at_ms = $4, lease_until_ms = 0, due_at_ms = NULL, content_ct = COALESCE($5, content_ct) \
     WHERE id = $6 AND status = 'accepted'";
/// Stored receipts due for another try, each with its part's message when the part is there now.
pub const DUE_RECEIPTS_SQLITE: &str = "SELECT r.id, r.route, r.provider_id, r.state, r.error_code, r.tries, \
     r.received_at_ms, p.message_id FROM channel_receipts r LEFT JOIN message_parts p \
     ON p.route = r.route AND p.provider_id = r.provider_id \
     WHERE r.next_try_ms <= $1 ORDER BY r.next_try_ms, r.id LIMIT ($2 + 0)";
pub const DUE_RECEIPTS_PG: &str = "SELECT r.id, r.route, r.provider_id, r.state, r.error_code, r.tries, \
     r.received_at_ms, p.message_id FROM channel_receipts r LEFT JOIN message_parts p \
     ON p.route = r.route AND p.provider_id = r.provider_id \
     WHERE r.next_try_ms <= $1 ORDER BY r.next_try_ms, r.id LIMIT ($2 + 0) FOR UPDATE OF r SKIP LOCKED";
/// Whether any stored receipt is due (on a reader, before taking the writer).
pub const RECEIPT_DUE: &str = "SELECT id FROM channel_receipts WHERE next_try_ms <= $1 LIMIT 1";

pub const UPSERT_CONSENT: &str = "INSERT INTO consents (account_id, channel, address_bidx, purpose, status, method, source, updated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account_id, channel, address_bidx, purpose) DO UPDATE SET \
     status = excluded.status, method = excluded.method, source = excluded.source, updated_at_ms = excluded.updated_at_ms";
pub const CONSENTS_FOR: &str = "SELECT account_id, channel, address_bidx, purpose, status, method, source, updated_at_ms \
     FROM consents WHERE account_id = $1 AND channel = $2 AND address_bidx = $3 ORDER BY purpose";

/// PostgreSQL: [`CONSENTS_FOR`] for many recipients (`$1`, `$2`, `$3` the arrays of their
/// accounts, channels and address indexes), each row with `i`, its recipient's place (from 1).
pub const CONSENTS_GATHERED: &str = "SELECT k.i, c.account_id, c.channel, c.address_bidx, c.purpose, \
     c.status, c.method, c.source, c.updated_at_ms \
     FROM UNNEST($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS k (account_id, channel, address_bidx, i) \
     JOIN consents c ON c.account_id = k.account_id AND c.channel = k.channel \
     AND c.address_bidx = k.address_bidx ORDER BY k.i, c.purpose";

pub const HAS_EXCHANGED: &str =
    "SELECT 1 FROM messages WHERE account_id = $1 AND channel = $2 AND peer_bidx = $3 LIMIT 1";
pub const INBOUND_FROM: &str = concat!(
    "SELECT ",
    message_cols!(),
    " FROM messages WHERE account_id = $1 AND channel = $2 AND peer_bidx = $3 AND direction = 'inbound' \
     AND sender_id = $4 AND created_at_ms >= $5 ORDER BY created_at_ms, id LIMIT ($6 + 0)"
);

macro_rules! template_cols {
    () => {
        "id, account_id, name, channel, locale, subject, body, html, status, review_note, created_by, \
         reviewed_by, created_at_ms, reviewed_at_ms"
    };
}
#[cfg(test)]
pub const TEMPLATE_COLS: &str = template_cols!();
pub const INSERT_TEMPLATE: &str = concat!(
    "INSERT INTO message_templates (",
    template_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);
pub const GET_TEMPLATE: &str = concat!(
    "SELECT ",
    template_cols!(),
    " FROM message_templates WHERE id = $1"
);
pub const LIST_TEMPLATES: &str = concat!(
    "SELECT ",
    template_cols!(),
    " FROM message_templates WHERE account_id = $1 AND ($2 IS NULL OR status = $2) AND id > $3 ORDER BY id LIMIT ($4 + 0)"
);
pub const REVIEW_TEMPLATE: &str = "UPDATE message_templates SET status = $1, review_note = $2, reviewed_by = $3, \
     reviewed_at_ms = $4 WHERE id = $5 AND status = 'pending'";
pub const DELETE_TEMPLATE: &str = "DELETE FROM message_templates WHERE id = $1";
pub const GET_POLICY: &str = "SELECT policy FROM messaging_policies WHERE account_id = $1";
pub const PUT_POLICY: &str = "INSERT INTO messaging_policies (account_id, policy, updated_at_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (account_id) DO UPDATE SET policy = excluded.policy, updated_at_ms = excluded.updated_at_ms";

// ------------------------------------------------------------------- dispatch --

macro_rules! dispatch_cols {
    () => {
        "id, account_id, status, contact_id, steps_ct, step_count, current_step, current_message_id, \
         step_started_at_ms, step_deadline_ms, watch_channel, watch_sender, watch_peer_bidx, wake_at_ms, \
         outcome, created_by, created_at_ms, updated_at_ms, final_at_ms"
    };
}
#[cfg(test)]
pub const DISPATCH_COLS: &str = dispatch_cols!();
pub const INSERT_DISPATCH: &str = concat!(
    "INSERT INTO dispatches (",
    dispatch_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
);
pub const GET_DISPATCH: &str = concat!(
    "SELECT ",
    dispatch_cols!(),
    " FROM dispatches WHERE id = $1"
);
pub const LIST_DISPATCHES: &str = concat!(
    "SELECT ",
    dispatch_cols!(),
    " FROM dispatches WHERE account_id = $1 AND ($2 IS NULL OR status = $2) AND id > $3 ORDER BY id LIMIT ($4 + 0)"
);
pub const CLAIM_DISPATCHES_SQLITE: &str = concat!(
    "UPDATE dispatches SET lease_until_ms = $1 WHERE id IN (SELECT id FROM dispatches WHERE status = 'running' \
     AND wake_at_ms <= $2 AND lease_until_ms <= $2 ORDER BY wake_at_ms LIMIT ($3 + 0)) RETURNING ",
    dispatch_cols!()
);
pub const CLAIM_DISPATCHES_PG: &str = concat!(
    "UPDATE dispatches SET lease_until_ms = $1 WHERE id IN (SELECT id FROM dispatches WHERE status = 'running' \
     AND wake_at_ms <= $2 AND lease_until_ms <= $2 ORDER BY wake_at_ms LIMIT ($3 + 0) FOR UPDATE SKIP LOCKED) RETURNING ",
    dispatch_cols!()
);
/// A nudge that came while the worker was looking makes the dispatch due at once.
pub const ADVANCE_DISPATCH: &str = "UPDATE dispatches SET status = $1, current_step = $2, current_message_id = $3, \
     step_started_at_ms = $4, step_deadline_ms = $5, watch_channel = $6, watch_sender = $7, watch_peer_bidx = $8, \
     wake_at_ms = CASE WHEN nudged_at_ms >= $9 THEN $9 ELSE $10 END, lease_until_ms = 0, outcome = $11, \
     final_at_ms = $12, updated_at_ms = $13 WHERE id = $14 AND status = 'running'";
pub const INSERT_DISPATCH_STEP: &str = "INSERT INTO dispatch_steps (dispatch_id, step_index, channel, message_id, status, \
     reason, started_at_ms, ended_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub const UPDATE_DISPATCH_STEP: &str = "UPDATE dispatch_steps SET status = $1, reason = $2, started_at_ms = $3, \
     ended_at_ms = $4 WHERE dispatch_id = $5 AND step_index = $6";
pub const DISPATCH_STEPS: &str = "SELECT dispatch_id, step_index, channel, message_id, status, reason, started_at_ms, \
     ended_at_ms FROM dispatch_steps WHERE dispatch_id = $1 ORDER BY step_index";
pub const CANCEL_DISPATCH: &str = "UPDATE dispatches SET status = 'cancelled', outcome = 'cancelled', final_at_ms = $1, \
     updated_at_ms = $1, watch_channel = NULL, watch_sender = NULL, watch_peer_bidx = NULL \
     WHERE id = $2 AND status = 'running'";
pub const CANCEL_DISPATCH_STEPS: &str = "UPDATE dispatch_steps SET status = 'cancelled', ended_at_ms = $1 \
     WHERE dispatch_id = $2 AND status IN ('pending', 'waiting')";
/// The ids come as one JSON array, so a whole batch of receipts is one statement.
pub const NUDGE_MESSAGES_SQLITE: &str = "UPDATE dispatches SET nudged_at_ms = $1, wake_at_ms = $1 WHERE status = 'running' \
     AND current_message_id IN (SELECT value FROM json_each($2))";
pub const NUDGE_MESSAGES_PG: &str = "UPDATE dispatches SET nudged_at_ms = $1, wake_at_ms = $1 WHERE status = 'running' \
     AND current_message_id IN (SELECT jsonb_array_elements_text($2::jsonb))";
pub const NUDGE_REPLY: &str = "UPDATE dispatches SET nudged_at_ms = $1, wake_at_ms = $1 WHERE status = 'running' \
     AND account_id = $2 AND watch_channel = $3 AND watch_sender = $4 AND watch_peer_bidx = $5";

// --------------------------------------------------------------------- verify --

macro_rules! verification_cols {
    () => {
        "id, account_id, status, brand, locale, code_length, app_domain, workflow_ct, contact_id, recipient_bidx, \
         step_count, current_step, code_hash, attempts, max_attempts, expiry_ms, channel_timeout_ms, \
         next_step_at_ms, expires_at_ms, wake_at_ms, created_by, created_at_ms, updated_at_ms, final_at_ms, \
         dest_prefix, client_ip_bidx"
    };
}
#[cfg(test)]
pub const VERIFICATION_COLS: &str = verification_cols!();
pub const INSERT_VERIFICATION: &str = concat!(
    "INSERT INTO verifications (",
    verification_cols!(),
    ", lease_until_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22, $23, $24, $25, $26, $20)"
);
pub const SUPERSEDE_VERIFICATIONS: &str = "UPDATE verifications SET status = 'superseded', code_hash = NULL, \
     final_at_ms = $1, updated_at_ms = $1 WHERE account_id = $2 AND recipient_bidx = $3 AND status = 'pending' RETURNING id";
pub const GET_VERIFICATION: &str = concat!(
    "SELECT ",
    verification_cols!(),
    " FROM verifications WHERE id = $1"
);
pub const COUNT_RECENT_VERIFICATIONS: &str = "SELECT COUNT(*) AS n FROM verifications WHERE account_id = $1 \
     AND recipient_bidx = $2 AND created_at_ms >= $3";
pub const CLAIM_VERIFICATIONS_SQLITE: &str = concat!(
    "UPDATE verifications SET lease_until_ms = $1 WHERE id IN (SELECT id FROM verifications WHERE status = 'pending' \
     AND wake_at_ms <= $2 AND lease_until_ms <= $2 ORDER BY wake_at_ms LIMIT ($3 + 0)) RETURNING ",
    verification_cols!()
);
pub const CLAIM_VERIFICATIONS_PG: &str = concat!(
    "UPDATE verifications SET lease_until_ms = $1 WHERE id IN (SELECT id FROM verifications WHERE status = 'pending' \
     AND wake_at_ms <= $2 AND lease_until_ms <= $2 ORDER BY wake_at_ms LIMIT ($3 + 0) FOR UPDATE SKIP LOCKED) RETURNING ",
    verification_cols!()
);
pub const LEASE_VERIFICATION: &str = concat!(
    "UPDATE verifications SET lease_until_ms = $1 WHERE id = $2 AND status = 'pending' AND lease_until_ms <= $3 RETURNING ",
    verification_cols!()
);
pub const SAVE_VERIFICATION: &str = "UPDATE verifications SET status = $1, current_step = $2, code_hash = $3, \
     next_step_at_ms = $4, expires_at_ms = $5, wake_at_ms = $6, lease_until_ms = $7, updated_at_ms = $8, final_at_ms = $9 \
     WHERE id = $10 AND status = 'pending'";
pub const INSERT_VERIFICATION_STEP: &str = "INSERT INTO verification_steps (verification_id, step_index, channel, message_id, \
     status, reason, sent_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub const UPDATE_VERIFICATION_STEP: &str = "UPDATE verification_steps SET status = $1, reason = $2, sent_at_ms = $3 \
     WHERE verification_id = $4 AND step_index = $5";
pub const VERIFICATION_STEPS: &str = "SELECT verification_id, step_index, channel, message_id, status, reason, sent_at_ms \
     FROM verification_steps WHERE verification_id = $1 ORDER BY step_index";
pub const TAKE_ATTEMPT: &str = "UPDATE verifications SET attempts = attempts + 1 WHERE id = $1 AND status = 'pending' \
     AND attempts < max_attempts RETURNING attempts, max_attempts, code_hash, expires_at_ms";
pub const END_VERIFICATION: &str = "UPDATE verifications SET status = $1, code_hash = NULL, final_at_ms = $2, updated_at_ms = $2 \
     WHERE id = $3 AND status = 'pending' AND ($4 IS NULL OR code_hash = $4)";

pub const GET_VERIFY_POLICY: &str = "SELECT policy FROM verify_policies WHERE account_id = $1";
pub const PUT_VERIFY_POLICY: &str = "INSERT INTO verify_policies (account_id, policy, updated_at_ms) VALUES ($1, $2, $3) \
     ON CONFLICT (account_id) DO UPDATE SET policy = excluded.policy, updated_at_ms = excluded.updated_at_ms";
pub const COUNT_PREFIX_VELOCITY: &str = "SELECT COUNT(*) AS n FROM verifications WHERE account_id = $1 \
     AND dest_prefix = $2 AND created_at_ms >= $3";
pub const COUNT_IP_VELOCITY: &str = "SELECT COUNT(*) AS n FROM verifications WHERE account_id = $1 \
     AND client_ip_bidx = $2 AND created_at_ms >= $3";
pub const PREFIX_STATS: &str = "SELECT COUNT(*) AS sends, \
     COALESCE(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0) AS conversions FROM verifications \
     WHERE account_id = $1 AND dest_prefix = $2 AND created_at_ms >= $3 AND (status <> 'pending' OR created_at_ms < $4)";
macro_rules! blocked_cols {
    () => {
        "account_id, prefix, status, sends, conversions, blocked_at_ms, unblocked_at_ms"
    };
}
pub const GET_BLOCKED_PREFIX: &str = concat!(
    "SELECT ",
    blocked_cols!(),
    " FROM verify_blocked_prefixes WHERE account_id = $1 AND prefix = $2"
);
pub const LIST_BLOCKED_PREFIXES: &str = concat!(
    "SELECT ",
    blocked_cols!(),
    " FROM verify_blocked_prefixes WHERE account_id = $1 ORDER BY prefix"
);
pub const BLOCK_PREFIX: &str = concat!(
    "INSERT INTO verify_blocked_prefixes (",
    blocked_cols!(),
    ") VALUES ($1, $2, 'blocked', $3, $4, $5, NULL) ON CONFLICT (account_id, prefix) DO UPDATE SET status = 'blocked', \
     sends = excluded.sends, conversions = excluded.conversions, blocked_at_ms = excluded.blocked_at_ms"
);
pub const UNBLOCK_PREFIX: &str = "UPDATE verify_blocked_prefixes SET status = 'unblocked', unblocked_at_ms = $1 \
     WHERE account_id = $2 AND prefix = $3 AND status = 'blocked'";

macro_rules! factor_cols {
    () => {
        "id, account_id, user_ref_ct, user_ref_bidx, status, seed_ct, digits, period, last_step, failed_attempts, \
         locked_until_ms, created_at_ms, confirmed_at_ms, last_used_at_ms"
    };
}
#[cfg(test)]
pub const FACTOR_COLS: &str = factor_cols!();
pub const INSERT_FACTOR: &str = concat!(
    "INSERT INTO verify_factors (",
    factor_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);
pub const GET_FACTOR: &str = concat!(
    "SELECT ",
    factor_cols!(),
    " FROM verify_factors WHERE id = $1"
);
pub const LIST_FACTORS: &str = concat!(
    "SELECT ",
    factor_cols!(),
    " FROM verify_factors WHERE account_id = $1 AND ($2 IS NULL OR user_ref_bidx = $2) AND id > $3 ORDER BY id LIMIT ($4 + 0)"
);
pub const DELETE_FACTOR_CODES: &str = "DELETE FROM verify_recovery_codes WHERE factor_id = $1";
pub const DELETE_FACTOR: &str = "DELETE FROM verify_factors WHERE id = $1";
/// Only a later step than the last accepted one: a code works once, even under a race.
pub const ACCEPT_STEP: &str = "UPDATE verify_factors SET last_step = $1, status = 'active', failed_attempts = 0, \
     confirmed_at_ms = COALESCE(confirmed_at_ms, $2), last_used_at_ms = $2 WHERE id = $3 AND last_step < $1";
pub const INSERT_RECOVERY_CODE: &str =
    "INSERT INTO verify_recovery_codes (factor_id, code_hash) VALUES ($1, $2)";
pub const RECORD_FACTOR_FAILURE: &str = "UPDATE verify_factors SET \
     failed_attempts = CASE WHEN failed_attempts + 1 >= $1 THEN 0 ELSE failed_attempts + 1 END, \
     locked_until_ms = CASE WHEN failed_attempts + 1 >= $1 THEN $2 ELSE locked_until_ms END \
     WHERE id = $3 RETURNING failed_attempts";
pub const USE_RECOVERY_CODE: &str = "UPDATE verify_recovery_codes SET used_at_ms = $1 \
     WHERE factor_id = $2 AND code_hash = $3 AND used_at_ms IS NULL";
pub const RECOVERY_CODES_LEFT: &str =
    "SELECT COUNT(*) AS n FROM verify_recovery_codes WHERE factor_id = $1 AND used_at_ms IS NULL";

#[cfg(test)]
pub const ALL: &[&str] = &[
    BOOTSTRAP_ROOT,
    ROOT_ACCOUNT,
    INSERT_ACCOUNT,
    GET_ACCOUNT,
    LIST_ACCOUNTS,
    LIST_ALL_ACCOUNTS,
    UPDATE_ACCOUNT,
    INSERT_KEY,
    GET_KEY,
    LIST_KEYS,
    ROTATE_KEY,
    REVOKE_KEY,
    TOUCH_KEY,
    RECORD_FAILURE,
    LOCKED_UNTIL_1,
    LOCKED_UNTIL_2,
    REVOKE_TOKEN,
    TOKEN_REVOKED,
    PURGE_TOKENS,
    PURGE_FAILURES,
    PURGE_IDEMPOTENCY,
    LIST_SIGNING_KEYS,
    INSERT_SIGNING_KEY,
    GET_SYSTEM_SECRET,
    PUT_SYSTEM_SECRET,
    IDEM_CLAIM,
    IDEM_GET,
    IDEM_DELETE_EXPIRED,
    IDEM_COMPLETE,
    IDEM_ABANDON,
    ACTIVE_ACCOUNT_KEY,
    GET_ACCOUNT_KEY,
    RETIRE_ACCOUNT_KEY,
    INSERT_ACCOUNT_KEY,
    DATA_KEYS_DUE,
    INSERT_SUBJECT_KEY,
    GET_SUBJECT_KEY,
    SUBJECT_KEYS_GATHERED,
    DELETE_SUBJECT_KEY,
    REWRAP_SYSTEM,
    REWRAP_SIGNING,
    REWRAP_ACCOUNT,
    INSERT_CONTACT,
    GET_CONTACT,
    LIST_CONTACTS,
    LIST_CONTACTS_BY_REFERENCE,
    LIST_CONTACTS_BY_PHONE,
    LIST_CONTACTS_BY_EMAIL,
    CONTACTS_BY_PHONE_GATHERED,
    CONTACTS_BY_EMAIL_GATHERED,
    UPDATE_CONTACT,
    ERASE_CONTACT,
    INSERT_ENDPOINT,
    GET_ENDPOINT,
    LIST_ENDPOINTS,
    UPDATE_ENDPOINT,
    DELETE_ENDPOINT,
    KILL_ENDPOINT_DELIVERIES,
    PARENT_OF,
    UNFANNED_EVENTS,
    ENDPOINTS_FOR,
    INSERT_DELIVERY,
    CLAIM_DUE_SQLITE,
    CLAIM_DUE_PG,
    GET_EVENT,
    INSERT_ATTEMPT,
    FINISH_DELIVERY,
    LIST_EVENTS,
    DELIVERIES_OF_EVENT,
    LIST_DELIVERIES,
    ATTEMPTS_OF_EVENT,
    INSERT_SENDER,
    GET_SENDER,
    SENDER_BY_ADDRESS,
    LIST_SENDERS,
    DELETE_SENDER,
    GET_MESSAGE,
    LIST_MESSAGES,
    CLAIM_MESSAGES_SQLITE,
    CLAIM_MESSAGES_PG,
    RETRY_MESSAGE,
    FINAL_MESSAGE,
    DUE_RECEIPTS_SQLITE,
    DUE_RECEIPTS_PG,
    RECEIPT_DUE,
    UPSERT_CONSENT,
    CONSENTS_FOR,
    CONSENTS_GATHERED,
    HAS_EXCHANGED,
    INBOUND_FROM,
    INSERT_TEMPLATE,
    GET_TEMPLATE,
    LIST_TEMPLATES,
    REVIEW_TEMPLATE,
    DELETE_TEMPLATE,
    GET_POLICY,
    PUT_POLICY,
    INSERT_DISPATCH,
    GET_DISPATCH,
    LIST_DISPATCHES,
    CLAIM_DISPATCHES_SQLITE,
    CLAIM_DISPATCHES_PG,
    ADVANCE_DISPATCH,
    INSERT_DISPATCH_STEP,
    UPDATE_DISPATCH_STEP,
    DISPATCH_STEPS,
    CANCEL_DISPATCH,
    CANCEL_DISPATCH_STEPS,
    NUDGE_MESSAGES_SQLITE,
    NUDGE_MESSAGES_PG,
    NUDGE_REPLY,
    INSERT_VERIFICATION,
    SUPERSEDE_VERIFICATIONS,
    GET_VERIFICATION,
    COUNT_RECENT_VERIFICATIONS,
    CLAIM_VERIFICATIONS_SQLITE,
    CLAIM_VERIFICATIONS_PG,
    LEASE_VERIFICATION,
    SAVE_VERIFICATION,
    INSERT_VERIFICATION_STEP,
    UPDATE_VERIFICATION_STEP,
    VERIFICATION_STEPS,
    TAKE_ATTEMPT,
    END_VERIFICATION,
    GET_VERIFY_POLICY,
    PUT_VERIFY_POLICY,
    COUNT_PREFIX_VELOCITY,
    COUNT_IP_VELOCITY,
    PREFIX_STATS,
    GET_BLOCKED_PREFIX,
    LIST_BLOCKED_PREFIXES,
    BLOCK_PREFIX,
    UNBLOCK_PREFIX,
    INSERT_FACTOR,
    GET_FACTOR,
    LIST_FACTORS,
    DELETE_FACTOR_CODES,
    DELETE_FACTOR,
    ACCEPT_STEP,
    INSERT_RECOVERY_CODE,
    RECORD_FACTOR_FAILURE,
    USE_RECOVERY_CODE,
    RECOVERY_CODES_LEFT,
];

#[cfg(test)]
mod tests {
    #[test]
    fn no_statement_limits_by_a_bare_parameter() {
        for sql in super::ALL {
            assert!(
                !sql.contains("LIMIT $"),
                "write LIMIT ($n + 0), not LIMIT $n (see the module's note): {sql}"
            );
        }
    }

    #[test]
    fn parameters_first_appear_in_order() {
        for sql in super::ALL {
            let mut highest = 0u32;
            let bytes = sql.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b != b'$' {
                    continue;
                }
                let n: String = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .map(|c| char::from(*c))
                    .collect();
                let Ok(n) = n.parse::<u32>() else { continue };
                assert!(
                    n <= highest + 1,
                    "${n} appears before ${} in: {sql}",
                    highest + 1
                );
                highest = highest.max(n);
            }
        }
    }

    #[test]
    fn key_columns_are_consistent() {
        for sql in [super::GET_KEY, super::LIST_KEYS] {
            assert!(sql.contains(super::KEY_COLS));
        }
        assert!(super::GET_ACCOUNT.contains(super::ACCOUNT_COLS));
        for sql in [
            super::ACTIVE_ACCOUNT_KEY,
            super::GET_ACCOUNT_KEY,
            super::DATA_KEYS_DUE,
        ] {
            assert!(sql.contains(super::ACCOUNT_KEY_COLS_));
        }
        for sql in [
            super::CLAIM_DUE_SQLITE,
            super::CLAIM_DUE_PG,
            super::DELIVERIES_OF_EVENT,
            super::LIST_DELIVERIES,
        ] {
            assert!(sql.contains(super::DELIVERY_COLS_));
        }
        for sql in [super::GET_FACTOR, super::LIST_FACTORS] {
            assert!(sql.contains(super::FACTOR_COLS));
        }
        for sql in [
            super::GET_VERIFICATION,
            super::CLAIM_VERIFICATIONS_SQLITE,
            super::CLAIM_VERIFICATIONS_PG,
            super::LEASE_VERIFICATION,
        ] {
            assert!(sql.contains(super::VERIFICATION_COLS));
        }
        for sql in [
            super::GET_DISPATCH,
            super::LIST_DISPATCHES,
            super::CLAIM_DISPATCHES_SQLITE,
            super::CLAIM_DISPATCHES_PG,
        ] {
            assert!(sql.contains(super::DISPATCH_COLS));
        }
        for sql in [super::GET_TEMPLATE, super::LIST_TEMPLATES] {
            assert!(sql.contains(super::TEMPLATE_COLS));
        }
        for sql in [
            super::GET_CONTACT,
            super::LIST_CONTACTS,
            super::LIST_CONTACTS_BY_REFERENCE,
            super::LIST_CONTACTS_BY_PHONE,
            super::LIST_CONTACTS_BY_EMAIL,
            super::CONTACTS_BY_PHONE_GATHERED,
            super::CONTACTS_BY_EMAIL_GATHERED,
        ] {
            assert!(sql.contains(super::CONTACT_COLS_));
        }
        for sql in [super::AUDIT_SELECT, super::AUDIT_EVENT, super::AUDIT_SCAN] {
            assert!(sql.contains(super::AUDIT_COLS));
        }
    }
}
