-- A smaller audit log. The leaf bytes are the canonical serialization of the row's columns, so
-- they are no longer stored beside them: they are recomputed on read, and the level-0 node in
-- audit_nodes (with every signed tree head above it) is what a row is checked against. This
-- roughly halves the bytes written per event. audit_nodes becomes a WITHOUT ROWID table keyed
-- by (level, idx): one b-tree per node instead of a table and its primary-key index.
ALTER TABLE audit_log DROP COLUMN leaf;

CREATE TABLE audit_nodes_compact (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
INSERT INTO audit_nodes_compact (level, idx, hash) SELECT level, idx, hash FROM audit_nodes;
DROP TABLE audit_nodes;
ALTER TABLE audit_nodes_compact RENAME TO audit_nodes;
