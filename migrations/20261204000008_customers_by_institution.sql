-- `/v1/customers?institution_id=X` (the customers who chose institution X
-- last, whatever their state), ordered like every listing by
-- (updated_at, customer_id), so a page is read straight off this index:
-- without it Postgres walks `customers_by_update` and filters every
-- customer until a page of X's is found, which for a rare institution is
-- the whole table. Partial: customers who chose no institution yet are not
-- in it. `customers_failed_by_institution` stays for the console's link to
-- an institution's failing customers, a few among many.
CREATE INDEX customers_by_institution ON customers (chosen_institution_id, updated_at, customer_id)
    WHERE chosen_institution_id IS NOT NULL;
