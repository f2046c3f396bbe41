-- Campaigns: a template to an audience at a bounded rate, and each recipient's fate. The
-- runner finds due campaigns across tenants through the SECURITY DEFINER function below (as
-- the owner, whom `queue_owner` lets see them), then works on each in its tenant's
-- transaction with the campaign's row locked.

CREATE TABLE campaigns (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    name            text NOT NULL,
    template_id     uuid NOT NULL,
    audience        jsonb NOT NULL,            -- {contact_ids} or {tag, company_id, lifecycle_stage}
    schedule_time   timestamptz NOT NULL,
    rate_per_minute integer NOT NULL CHECK (rate_per_minute BETWEEN 1 AND 10000),
    state           text NOT NULL DEFAULT 'scheduled'
                    CHECK (state IN ('scheduled', 'running', 'paused', 'completed', 'cancelled')),
    audience_cursor text NOT NULL DEFAULT '',  -- ListContacts' next page while resolving
    audience_done   boolean NOT NULL DEFAULT false,
    next_batch_at   timestamptz,
    error           text NOT NULL DEFAULT '',
    version         bigint NOT NULL DEFAULT 1,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
-- The runner's look-up across tenants (see webhook_deliveries_due): campaigns not finished.
CREATE INDEX campaigns_active ON campaigns (schedule_time)
    WHERE state IN ('scheduled', 'running');

CREATE TABLE campaign_recipients (
    tenant_id   uuid NOT NULL,
    campaign_id uuid NOT NULL,
    contact_id  uuid NOT NULL,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'queued', 'skipped')),
    email_id    uuid,
    reason      text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, campaign_id, contact_id),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES campaigns (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX campaign_recipients_pending ON campaign_recipients (tenant_id, campaign_id, contact_id)
    WHERE status = 'pending';

ALTER TABLE campaigns ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaigns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON campaigns
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY queue_owner ON campaigns TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE campaign_recipients ENABLE ROW LEVEL SECURITY;
ALTER TABLE campaign_recipients FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON campaign_recipients
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

CREATE FUNCTION notify_due_campaigns(at timestamptz, batch integer)
RETURNS TABLE (tenant_id uuid, id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT c.tenant_id, c.id FROM campaigns c
    WHERE c.state IN ('scheduled', 'running') AND c.schedule_time <= at
      AND (c.next_batch_at IS NULL OR c.next_batch_at <= at)
    ORDER BY c.schedule_time
    LIMIT batch
$$;
