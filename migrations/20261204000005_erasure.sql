-- Erasure (docs/privacy.md): POST /v1/customers/{id}/erasures publishes a
-- `connectflow.customer.erased` event; the consumer deletes everything it
-- holds about the customer and keeps this tombstone instead.
-- * erased_customers: the compliance record and nothing else: who asked
--   (the token, never free text), when, and the consent dates of the
--   erased lifecycle. No account, institution or reason. Events for the
--   customer that occurred at or before erased_at are dropped before
--   storage; later ones start a fresh lifecycle whose change versions go
--   on from last_version. Purged CONNECTFLOW_ERASURE_RECORD_DAYS after
--   erased_at by `consume`.
CREATE TABLE erased_customers (
    customer_id            text        PRIMARY KEY,
    program_id             text        NOT NULL,
    erased_at              timestamptz NOT NULL,
    erasure_event_id       text        NOT NULL,
    token_id               text,
    token_name             text,
    consent_granted_at     timestamptz,
    consent_authorized_at  timestamptz,
    consent_revoked_at     timestamptz,
    -- The version of the erased change (the last one published for the
    -- erased lifecycle).
    last_version           bigint      NOT NULL,
    recorded_at            timestamptz NOT NULL
);
CREATE INDEX erased_customers_by_time ON erased_customers (erased_at);

-- The erased change is published, followed by a Kafka tombstone (null
-- value) for the customer's key; then its lifecycle_changes row goes too.
ALTER TABLE lifecycle_outbox ADD COLUMN erasure boolean NOT NULL DEFAULT false;

-- Idempotency keys of erasures share the revocations' table (one key names
-- one request in a program, whatever the route). An erasure's row holds no
-- customer id: its request digest covers the customer, and the row outlives
-- the customer.
ALTER TABLE consent_revocation_requests ALTER COLUMN customer_id DROP NOT NULL;
