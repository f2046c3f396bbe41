-- Chassis tables every service has: the transactional outbox and the consumer inbox.

CREATE TABLE outbox (
    seq           bigserial PRIMARY KEY,          -- publish order
    id            uuid NOT NULL UNIQUE,           -- event id: ce-id and Nats-Msg-Id
    tenant_id     uuid NOT NULL,
    subject       text NOT NULL,                  -- NATS subject
    ce_type       text NOT NULL,
    ce_subject    text NOT NULL,                  -- the record's id
    data          bytea NOT NULL,                 -- the event's proto3 JSON
    trace_context jsonb NOT NULL DEFAULT '{}',    -- traceparent of the writing request
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wakes the relay at commit; polling covers a missed notification.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE inbox (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
