-- Messages: registered senders (the organisation's own numbers and addresses, in clear so
-- inbound messages can be routed), messages (addresses, content and client reference sealed;
-- the rows with status 'accepted' are the delivery queue, leased by the worker sending them),
-- the parts a carrier took (for receipt correlation), and receipts waiting to be matched.
CREATE TABLE senders (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id),
    channel        TEXT NOT NULL,
    address        TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    UNIQUE (channel, address)
);
CREATE INDEX senders_by_account ON senders (account_id, id);

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES accounts (id),
    direction           TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    channel             TEXT NOT NULL,
    status              TEXT NOT NULL,
    sender_id           TEXT,
    contact_id          TEXT,
    to_ct               BYTEA NOT NULL,
    from_ct             BYTEA NOT NULL,
    content_ct          BYTEA NOT NULL,
    client_ref_ct       BYTEA,
    client_ref_bidx     BYTEA,
    want_receipt        BOOLEAN NOT NULL,
    parts               BIGINT NOT NULL DEFAULT 0,
    route               TEXT,
    error_code          TEXT,
    error_reason        TEXT,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    lease_until_ms      BIGINT NOT NULL DEFAULT 0,
    expires_at_ms       BIGINT NOT NULL,
    created_by          TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    submitted_at_ms     BIGINT,
    final_at_ms         BIGINT
);
CREATE INDEX messages_due ON messages (next_attempt_at_ms) WHERE status = 'accepted';
CREATE INDEX messages_by_account ON messages (account_id, id);
CREATE INDEX messages_by_client_ref ON messages (account_id, client_ref_bidx) WHERE client_ref_bidx IS NOT NULL;

CREATE TABLE message_parts (
    message_id    TEXT NOT NULL REFERENCES messages (id),
    part_index    BIGINT NOT NULL,
    route         TEXT NOT NULL,
    provider_id   TEXT NOT NULL,
    state         TEXT NOT NULL,
    error_code    TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (message_id, part_index)
);
CREATE INDEX message_parts_by_provider ON message_parts (route, provider_id);

CREATE TABLE channel_receipts (
    id              BIGSERIAL PRIMARY KEY,
    route           TEXT NOT NULL,
    provider_id     TEXT NOT NULL,
    state           TEXT NOT NULL,
    error_code      TEXT,
    at_ms           BIGINT NOT NULL,
    received_at_ms  BIGINT NOT NULL
);
