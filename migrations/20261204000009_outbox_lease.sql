-- The relay claims changes with a lease instead of holding a transaction
-- open while Kafka confirms them, backs off per customer, and parks a change
-- the changes topic refuses for good.
-- * leased_until / lease_token: set by a short claim transaction (all of a
--   customer's unparked rows at once); the relay publishes after its commit
--   and deletes only rows still carrying its token. A lease that expires (a
--   relay that died) frees the rows for another relay: they are published
--   again (subscribers de-duplicate by change_id), never out of order,
--   because a customer is claimed only when none of its rows is leased.
-- * attempts / not_before: a change Kafka did not confirm holds its customer
--   back until not_before (doubling per attempt, capped), not the relay.
-- * parked_at / park_reason: a change the topic refuses for good (too
--   large, invalid). It stays here (and in lifecycle_changes) for the
--   operator, is never claimed again and no longer counts as waiting; the
--   customer's later changes flow (each carries the whole `after`).
-- Nullable columns without defaults: adding them rewrites nothing.
ALTER TABLE lifecycle_outbox
    ADD COLUMN leased_until timestamptz,
    ADD COLUMN lease_token  uuid,
    ADD COLUMN attempts     integer NOT NULL DEFAULT 0,
    ADD COLUMN not_before   timestamptz,
    ADD COLUMN parked_at    timestamptz,
    ADD COLUMN park_reason  text;
