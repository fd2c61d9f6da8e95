-- The access log (docs/operations.md, "The access log"): one row per /v1
-- request, written in batches off the request path. Never response data:
-- who (token), in which programs, what (method and route template, the
-- customer when the route names one), the status and how many items were
-- returned. Read by GET /v1/audit and `connectflow audit`; pruned after
-- CONNECTFLOW_AUDIT_RETENTION_DAYS by consume's periodic job.
CREATE TABLE api_access_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    token_id    text        NOT NULL,
    -- The programs in scope; NULL: every program.
    programs    text[],
    method      text        NOT NULL,
    route       text        NOT NULL,
    customer_id text,
    status      smallint    NOT NULL,
    items       integer
);

-- Keyset pages in time order, and pruning by age.
CREATE INDEX api_access_log_by_time ON api_access_log (at, id);
CREATE INDEX api_access_log_by_customer ON api_access_log (customer_id, at, id) WHERE customer_id IS NOT NULL;
CREATE INDEX api_access_log_by_token ON api_access_log (token_id, at, id);
