-- Webhook endpoints, their deliveries (one per event and endpoint: the per-endpoint queues)
-- and the attempts of each delivery (the delivery log).
--
-- Every table carries tenant_id, keys lead with it, and row-level security (enabled and
-- forced) shows the service's role only the tenant in app.tenant_id, as in contacts. The
-- dispatcher's queue spans tenants by design, like the chassis's outbox: it claims due
-- deliveries through the SECURITY DEFINER function below, which runs as the owner (the
-- migration role, which the service never connects as); the `queue_owner` policies let that
-- role, and only it, see every tenant's endpoints and deliveries.

CREATE FUNCTION new_etag() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT replace(gen_random_uuid()::text, '-', '')
$$;

CREATE TABLE webhooks (
    tenant_id                  uuid NOT NULL,
    id                         uuid NOT NULL,
    url                        text NOT NULL,
    description                text NOT NULL DEFAULT '',
    event_types                text[] NOT NULL,
    disabled                   boolean NOT NULL DEFAULT false,
    disabled_reason            text NOT NULL DEFAULT '',
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    version                    bigint NOT NULL DEFAULT 1,
    etag                       text NOT NULL DEFAULT new_etag(),
    create_time                timestamptz NOT NULL DEFAULT now(),
    update_time                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE webhook_deliveries (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    webhook_id      uuid NOT NULL,
    seq             bigserial NOT NULL,          -- queue order among a record's equal versions
    event_id        text NOT NULL,               -- webhook-id: the CloudEvent's id
    event_type      text NOT NULL,
    record_id       text NOT NULL,               -- ce-subject: deliveries of one record go in order
    record_version  bigint NOT NULL DEFAULT 0,
    body            bytea NOT NULL,              -- the CloudEvent JSON, the same bytes every attempt
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'delivered', 'failed', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    schedule_start  integer NOT NULL DEFAULT 0,  -- attempts made before the schedule (re)started
    next_attempt_at timestamptz NOT NULL,
    claim           uuid,                        -- the dispatcher's claim while sending
    lease_until     timestamptz,                 -- ... and until when it holds it
    replay          boolean NOT NULL DEFAULT false,
    create_time     timestamptz NOT NULL,
    deliver_time    timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks (tenant_id, id) ON DELETE CASCADE
);
-- The delivery log, newest first (ids are UUIDv7).
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (tenant_id, webhook_id, id DESC);
-- Whether an earlier delivery of the same record is still unfinished (order per record).
CREATE INDEX webhook_deliveries_record ON webhook_deliveries
    (tenant_id, webhook_id, record_id, record_version, seq)
    WHERE status IN ('pending', 'sending');
-- The dispatcher's queue across tenants: what is due first. Like the outbox's queue index it
-- is ordered by time, not tenant, because the claim spans tenants; it holds only unfinished
-- deliveries.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'sending');

CREATE TABLE webhook_attempts (
    tenant_id        uuid NOT NULL,
    delivery_id      uuid NOT NULL,
    number           integer NOT NULL,
    time             timestamptz NOT NULL,
    status_code      integer NOT NULL DEFAULT 0,
    error            text NOT NULL DEFAULT '',
    latency_ms       bigint NOT NULL DEFAULT 0,
    response_snippet text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, delivery_id, number),
    FOREIGN KEY (tenant_id, delivery_id) REFERENCES webhook_deliveries (tenant_id, id)
        ON DELETE CASCADE
);

-- Wakes the dispatchers at commit; polling covers a missed notification.
CREATE FUNCTION webhook_deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('webhook_deliveries', '');
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_deliveries_notify AFTER INSERT ON webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_notify();

ALTER TABLE webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhooks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhooks
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY queue_owner ON webhooks TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_deliveries
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY queue_owner ON webhook_deliveries TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON webhook_attempts
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

-- Claims up to `batch` due deliveries for one dispatcher: the first unfinished delivery of
-- each record only (a record's later event waits for its earlier one at that endpoint), at
-- most `per_webhook` per endpoint and none for the endpoints in `busy` (those this dispatcher
-- already sends `per_webhook` to), so a slow endpoint cannot take every slot. A delivery whose
-- sender died is claimed again once its lease has passed. SKIP LOCKED lets replicas claim
-- side by side; the status is checked again on the locked row, so no delivery is claimed twice.
CREATE FUNCTION notify_claim_deliveries(
    at timestamptz, lease interval, batch integer, per_webhook integer, busy uuid[]
) RETURNS TABLE (tenant_id uuid, id uuid, webhook_id uuid, claim uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH heads AS (
        SELECT d.tenant_id, d.id, d.next_attempt_at,
               row_number() OVER (PARTITION BY d.tenant_id, d.webhook_id
                                  ORDER BY d.next_attempt_at, d.seq) AS n
        FROM webhook_deliveries d
        JOIN webhooks w ON w.tenant_id = d.tenant_id AND w.id = d.webhook_id
        WHERE ((d.status = 'pending' AND d.next_attempt_at <= at)
               OR (d.status = 'sending' AND d.lease_until <= at))
          AND NOT w.disabled
          AND d.webhook_id <> ALL (busy)
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries e
              WHERE e.tenant_id = d.tenant_id AND e.webhook_id = d.webhook_id
                AND e.record_id = d.record_id AND e.status IN ('pending', 'sending')
                AND (e.record_version, e.seq) < (d.record_version, d.seq))
    ), picked AS (
        SELECT d.tenant_id, d.id
        FROM webhook_deliveries d JOIN heads h ON h.tenant_id = d.tenant_id AND h.id = d.id
        WHERE h.n <= per_webhook
          AND ((d.status = 'pending' AND d.next_attempt_at <= at)
               OR (d.status = 'sending' AND d.lease_until <= at))
        ORDER BY h.next_attempt_at
        LIMIT batch
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE webhook_deliveries d
    SET status = 'sending', claim = gen_random_uuid(), lease_until = at + lease
    FROM picked p
    WHERE d.tenant_id = p.tenant_id AND d.id = p.id
    RETURNING d.tenant_id, d.id, d.webhook_id, d.claim
$$;
