-- TOTP factors: the seed sealed under the account's data key, the app's user reference sealed
-- and blind-indexed, the last accepted time step (a code is never accepted twice), the
-- consecutive-failure lockout; recovery codes only as keyed hashes, each used once.
CREATE TABLE verify_factors (
    id               TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    user_ref_ct      BYTEA NOT NULL,
    user_ref_bidx    BYTEA NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('unconfirmed', 'active')),
    seed_ct          BYTEA NOT NULL,
    digits           BIGINT NOT NULL,
    period           BIGINT NOT NULL,
    last_step        BIGINT NOT NULL,
    failed_attempts  BIGINT NOT NULL DEFAULT 0,
    locked_until_ms  BIGINT NOT NULL DEFAULT 0,
    created_at_ms    BIGINT NOT NULL,
    confirmed_at_ms  BIGINT,
    last_used_at_ms  BIGINT
);
CREATE INDEX verify_factors_by_account ON verify_factors (account_id, id);
CREATE INDEX verify_factors_by_user ON verify_factors (account_id, user_ref_bidx);

CREATE TABLE verify_recovery_codes (
    factor_id   TEXT NOT NULL REFERENCES verify_factors (id),
    code_hash   BYTEA NOT NULL,
    used_at_ms  BIGINT,
    PRIMARY KEY (factor_id, code_hash)
);
