-- The accounts projection (institution_logins, accounts) is written only by
-- the consumer and `reproject`, in the same transaction as the customer row
-- it derives from, and customers are never deleted. The foreign keys to
-- customers checked that on every inserted row with a query of its own (a
-- trigger, re-planned per row): measured at about 7% of the database's CPU
-- per applied event under the consumer benchmark (docs/benchmarks.md). The
-- projection's agreement with the lifecycle is tested instead
-- (tests/integration/lifecycle.rs, the_accounts_projection_follows_...).
ALTER TABLE institution_logins DROP CONSTRAINT IF EXISTS institution_logins_customer_id_fkey;
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_customer_id_fkey;
