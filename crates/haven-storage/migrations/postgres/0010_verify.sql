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
    code_length         BIGINT NOT NULL,
    app_domain          TEXT,
    workflow_ct         BYTEA NOT NULL,
    contact_id          TEXT,
    recipient_bidx      BYTEA NOT NULL,
    step_count          BIGINT NOT NULL,
    current_step        BIGINT NOT NULL,
    code_hash           BYTEA,
    attempts            BIGINT NOT NULL DEFAULT 0,
    max_attempts        BIGINT NOT NULL,
    expiry_ms           BIGINT NOT NULL,
    channel_timeout_ms  BIGINT NOT NULL,
    next_step_at_ms     BIGINT,
    expires_at_ms       BIGINT NOT NULL,
    wake_at_ms          BIGINT NOT NULL,
    lease_until_ms      BIGINT NOT NULL DEFAULT 0,
    created_by          TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    final_at_ms         BIGINT
);
CREATE INDEX verifications_due ON verifications (wake_at_ms) WHERE status = 'pending';
CREATE INDEX verifications_by_recipient ON verifications (account_id, recipient_bidx, created_at_ms);

CREATE TABLE verification_steps (
    verification_id  TEXT NOT NULL REFERENCES verifications (id),
    step_index       BIGINT NOT NULL,
    channel          TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    status           TEXT NOT NULL,
    reason           TEXT,
    sent_at_ms       BIGINT,
    PRIMARY KEY (verification_id, step_index)
);
