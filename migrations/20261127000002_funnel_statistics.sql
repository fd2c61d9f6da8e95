-- Planner statistics for the connect funnel's aggregates (src/store/stats.rs).
-- They group customers by the columns counted; the columns are strongly
-- correlated (a failed customer has a reason and no consent), so without
-- these the planner multiplies their distinct values, expects ~100,000
-- groups where there are a few dozen (a few per institution), and sorts a
-- million rows on disk instead of hashing them in memory: 0.55 s instead of
-- 0.19 s for the institutions of a million customers (docs/benchmarks.md).
CREATE STATISTICS customers_funnel_groups (ndistinct)
    ON funnel_steps, auth_state, auth_reason, consent_state FROM customers;
CREATE STATISTICS customers_funnel_institution_groups (ndistinct)
    ON chosen_institution_id, funnel_steps, auth_state, auth_reason, consent_state FROM customers;
