-- Idempotency keys of revocations are per program and have an end
-- (CONNECTFLOW_IDEMPOTENCY_KEY_HOURS): the same key in another program is
-- another request, and the same key after its end is a new request. Each
-- row records the principal (token id and name) that asked, beside the
-- caller's revoked_by claim carried by the event. Rows recorded before
-- programs existed belong to `default`.
ALTER TABLE consent_revocation_requests ADD COLUMN program_id text NOT NULL DEFAULT 'default';
ALTER TABLE consent_revocation_requests ADD COLUMN token_id text;
ALTER TABLE consent_revocation_requests ADD COLUMN token_name text;
ALTER TABLE consent_revocation_requests DROP CONSTRAINT consent_revocation_requests_pkey;
ALTER TABLE consent_revocation_requests ADD PRIMARY KEY (program_id, idempotency_key);
