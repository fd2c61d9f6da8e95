-- The connect funnel (issue 15): each customer's progress through Connect,
-- from the stored lifecycle's `funnel` (src/lifecycle/funnel.rs), written in
-- the consumer's transaction with the rest of the customer's row.
-- * first_event_at: occurred_at of the customer's first event; the funnel
--   statistics count a customer in the window holding it.
-- * funnel_steps: the steps reached, a bit each (1 started, 2 institution
--   chosen, 4 MFA challenged, 8 authenticated, 16 consent granted).
-- * chosen_institution_id: the institution chosen last, which
--   `/v1/stats/institutions` and `/v1/customers?institution_id=` go by.
-- Rows written before this version have NULL / 0 until the consumer
-- recomputes the customer at their next event or `connectflow reproject`
-- recomputes everyone (docs/operations.md).
ALTER TABLE customers
    ADD COLUMN first_event_at timestamptz,
    ADD COLUMN funnel_steps smallint NOT NULL DEFAULT 0,
    ADD COLUMN chosen_institution_id text;

-- The statistics read a window of first events and count by these columns:
-- an index-only scan of this index answers them without touching the wide
-- rows (the lifecycle document), so a million customers take a fraction of
-- a second (docs/benchmarks.md).
CREATE INDEX customers_by_first_event ON customers (first_event_at)
    INCLUDE (funnel_steps, chosen_institution_id, auth_state, auth_reason, consent_state);
