-- Email: templates, and the emails queued from them (one row per recipient: its status). The
-- mailer's queue spans tenants like the webhook dispatcher's (0001): it claims due emails
-- through the SECURITY DEFINER function below, as the owner, whom `queue_owner` lets see them.

CREATE TABLE templates (
    tenant_id      uuid NOT NULL,
    id             uuid NOT NULL,
    name           text NOT NULL,
    purpose        text NOT NULL,
    default_locale text NOT NULL,
    contents       jsonb NOT NULL,             -- [{locale, subject, text, html}]
    version        bigint NOT NULL DEFAULT 1,
    etag           text NOT NULL DEFAULT new_etag(),
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE emails (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    template_id     uuid NOT NULL,             -- no foreign key: a queued email outlives its template
    to_address      text NOT NULL,
    contact_id      uuid,
    purpose         text NOT NULL,
    locale          text NOT NULL,
    subject         text NOT NULL,
    text_body       text NOT NULL,
    html_body       text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sending', 'sent', 'suppressed', 'bounced', 'failed')),
    error           text NOT NULL DEFAULT '',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    claim           uuid,
    lease_until     timestamptz,
    origin          text NOT NULL,             -- api, rule:<id>, campaign:<id>
    -- What the email is the effect of (a rule and an event, a campaign and a contact): at most
    -- one email each, so a redelivered event or a resumed campaign sends nobody a second one.
    origin_key      text,
    create_time     timestamptz NOT NULL,
    send_time       timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, origin_key)
);
CREATE INDEX emails_origin ON emails (tenant_id, origin, id DESC);
-- The mailer's queue across tenants (see webhook_deliveries_due).
CREATE INDEX emails_due ON emails (next_attempt_at) WHERE status IN ('queued', 'sending');

CREATE FUNCTION emails_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('emails', '');
    RETURN NULL;
END $$;
CREATE TRIGGER emails_notify AFTER INSERT ON emails
    FOR EACH STATEMENT EXECUTE FUNCTION emails_notify();

ALTER TABLE templates ENABLE ROW LEVEL SECURITY;
ALTER TABLE templates FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON templates
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

ALTER TABLE emails ENABLE ROW LEVEL SECURITY;
ALTER TABLE emails FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON emails
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY queue_owner ON emails TO CURRENT_USER USING (true) WITH CHECK (true);

-- Claims up to `batch` due emails; one whose sender died is claimed again after its lease.
CREATE FUNCTION notify_claim_emails(at timestamptz, lease interval, batch integer)
RETURNS TABLE (tenant_id uuid, id uuid, claim uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH picked AS (
        SELECT e.tenant_id, e.id FROM emails e
        WHERE (e.status = 'queued' AND e.next_attempt_at <= at)
           OR (e.status = 'sending' AND e.lease_until <= at)
        ORDER BY e.next_attempt_at
        LIMIT batch
        FOR UPDATE SKIP LOCKED
    )
    UPDATE emails e SET status = 'sending', claim = gen_random_uuid(), lease_until = at + lease
    FROM picked p
    WHERE e.tenant_id = p.tenant_id AND e.id = p.id
    RETURNING e.tenant_id, e.id, e.claim
$$;
