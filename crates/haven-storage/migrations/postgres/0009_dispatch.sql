-- Dispatch: workflows that send a message on one channel after another until a condition is
-- met. The steps (addresses and content: PHI) are sealed; the row is its own durable timer
-- (`wake_at_ms`, leased by the worker that advances it). The watch columns say which reply
-- ends the current step: the channel, the account's sender address (clear, an organisation
-- identifier) and the blind index of the patient's address.
CREATE TABLE dispatches (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES accounts (id),
    status              TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    contact_id          TEXT,
    steps_ct            BYTEA NOT NULL,
    step_count          BIGINT NOT NULL,
    current_step        BIGINT NOT NULL,
    current_message_id  TEXT,
    step_started_at_ms  BIGINT,
    step_deadline_ms    BIGINT,
    watch_channel       TEXT,
    watch_sender        TEXT,
    watch_peer_bidx     BYTEA,
    wake_at_ms          BIGINT NOT NULL,
    lease_until_ms      BIGINT NOT NULL DEFAULT 0,
    -- Set when a change to the step's message or a reply may end it: the worker holding the
    -- lease then looks again at once instead of sleeping until its next check.
    nudged_at_ms        BIGINT NOT NULL DEFAULT 0,
    outcome             TEXT,
    created_by          TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    final_at_ms         BIGINT
);
CREATE INDEX dispatches_due ON dispatches (wake_at_ms) WHERE status = 'running';
CREATE INDEX dispatches_by_account ON dispatches (account_id, id);
CREATE INDEX dispatches_by_message ON dispatches (current_message_id) WHERE status = 'running';
CREATE INDEX dispatches_by_watch ON dispatches (account_id, watch_channel, watch_peer_bidx)
    WHERE status = 'running';

CREATE TABLE dispatch_steps (
    dispatch_id    TEXT NOT NULL REFERENCES dispatches (id),
    step_index     BIGINT NOT NULL,
    channel        TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    started_at_ms  BIGINT,
    ended_at_ms    BIGINT,
    PRIMARY KEY (dispatch_id, step_index)
);
