-- Revocations recorded by the issuer (issue 14).
-- * An account can now be `revoked` (distinct from Finicity's `deleted`).
-- * consent_revocation_requests remembers each Idempotency-Key of
--   POST /v1/customers/{id}/consent/revocations: the same key with the same
--   request gets the same event (id and time) again, another request with it
--   is refused (409). Rows are small and kept; prune old ones if needed
--   (a key older than your clients' retry window will not come back).
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_status_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_status_check CHECK (status IN ('active', 'deleted', 'revoked'));

CREATE TABLE consent_revocation_requests (
    idempotency_key  text        PRIMARY KEY,
    customer_id      text        NOT NULL,
    request_sha256   bytea       NOT NULL,
    event_id         text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Lapsed authorizations: `consume` publishes one lifecycle change when a
-- customer's current authorization (consent_authorized_at) lapses, and
-- records here which authorization that was, so each lapse is announced
-- once, whatever the number of consumers; a reauthorization (a new
-- consent_authorized_at) can lapse and be announced in its turn.
ALTER TABLE customers ADD COLUMN authorization_expiry_announced_for timestamptz;
