-- The customer listing (`store::read::customers`, `GET /v1/customers`): its
-- own file so that a test EXPLAINs exactly what the store runs.
SELECT customer_id, program_id, lifecycle, updated_at,
       CASE WHEN authorization_warned_for = consent_authorized_at THEN authorization_warnings ELSE '[]' END
           AS "expiry_warnings!"
FROM customers
WHERE ($1::text IS NULL OR consent_state = $1)
  AND ($2::text IS NULL OR auth_state = $2)
  AND ($3::timestamptz IS NULL OR updated_at >= $3)
  AND ($4::timestamptz IS NULL OR (updated_at, customer_id) > ($4, $5::text))
  AND ($7::timestamptz IS NULL OR consent_authorized_at < COALESCE(
        (SELECT p.cutoff FROM UNNEST($12::text[], $13::timestamptz[]) AS p(program_id, cutoff)
         WHERE p.program_id = customers.program_id), $7))
  AND ($8::text IS NULL OR chosen_institution_id = $8)
  AND ($9::timestamptz IS NULL OR first_event_at >= $9)
  AND ($10::timestamptz IS NULL OR first_event_at < $10)
  AND ($11::text[] IS NULL OR program_id = ANY($11))
ORDER BY updated_at, customer_id
LIMIT $6
