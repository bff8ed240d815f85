-- Retention: events below this leaf index were pruned on purpose; their hashes stay in
-- audit_nodes, so every signed tree head still verifies.
ALTER TABLE audit_state ADD COLUMN pruned_below BIGINT NOT NULL DEFAULT 0;
