-- The tamper-evident audit log: events are leaves of an RFC 6962 Merkle tree. The interim
-- table of 0001 is kept, renamed, for reference; new events go to audit_log.
ALTER TABLE audit_events RENAME TO audit_events_interim;

CREATE TABLE audit_log (
    leaf_index     BIGINT PRIMARY KEY,
    event_id       TEXT NOT NULL UNIQUE,
    at_ms          BIGINT NOT NULL,
    action         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    account_id     TEXT,
    credential_id  TEXT,
    auth_method    TEXT,
    source_addr    TEXT,
    user_agent     TEXT,
    resource_type  TEXT,
    resource_id    TEXT,
    reason         TEXT,
    request_id     TEXT,
    leaf           BYTEA NOT NULL
);
CREATE INDEX audit_log_by_account ON audit_log (account_id, leaf_index);
CREATE INDEX audit_log_by_time ON audit_log (at_ms);

-- Complete, aligned subtrees: level = log2(size), idx = start / size. Level 0 holds leaf hashes.
CREATE TABLE audit_nodes (
    level  BIGINT NOT NULL,
    idx    BIGINT NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_tree_heads (
    tree_size     BIGINT PRIMARY KEY,
    timestamp_ms  BIGINT NOT NULL,
    root_hash     BYTEA NOT NULL,
    signature     BYTEA NOT NULL
);

-- The tree's size, kept apart from the events so that deleting events cannot shrink it; its row
-- lock serializes appends across nodes.
CREATE TABLE audit_state (
    singleton  BIGINT PRIMARY KEY CHECK (singleton = 1),
    tree_size  BIGINT NOT NULL
);
INSERT INTO audit_state (singleton, tree_size) VALUES (1, 0);
