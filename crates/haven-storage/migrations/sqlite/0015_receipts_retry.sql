-- Receipts are applied as they arrive, in the transaction that records send outcomes; only a
-- receipt whose part is not recorded yet is stored here. A stored receipt is tried again when
-- it is due (next_try_ms), after a wait that doubles with each try (tries), instead of being
-- joined against the parts at every pass, and dropped after a day. Receipts stored by an
-- earlier version are due at once.
ALTER TABLE channel_receipts ADD COLUMN next_try_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE channel_receipts ADD COLUMN tries INTEGER NOT NULL DEFAULT 0;
CREATE INDEX channel_receipts_due ON channel_receipts (next_try_ms);
