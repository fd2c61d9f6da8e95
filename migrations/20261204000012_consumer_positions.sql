-- Where the lifecycle consumer group stands in the events topic, kept with
-- the state it produced: each batch's transaction records, per partition,
-- the offset of the next record to read. On assignment the consumer seeks
-- here rather than to Kafka's committed offset (which stays, for lag
-- monitoring and tools). After a Postgres failover that lost the last
-- transactions (asynchronous replication), the positions are lost with
-- them, so the lost events are read and applied again: the history
-- deduplicates by event id, so nothing counts twice.
-- * keyed by group, topic and partition: two groups (a blue/green
--   deployment, a test) or a renamed topic never share a position.
-- * next_offset is what librdkafka would commit (last applied + 1).
-- * one row per partition, overwritten (not a log): a few rows per group.
CREATE TABLE consumer_positions (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
