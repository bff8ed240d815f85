-- Verify: one-time codes. The code itself is never stored, only its keyed hash (HMAC-SHA-256
-- under the account's index key, bound to the verification id). The channels and addresses
-- are sealed; the first recipient's blind index limits verifications per recipient and
-- supersedes an older pending one. A pending row is its own durable timer (next channel,
-- expiry), leased by the worker advancing it.
CREATE TABLE verifications (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES accounts (id),
    status              TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'expired', 'cancelled', 'superseded')),
    brand               TEXT NOT NULL,
    locale              TEXT NOT NULL,
    code_length         INTEGER NOT NULL,
    app_domain          TEXT,
    workflow_ct         BLOB NOT NULL,
    contact_id          TEXT,
    recipient_bidx      BLOB NOT NULL,
    step_count          INTEGER NOT NULL,
    current_step        INTEGER NOT NULL,
    code_hash           BLOB,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    expiry_ms           INTEGER NOT NULL,
    channel_timeout_ms  INTEGER NOT NULL,
    next_step_at_ms     INTEGER,
    expires_at_ms       INTEGER NOT NULL,
    wake_at_ms          INTEGER NOT NULL,
    lease_until_ms      INTEGER NOT NULL DEFAULT 0,
    created_by          TEXT,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    final_at_ms         INTEGER
);
CREATE INDEX verifications_due ON verifications (wake_at_ms) WHERE status = 'pending';
CREATE INDEX verifications_by_recipient ON verifications (account_id, recipient_bidx, created_at_ms);

CREATE TABLE verification_steps (
    verification_id  TEXT NOT NULL REFERENCES verifications (id),
    step_index       INTEGER NOT NULL,
    channel          TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    sent_at_ms       INTEGER,
    PRIMARY KEY (verification_id, step_index)
);
