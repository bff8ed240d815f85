-- An event row stores its data alone: its envelope (id, type, timestamp, account) is the
-- row's other columns, and is built again when the event is read, the same bytes as before.
-- Rows written earlier hold the whole body and keep it (envelope = 1); new rows say 0.
ALTER TABLE webhook_events ADD COLUMN envelope BIGINT NOT NULL DEFAULT 1;
-- Nodes sharing the database must all run a version with this migration: an earlier node
-- would deliver a new row's data without its envelope.
