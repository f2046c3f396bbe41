-- Chassis tables, second step: every table a tenant's data passes through is sealed by
-- row-level security; events name their schema and their record's version; calls record
-- their idempotency keys with their effects; projections remember the versions they hold.
--
-- The chassis tables ENABLE row-level security but do not FORCE it: the app role (the
-- service) sees one tenant at a time, while work that spans tenants by design (the relay,
-- retention clean-ups) goes through the SECURITY DEFINER functions below, which run as the
-- owner and do only that one thing.

ALTER TABLE outbox ADD COLUMN record_version bigint NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN data_schema text NOT NULL DEFAULT '';
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbox
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

-- The relay's batch in publish order, locked until its transaction ends. FOR UPDATE without
-- SKIP LOCKED: a second relay (another replica) waits for the first one's batch instead of
-- publishing the rows after it, so one record's events reach the stream in order.
CREATE FUNCTION crm_outbox_claim(batch integer) RETURNS SETOF outbox
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT * FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT batch FOR UPDATE
$$;

-- clock_timestamp(), not now(): now() is the start of this transaction, before the PubAcks.
CREATE FUNCTION crm_outbox_mark(seqs bigint[]) RETURNS TABLE (latency float8)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE outbox SET published_at = clock_timestamp() WHERE seq = ANY(seqs)
    RETURNING extract(epoch FROM clock_timestamp() - created_at)::float8
$$;

CREATE FUNCTION crm_outbox_backlog(cap integer) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT cap) b
$$;

-- Bounded per run so one clean-up never holds locks on a huge table for long.
CREATE FUNCTION crm_outbox_cleanup(older_than interval) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH gone AS (
        DELETE FROM outbox WHERE seq IN (
            SELECT seq FROM outbox WHERE published_at < now() - older_than LIMIT 10000
        ) RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

ALTER TABLE inbox ADD COLUMN tenant_id uuid;
ALTER TABLE inbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inbox
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

CREATE FUNCTION crm_inbox_purge(older_than interval) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH gone AS (
        DELETE FROM inbox WHERE ctid IN (
            SELECT ctid FROM inbox WHERE processed_at < now() - older_than LIMIT 10000
        ) RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

CREATE TABLE idempotency_records (
    tenant_id    uuid NOT NULL,
    principal    text NOT NULL,                   -- the calling key or service: keys are theirs
    key          text NOT NULL,
    method       text NOT NULL,                   -- the gRPC path the key was used with
    request_hash bytea NOT NULL,
    response     bytea,                           -- the serialised response, set at commit
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, principal, key)
);
CREATE INDEX idempotency_records_created ON idempotency_records (created_at);
ALTER TABLE idempotency_records ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON idempotency_records
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

CREATE FUNCTION crm_idempotency_purge(older_than interval) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH gone AS (
        DELETE FROM idempotency_records WHERE ctid IN (
            SELECT ctid FROM idempotency_records WHERE created_at < now() - older_than LIMIT 10000
        ) RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

-- The newest version of each record a projection has applied (deletions included), so an
-- event that arrives twice or after a newer one changes nothing.
CREATE TABLE projection_versions (
    tenant_id  uuid NOT NULL,
    projection text NOT NULL,
    record_id  text NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (tenant_id, projection, record_id)
);
ALTER TABLE projection_versions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON projection_versions
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
