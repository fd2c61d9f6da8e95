-- History retention (CONNECTFLOW_HISTORY_RETENTION_DAYS; docs/lifecycle.md,
-- "History retention"; docs/operations.md, "History retention"). A job of
-- `consume` folds each customer's events older than the horizon into a
-- snapshot and deletes them from connect_events; the lifecycle is then the
-- fold of the snapshot and the events kept (`lifecycle::fold_from`).
-- * Every table here holds a customer id in a `customer_id` column, so an
--   erasure deletes a customer's rows by it.
-- * Nothing here is read on the consumer's path unless retention is on,
--   except one index probe per new event into history_folded_events (empty
--   while retention is off).

-- One row per customer whose events were ever folded.
CREATE TABLE customer_history_snapshots (
    customer_id        text        PRIMARY KEY,
    -- The persisted Lifecycle (as customers.lifecycle) of every folded event.
    lifecycle          jsonb       NOT NULL,
    -- The horizon of the latest fold: every folded event occurred before it
    -- (a later fold never moves it back). An event older than it that
    -- arrives later (late, or replayed from the dead letters) is recorded
    -- in connect_events, applied "at the horizon", and folded at the next run.
    history_starts_at  timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

-- The ids of the folded events, and nothing else of them: the dedup that
-- connect_events' primary key gave them before they were deleted (a retry
-- from Finicity, up to three days late, or a `dlq replay` must not count an
-- event twice). Checked by the consumer's insert, in the batch's
-- transaction. Kept as long as the snapshot.
CREATE TABLE history_folded_events (
    event_id     text PRIMARY KEY,
    customer_id  text NOT NULL
);
-- An erasure deletes by customer.
CREATE INDEX history_folded_events_by_customer ON history_folded_events (customer_id);

-- Pruning lifecycle changes older than the horizon (published ones only),
-- a batch at a time, without reading the whole table each round.
CREATE INDEX lifecycle_changes_by_time ON lifecycle_changes (recorded_at);
