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
    -- The first SMS destination's prefix (+ and six digits: coarse, for velocity limits and
    -- pumping statistics) and the blind index of the end user's IP address, when given.
    dest_prefix         TEXT,
    client_ip_bidx      BLOB,
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
CREATE INDEX verifications_by_prefix ON verifications (account_id, dest_prefix, created_at_ms)
    WHERE dest_prefix IS NOT NULL;
CREATE INDEX verifications_by_client_ip ON verifications (account_id, client_ip_bidx, created_at_ms)
    WHERE client_ip_bidx IS NOT NULL;

-- Each account's Verify policy (country allowlist, extra blocked prefixes) as JSON, and the
-- prefixes the pumping guard blocked (kept after unblocking: statistics restart from then).
CREATE TABLE verify_policies (
    account_id     TEXT PRIMARY KEY REFERENCES accounts (id),
    policy         TEXT NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
CREATE TABLE verify_blocked_prefixes (
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    prefix           TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('blocked', 'unblocked')),
    sends            INTEGER NOT NULL,
    conversions      INTEGER NOT NULL,
    blocked_at_ms    INTEGER NOT NULL,
    unblocked_at_ms  INTEGER,
    PRIMARY KEY (account_id, prefix)
);

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
