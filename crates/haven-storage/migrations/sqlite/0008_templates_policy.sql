-- Messaging rules per account: approved templates, the account's messaging policy (first
-- contact only with an approved template, allowed link domains, quiet hours), and the blind
-- index of the patient's address on every message (first-contact checks, replies for Dispatch).
ALTER TABLE messages ADD COLUMN peer_bidx BLOB;
-- The workflow (a dispatch) a message is a step of: only those changes are reported to it.
ALTER TABLE messages ADD COLUMN workflow_id TEXT;
CREATE INDEX messages_by_peer ON messages (account_id, channel, peer_bidx, created_at_ms)
    WHERE peer_bidx IS NOT NULL;

-- Templates are the organisation's own wording (no PHI: parameters are filled in per message
-- and sealed with it), kept in clear so that reviewers can read them.
CREATE TABLE message_templates (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    name            TEXT NOT NULL,
    channel         TEXT NOT NULL,
    locale          TEXT,
    subject         TEXT,
    body            TEXT NOT NULL,
    html            TEXT,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    review_note     TEXT,
    created_by      TEXT,
    reviewed_by     TEXT,
    created_at_ms   INTEGER NOT NULL,
    reviewed_at_ms  INTEGER
);
CREATE INDEX message_templates_by_account ON message_templates (account_id, id);

CREATE TABLE messaging_policies (
    account_id     TEXT PRIMARY KEY REFERENCES accounts (id),
    policy         TEXT NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
