-- Institution health (issue 26), computed from connectflow's own traffic.
-- * institution_sessions: one row per Connect session that ended at an
--   institution (src/institution.rs, `session_outcome`), written by the
--   consumer in the transaction that records the ending event, so a
--   replayed event (a duplicate) never counts twice. No customer, no event
--   id, no program: only what the health needs, so an erasure has nothing
--   to find here. The health job deletes rows older than its window.
-- * institution_health: each institution's status as the latest evaluation
--   left it, with the window's counts (what `GET /v1/institutions` shows),
--   `improving` (evaluations in a row that allowed an improvement, for the
--   hysteresis) and `version` (its status changes so far).
-- * institution_health_runs: one row, the latest evaluation's time and
--   window: every institution's counts are as of then (a row is rewritten
--   only when its counts or status move), and an evaluator skips a beat
--   another process has just evaluated.
-- * institution_status_outbox: status changes not yet on
--   CONNECTFLOW_INSTITUTIONS_TOPIC (the record as published), written in the
--   evaluation's transaction and deleted once Kafka confirmed them.
CREATE TABLE institution_sessions (
    institution_id text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('success', 'institution_failure', 'customer_failure'))
);
-- The window's counts are an index-only scan of this index.
CREATE INDEX institution_sessions_by_time ON institution_sessions (occurred_at) INCLUDE (institution_id, outcome);

CREATE TABLE institution_health (
    institution_id       text        PRIMARY KEY,
    status               text        NOT NULL CHECK (status IN ('unknown', 'healthy', 'degraded', 'down')),
    since                timestamptz NOT NULL,
    improving            integer     NOT NULL DEFAULT 0,
    version              bigint      NOT NULL DEFAULT 0,
    successes            bigint      NOT NULL,
    institution_failures bigint      NOT NULL,
    customer_failures    bigint      NOT NULL
);
CREATE INDEX institution_health_by_status ON institution_health (status, institution_id);

CREATE TABLE institution_health_runs (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    evaluated_at   timestamptz NOT NULL,
    window_minutes integer     NOT NULL
);

CREATE TABLE institution_status_outbox (
    institution_id text        NOT NULL,
    version        bigint      NOT NULL,
    record         text        NOT NULL,
    recorded_at    timestamptz NOT NULL,
    PRIMARY KEY (institution_id, version)
);
