-- Platform core: tenancy, credentials, OAuth signing keys, idempotency, audit (interim table).
-- Times are milliseconds since the Unix epoch (UTC). Lists are JSON arrays in TEXT.
CREATE TABLE accounts (
    id             TEXT PRIMARY KEY,
    parent_id      TEXT REFERENCES accounts (id),
    is_root        INTEGER NOT NULL DEFAULT 0,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
CREATE UNIQUE INDEX accounts_single_root ON accounts (is_root) WHERE is_root = 1;
CREATE INDEX accounts_by_parent ON accounts (parent_id, id);

CREATE TABLE api_keys (
    id                             TEXT PRIMARY KEY,
    account_id                     TEXT NOT NULL REFERENCES accounts (id),
    name                           TEXT NOT NULL,
    scopes                         TEXT NOT NULL,
    allowed_cidrs                  TEXT NOT NULL,
    expires_at_ms                  INTEGER,
    created_at_ms                  INTEGER NOT NULL,
    last_used_at_ms                INTEGER,
    revoked_at_ms                  INTEGER,
    rotated_at_ms                  INTEGER,
    secret_hash                    BLOB NOT NULL,
    previous_secret_hash           BLOB,
    previous_secret_expires_at_ms  INTEGER
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, id);

CREATE TABLE auth_failures (
    subject          TEXT PRIMARY KEY,
    window_start_ms  INTEGER NOT NULL,
    failures         INTEGER NOT NULL,
    locked_until_ms  INTEGER
);

CREATE TABLE revoked_tokens (
    jti            TEXT PRIMARY KEY,
    expires_at_ms  INTEGER NOT NULL
);

CREATE TABLE signing_keys (
    kid                 TEXT PRIMARY KEY,
    public_key          BLOB NOT NULL,
    sealed_private_key  BLOB NOT NULL,
    created_at_ms       INTEGER NOT NULL
);

CREATE TABLE system_secrets (
    name           TEXT PRIMARY KEY,
    sealed         BLOB NOT NULL,
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE idempotency_keys (
    account_id     TEXT NOT NULL,
    key            TEXT NOT NULL,
    fingerprint    BLOB NOT NULL,
    status         INTEGER,
    body           BLOB,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
);

CREATE TABLE audit_events (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms             INTEGER NOT NULL,
    action            TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    actor_account_id  TEXT,
    credential_id     TEXT,
    auth_method       TEXT,
    source_addr       TEXT,
    user_agent        TEXT,
    resource_type     TEXT,
    resource_id       TEXT,
    reason            TEXT,
    request_id        TEXT
);
CREATE INDEX audit_events_by_time ON audit_events (at_ms);
