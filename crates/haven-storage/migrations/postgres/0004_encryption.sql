-- Encryption at rest: account keys (wrapped by the master key ring), per-subject keys (wrapped
-- by an account data key; deleting one is the erasure), and contacts, stored only as
-- ciphertexts and keyed blind indexes.
CREATE TABLE account_keys (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    purpose        TEXT NOT NULL CHECK (purpose IN ('data', 'index')),
    wrapped        BYTEA NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    retired_at_ms  BIGINT
);
CREATE UNIQUE INDEX account_keys_one_active ON account_keys (account_id, purpose) WHERE retired_at_ms IS NULL;
CREATE INDEX account_keys_due ON account_keys (created_at_ms) WHERE retired_at_ms IS NULL AND purpose = 'data';

CREATE TABLE subject_keys (
    subject_id     TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    key_id         TEXT NOT NULL,
    data_key_id    TEXT NOT NULL REFERENCES account_keys (id),
    wrapped        BYTEA NOT NULL,
    created_at_ms  BIGINT NOT NULL
);

CREATE TABLE contacts (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    reference_bidx  BYTEA,
    phone_bidx      BYTEA,
    email_bidx      BYTEA,
    reference_ct    BYTEA,
    name_ct         BYTEA,
    phone_ct        BYTEA,
    email_ct        BYTEA,
    attributes_ct   BYTEA,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    erased_at_ms    BIGINT
);
CREATE UNIQUE INDEX contacts_by_reference ON contacts (account_id, reference_bidx);
CREATE INDEX contacts_by_phone ON contacts (account_id, phone_bidx);
CREATE INDEX contacts_by_email ON contacts (account_id, email_bidx);
CREATE INDEX contacts_by_account ON contacts (account_id, id);
