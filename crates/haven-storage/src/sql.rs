//! Every statement, written once for both backends. Parameters are `$1…$n` and must first
//! appear in increasing order: PostgreSQL numbers them explicitly, SQLite by first appearance
//! (checked by a test below).

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
     WHERE (id = $1 OR parent_id = $1) AND id > $2 ORDER BY id LIMIT $3";
pub const LIST_ALL_ACCOUNTS: &str = "SELECT id, parent_id, name, status, created_at_ms, updated_at_ms FROM accounts \
     WHERE id > $1 ORDER BY id LIMIT $2";
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
     WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3";
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
     credential_id, auth_method, source_addr, user_agent, resource_type, resource_id, reason, request_id, leaf) ";
#[cfg(test)]
const AUDIT_COLS: &str = "leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, source_addr, \
     user_agent, resource_type, resource_id, reason, request_id, leaf";
pub const AUDIT_SELECT: &str = "SELECT leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, \
     source_addr, user_agent, resource_type, resource_id, reason, request_id, leaf FROM audit_log";
pub const AUDIT_EVENT: &str = "SELECT leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, \
     source_addr, user_agent, resource_type, resource_id, reason, request_id, leaf FROM audit_log WHERE event_id = $1";
pub const AUDIT_SCAN: &str = "SELECT leaf_index, event_id, at_ms, action, outcome, account_id, credential_id, auth_method, \
     source_addr, user_agent, resource_type, resource_id, reason, request_id, leaf FROM audit_log \
     WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2";
pub const AUDIT_INSERT_UNNEST: &str = "INSERT INTO audit_log (leaf_index, event_id, at_ms, action, outcome, account_id, \
     credential_id, auth_method, source_addr, user_agent, resource_type, resource_id, reason, request_id, leaf) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
     $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::bytea[])";
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

pub const PING: &str = "SELECT 1";

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
];

#[cfg(test)]
mod tests {
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
        for sql in [super::AUDIT_SELECT, super::AUDIT_EVENT, super::AUDIT_SCAN] {
            assert!(sql.contains(super::AUDIT_COLS));
        }
    }
}
