-- connectflow's schema. Decisions:
-- * Identifiers from Finicity are digit strings on the wire (institutionLoginId
--   is even a number); all are stored as text so nothing is truncated or
--   reformatted.
-- * No column holds a full account number, a balance or a secret: the event
--   history stores the *normalised* record (src/event.rs), which never carries
--   them, and the projections below hold identifiers, last4 and names only.

-- The event history: one row per distinct event id. The primary key is the
-- deduplication: inserting an id again is a no-op (ON CONFLICT DO NOTHING) in
-- the same transaction as the state change it causes.
CREATE TABLE connect_events (
    event_id     text        PRIMARY KEY,
    customer_id  text        NOT NULL,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    -- The normalised record exactly as published on the events topic.
    record       jsonb       NOT NULL
);
-- A customer's history in fold order: recomputation and the events API.
CREATE INDEX connect_events_by_customer ON connect_events (customer_id, occurred_at, event_id);

-- One row per customer: the lifecycle as folded from their events.
CREATE TABLE customers (
    customer_id       text        PRIMARY KEY,
    consent_state     text        NOT NULL CHECK (consent_state IN ('none', 'granted', 'revoked')),
    consent_since     timestamptz,
    auth_state        text        NOT NULL CHECK (auth_state IN
                          ('not_started', 'in_progress', 'mfa_challenge', 'authenticated', 'failed', 'abandoned')),
    auth_since        timestamptz,
    auth_reason       text,
    auth_error_code   bigint,
    -- The latest event by (occurred_at, event_id): an event older than this
    -- one makes the consumer recompute the customer from all their events.
    last_event_id     text        NOT NULL,
    last_event_type   text        NOT NULL,
    last_occurred_at  timestamptz NOT NULL,
    event_count       bigint      NOT NULL,
    -- The complete folded state (src/lifecycle.rs), so the consumer can apply
    -- new events without re-reading the history and a look-up is one row.
    lifecycle         jsonb       NOT NULL,
    updated_at        timestamptz NOT NULL
);
-- Listing: ordered by (updated_at, customer_id), optionally filtered by state.
CREATE INDEX customers_by_update ON customers (updated_at, customer_id);
CREATE INDEX customers_by_consent ON customers (consent_state, updated_at, customer_id);
CREATE INDEX customers_by_auth ON customers (auth_state, updated_at, customer_id);

-- Institution logins and shared accounts: a relational projection of the
-- lifecycle, rewritten for a customer whenever their accounts change.
CREATE TABLE institution_logins (
    customer_id           text    NOT NULL REFERENCES customers (customer_id) ON DELETE CASCADE,
    -- NULL when the accounts arrived without a login id.
    institution_login_id  text,
    institution_id        text,
    oauth                 boolean,
    UNIQUE NULLS NOT DISTINCT (customer_id, institution_login_id)
);

CREATE TABLE accounts (
    customer_id           text        NOT NULL REFERENCES customers (customer_id) ON DELETE CASCADE,
    account_id            text        NOT NULL,
    institution_login_id  text,
    institution_id        text,
    account_type          text,
    status                text        NOT NULL CHECK (status IN ('active', 'deleted')),
    last4                 text        CHECK (char_length(last4) <= 4),
    name                  text,
    PRIMARY KEY (customer_id, account_id)
);
-- Which customers shared a given account.
CREATE INDEX accounts_by_account ON accounts (account_id);
