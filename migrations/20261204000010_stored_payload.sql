-- Rolling upgrades lose nothing (docs/operations.md, "Upgrades").

-- The event's record value exactly as it was published on the events topic
-- (UTF-8 JSON text), kept beside `record` (the consumer's own decoding,
-- which drops fields it does not know): a newer consumer that recomputes a
-- customer reads the fields an older consumer stored without knowing them.
-- Text, not jsonb, so it is byte for byte what was published. NULL for
-- events recorded before this column, by `apply_batch` callers that have no
-- record (tests, tools), and for a record of an older receiver whose free
-- text the consumer still had to minimise: the raw text is never kept then.
-- Deleted with its row (history folding, erasure).
ALTER TABLE connect_events ADD COLUMN published text;

-- The version of the stored lifecycle's format (store::apply::
-- STORED_LIFECYCLE_VERSION). A consumer that reads a higher one (written by
-- a newer release during a rolling upgrade or after a rollback) stalls
-- rather than recompute the customer with older rules. Every row stored so
-- far is version 1. A constant default: no table rewrite.
ALTER TABLE customers ADD COLUMN lifecycle_schema_version integer NOT NULL DEFAULT 1;
