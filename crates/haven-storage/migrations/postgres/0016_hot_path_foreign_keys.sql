-- The foreign keys of the rows every message writes go: messages -> accounts, message_parts ->
-- messages and usage_records -> accounts. On PostgreSQL each checked row is a query of its own
-- run by a trigger, and it locks the parent row (FOR KEY SHARE): every group commit of accepted
-- messages and every settle locks the same account row, which writes that row's page and the
-- WAL again and turns concurrent lockers into MultiXacts. The references still hold, by how
-- the rows are written:
-- * accounts are never deleted (they are suspended), and a message or usage record takes its
--   account from the credential that was just authenticated against that account;
-- * parts and usage records are written only in the settle's transaction, and only for the
--   messages its UPDATE returned: rows that exist and that the same transaction holds locked;
-- * messages are never deleted either (erasure destroys the patient's key).
-- SQLite keeps these keys: there a check is one probe of the parent's b-tree and takes no lock.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_account_id_fkey;
ALTER TABLE message_parts DROP CONSTRAINT IF EXISTS message_parts_message_id_fkey;
ALTER TABLE usage_records DROP CONSTRAINT IF EXISTS usage_records_account_id_fkey;
