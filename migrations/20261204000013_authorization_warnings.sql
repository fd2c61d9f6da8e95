-- Warnings before an authorization lapses (issue 26): `consume` announces a
-- lifecycle change (`reason: "authorization_expiring"`) when a customer's
-- current authorization (consent_authorized_at) crosses a threshold of
-- CONNECTFLOW_AUTHORIZATION_WARN_DAYS, once per threshold per authorization.
-- * authorization_warned_for: the authorization the warnings below belong
--   to. A reauthorization (another consent_authorized_at) makes them
--   stale: the cycle starts again, and the API shows none until the next.
-- * authorization_warned_days: the nearest threshold warned about for it,
--   what the job compares with the threshold an authorization crossed.
-- * authorization_warnings: the warnings sent for it, as the lifecycle
--   document lists them (`[{"days", "days_left", "sent_at"}]`).
-- Erasure deletes the row, and with it the warnings.
ALTER TABLE customers
    ADD COLUMN authorization_warned_for timestamptz,
    ADD COLUMN authorization_warned_days integer,
    ADD COLUMN authorization_warnings jsonb NOT NULL DEFAULT '[]';

-- The job looks every beat for the authorizations within the farthest
-- threshold of their lapse (a range of consent_authorized_at: with a year's
-- period and 30 days, a twelfth of the customers) and skips those warned
-- about already. The index carries what that needs, so the scan reads no
-- table page for the customers it skips (an index-only scan; measured in
-- docs/operations.md, "Lapsed and lapsing authorizations"). It replaces
-- the plain index on consent_authorized_at, whose readers (the lapse
-- announcement, the listing's authorization_expires_before) use it as
-- before.
DROP INDEX customers_by_authorization;
CREATE INDEX customers_by_authorization ON customers (consent_authorized_at, customer_id)
    INCLUDE (program_id, authorization_warned_for, authorization_warned_days)
    WHERE consent_authorized_at IS NOT NULL;
