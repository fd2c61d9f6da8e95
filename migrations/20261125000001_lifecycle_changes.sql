-- Lifecycle changes for topic subscribers (transactional outbox).
-- * customers.version counts a customer's visible changes: 0 before the
--   first, +1 per change, never reused or skipped.
-- * lifecycle_changes keeps every change record exactly as published on
--   CONNECTFLOW_CHANGES_TOPIC (JSON text: it is only ever passed through, so
--   Postgres does not parse it into jsonb), written in the same transaction
--   as the lifecycle it describes, never updated.
-- * lifecycle_outbox holds the (customer, version) of the changes not yet
--   published; the relay deletes a row once Kafka confirmed the change. A
--   narrow table of its own, so marking a change published is the delete of
--   a small row rather than a rewrite of the record.

ALTER TABLE customers ADD COLUMN version bigint NOT NULL DEFAULT 0;

CREATE TABLE lifecycle_changes (
    customer_id   text        NOT NULL,
    version       bigint      NOT NULL,
    change        text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (customer_id, version)
);

CREATE TABLE lifecycle_outbox (
    customer_id   text        NOT NULL,
    version       bigint      NOT NULL,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (customer_id, version)
);
