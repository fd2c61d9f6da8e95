-- A customer's revocation requests, in the order the export lists them
-- (GET /v1/customers/{id}/export): the table is kept, so without this index
-- every export would read all of it.
CREATE INDEX consent_revocation_requests_by_customer
    ON consent_revocation_requests (customer_id, occurred_at, event_id);
