-- The audit tree keeps its leaf hashes (level 0) and its nodes of level 6 and above; a node in
-- between covers at most 64 leaves and is computed from their hashes when a proof or an append
-- needs it (haven_audit::merkle::STORED_FROM). The nodes of levels 1 to 5 are no longer read.
-- Every node that writes to this database must run a version with this migration.
DELETE FROM audit_nodes WHERE level BETWEEN 1 AND 5;
