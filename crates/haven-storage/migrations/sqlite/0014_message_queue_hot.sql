-- The sending queue gets a column of its own (the PostgreSQL migration of the same number says
-- why: there, later status changes become heap-only updates). `due_at_ms` is the time a queued
-- (`accepted`) message is due and NULL for every other message; the partial index that finds
-- due messages is on it instead of on `status`. Both backends keep one schema.
ALTER TABLE messages ADD COLUMN due_at_ms INTEGER;
UPDATE messages SET due_at_ms = next_attempt_at_ms WHERE status = 'accepted';
DROP INDEX messages_due;
CREATE INDEX messages_due ON messages (due_at_ms) WHERE due_at_ms IS NOT NULL;
