-- The sending queue gets a column of its own, so that only leaving the queue touches an index.
-- `due_at_ms` is the time a queued (`accepted`) message is due and NULL for every other
-- message; the partial index that finds due messages is on it instead of on `status`. A status
-- change after that (submitted -> delivered, the receipt) then changes no indexed column, and
-- PostgreSQL can make it a heap-only (HOT) update: a new version of the row on the same page,
-- no new entry in any of the table's indexes. Pages are left a quarter free for those versions.
ALTER TABLE messages ADD COLUMN due_at_ms BIGINT;
UPDATE messages SET due_at_ms = next_attempt_at_ms WHERE status = 'accepted';
DROP INDEX messages_due;
CREATE INDEX messages_due ON messages (due_at_ms) WHERE due_at_ms IS NOT NULL;
ALTER TABLE messages SET (fillfactor = 75);
-- A part's receipt changes its state only (not route or provider_id, which are indexed).
ALTER TABLE message_parts SET (fillfactor = 75);
