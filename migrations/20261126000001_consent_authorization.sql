-- Dated authorizations (issue 14): the latest authorization among a
-- customer's active logins (`consent.authorized_at` of the stored lifecycle),
-- kept as a column so `/v1/customers?authorization_expires_before=` can find
-- whom to ask to reauthorize. NULL when nothing is authorized now, and for
-- rows written before this version until `connectflow reproject` recomputes
-- them (docs/operations.md).
ALTER TABLE customers ADD COLUMN consent_authorized_at timestamptz;
CREATE INDEX customers_by_authorization ON customers (consent_authorized_at) WHERE consent_authorized_at IS NOT NULL;
