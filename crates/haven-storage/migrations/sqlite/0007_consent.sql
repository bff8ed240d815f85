-- Consent per recipient address, channel and purpose. The address is kept only as a keyed blind
-- index (per account), so consent can be checked before every send without storing the number.
CREATE TABLE consents (
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    channel        TEXT NOT NULL,
    address_bidx   BLOB NOT NULL,
    purpose        TEXT NOT NULL CHECK (purpose IN ('transactional', 'marketing')),
    status         TEXT NOT NULL CHECK (status IN ('opted_in', 'opted_out')),
    method         TEXT NOT NULL,
    source         TEXT,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (account_id, channel, address_bidx, purpose)
);
