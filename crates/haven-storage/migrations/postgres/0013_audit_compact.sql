-- A smaller audit log. The leaf bytes are the canonical serialization of the row's columns, so
-- they are no longer stored beside them: they are recomputed on read, and the level-0 node in
-- audit_nodes (with every signed tree head above it) is what a row is checked against.
ALTER TABLE audit_log DROP COLUMN leaf;
