-- The console's link from an institution to its failing customers:
-- `/v1/customers?institution_id=X&authentication=failed` (with the window of
-- first events), ordered like every listing by (updated_at, customer_id).
-- Without it Postgres walks every failed customer in that order to find
-- the institution's: half a second with a million customers when the
-- institution has few. Partial, so only failed customers' rows are in it
-- and an update of any other customer never touches it.
CREATE INDEX customers_failed_by_institution ON customers (chosen_institution_id, updated_at, customer_id)
    WHERE auth_state = 'failed';
