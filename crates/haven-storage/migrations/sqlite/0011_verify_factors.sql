-- TOTP factors: the seed sealed under the account's data key, the app's user reference sealed
-- and blind-indexed, the last accepted time step (a code is never accepted twice), the
-- consecutive-failure lockout; recovery codes only as keyed hashes, each used once.
CREATE TABLE verify_factors (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    user_ref_ct      BLOB NOT NULL,
    user_ref_bidx    BLOB NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('unconfirmed', 'active')),
    seed_ct          BLOB NOT NULL,
    digits           INTEGER NOT NULL,
    period           INTEGER NOT NULL,
    last_step        INTEGER NOT NULL,
    failed_attempts  INTEGER NOT NULL DEFAULT 0,
    locked_until_ms  INTEGER NOT NULL DEFAULT 0,
    created_at_ms    INTEGER NOT NULL,
    confirmed_at_ms  INTEGER,
    last_used_at_ms  INTEGER
);
CREATE INDEX verify_factors_by_account ON verify_factors (account_id, id);
CREATE INDEX verify_factors_by_user ON verify_factors (account_id, user_ref_bidx);

CREATE TABLE verify_recovery_codes (
    factor_id   TEXT NOT NULL REFERENCES verify_factors (id),
    code_hash   BLOB NOT NULL,
    used_at_ms  INTEGER,
    PRIMARY KEY (factor_id, code_hash)
);
