-- Webhooks: the event outbox (written in the same transaction as the change it reports),
-- endpoints (URL and signing secrets sealed under the account's data key), deliveries (one
-- per event and endpoint, leased by the worker that attempts them) and every attempt.
CREATE TABLE webhook_events (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    fanned_out     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_events_unfanned ON webhook_events (created_at_ms) WHERE fanned_out = 0;
CREATE INDEX webhook_events_by_account ON webhook_events (account_id, id);

CREATE TABLE webhook_endpoints (
    id                             TEXT PRIMARY KEY,
    account_id                     TEXT NOT NULL REFERENCES accounts (id),
    url_ct                         BYTEA NOT NULL,
    event_types                    TEXT NOT NULL,
    status                         TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    secret_ct                      BYTEA NOT NULL,
    previous_secret_ct             BYTEA,
    previous_secret_expires_at_ms  BIGINT,
    created_at_ms                  BIGINT NOT NULL,
    updated_at_ms                  BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_account ON webhook_endpoints (account_id, id);

CREATE TABLE webhook_deliveries (
    id                  TEXT PRIMARY KEY,
    event_id            TEXT NOT NULL REFERENCES webhook_events (id),
    endpoint_id         TEXT NOT NULL,
    account_id          TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'dead')),
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    lease_until_ms      BIGINT NOT NULL DEFAULT 0,
    last_status_code    BIGINT,
    last_error          TEXT,
    created_at_ms       BIGINT NOT NULL,
    completed_at_ms     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_by_account ON webhook_deliveries (account_id, status, id);

CREATE TABLE webhook_attempts (
    delivery_id   TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt       BIGINT NOT NULL,
    event_id      TEXT NOT NULL,
    endpoint_id   TEXT NOT NULL,
    at_ms         BIGINT NOT NULL,
    status_code   BIGINT,
    error         TEXT,
    duration_ms   BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
CREATE INDEX webhook_attempts_by_event ON webhook_attempts (event_id, at_ms);
