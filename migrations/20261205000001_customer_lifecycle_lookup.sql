-- The API's lookup of one customer's lifecycle (issue 28), as a function so
-- that its plan is cached. Every connection plans each statement for its
-- parameters (`plan_cache_mode = force_custom_plan`, see src/store/mod.rs),
-- which the listings' optional filters need; but this lookup reads one row by
-- primary key, whatever its parameters, and planning it against the nine
-- indexes of `customers` was a quarter of Postgres's CPU per lookup. The
-- function's own setting lets its query keep a generic plan for the
-- session; the statement that calls it still plans, but has no table to plan.
-- `visible`: the programs the reader may see, NULL for every program.
-- The lifecycle and the warnings come as text: the reader decodes them
-- straight into its types.
CREATE FUNCTION customer_lifecycle(lookup_customer_id text, visible text[])
    RETURNS TABLE (lifecycle text, version bigint, updated_at timestamptz, program_id text, expiry_warnings text)
    LANGUAGE plpgsql STABLE
    SET plan_cache_mode = auto
AS $$
BEGIN
    RETURN QUERY
    SELECT c.lifecycle::text, c.version, c.updated_at, c.program_id,
           CASE WHEN c.authorization_warned_for = c.consent_authorized_at
                THEN c.authorization_warnings::text ELSE '[]' END
    FROM customers c
    WHERE c.customer_id = lookup_customer_id AND (visible IS NULL OR c.program_id = ANY (visible));
END
$$;
