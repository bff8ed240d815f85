-- The usage ledger: one record per message a carrier took, written in the same transaction
-- as the message's change to 'submitted', so that nothing is counted twice or without being
-- sent. No PHI: the destination is kept only as its country. Priced from the operator's rate
-- card at the time of the send (millionths of the currency). Kept when messages are deleted
-- by retention or erasure: it is the account's bill.
CREATE TABLE usage_records (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts (id),
    product            TEXT NOT NULL CHECK (product IN ('messages', 'dispatch', 'verify')),
    channel            TEXT NOT NULL,
    resource_id        TEXT NOT NULL UNIQUE,
    reference_id       TEXT,
    country            TEXT,
    units              INTEGER NOT NULL CHECK (units >= 0),
    unit               TEXT NOT NULL,
    unit_price_micros  INTEGER,
    currency           TEXT,
    created_at_ms      INTEGER NOT NULL
);
-- Ids are time-ordered and made at `created_at_ms`, so a time range is an id range.
CREATE INDEX usage_by_account ON usage_records (account_id, id);
