-- Leads and their scoring, pipelines and stages, deals and their stage history, activities,
-- and the projections of the contacts and companies of the contacts service.
--
-- Every table carries tenant_id, every key and index leads with it, and row-level security
-- (enabled and forced) shows a transaction only the rows of the tenant in app.tenant_id (see
-- the contacts migration for why NULLIF).

CREATE FUNCTION new_etag() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT replace(gen_random_uuid()::text, '-', '')
$$;

-- One row per tenant sales has seen: its creation makes the tenant's default pipeline, once
-- (there is no tenant-created event; the first use of a tenant inserts it).
CREATE TABLE sales_tenants (
    tenant_id   uuid NOT NULL PRIMARY KEY,
    create_time timestamptz NOT NULL DEFAULT now()
);

-- What sales knows of the contacts service's records, from their events. A row may exist
-- before its first event (known = false): a lead or deal linking the id creates it, so that
-- the link and a concurrent contact.deleted serialise on the row lock. Deleted records stay as
-- tombstones (deleted = true) so a late link to them is refused.
CREATE TABLE contact_summaries (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    emails          text[] NOT NULL DEFAULT '{}',   -- as given, the first primary
    email_keys      text[] NOT NULL DEFAULT '{}',   -- lower-cased, for matching leads
    company_id      uuid,
    lifecycle_stage text NOT NULL DEFAULT '',
    tags            text[] NOT NULL DEFAULT '{}',
    known           boolean NOT NULL DEFAULT false,
    deleted         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX contact_summaries_company ON contact_summaries (tenant_id, company_id)
    WHERE company_id IS NOT NULL;

CREATE TABLE company_summaries (
    tenant_id uuid NOT NULL,
    id        uuid NOT NULL,
    name      text NOT NULL DEFAULT '',
    known     boolean NOT NULL DEFAULT false,
    deleted   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE pipelines (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    name        text NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    version     bigint NOT NULL DEFAULT 1,
    etag        text NOT NULL DEFAULT new_etag(),
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX pipelines_name ON pipelines (tenant_id, lower(name));
CREATE UNIQUE INDEX pipelines_default ON pipelines (tenant_id) WHERE is_default;

CREATE TABLE stages (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    pipeline_id uuid NOT NULL,
    position    integer NOT NULL,
    name        text NOT NULL,
    probability integer NOT NULL CHECK (probability BETWEEN 0 AND 100),
    kind        text NOT NULL CHECK (kind IN ('open', 'closed_won', 'closed_lost')),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, pipeline_id, id),
    -- Deferred: reordering stages swaps positions within one statement sequence.
    CONSTRAINT stages_position UNIQUE (tenant_id, pipeline_id, position) DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY (tenant_id, pipeline_id) REFERENCES pipelines (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE leads (
    tenant_id         uuid NOT NULL,
    id                uuid NOT NULL,
    first_name        text NOT NULL DEFAULT '',
    last_name         text NOT NULL DEFAULT '',
    email             text NOT NULL DEFAULT '',
    phone             text NOT NULL DEFAULT '',
    company_name      text NOT NULL DEFAULT '',
    company_size      integer NOT NULL DEFAULT 0 CHECK (company_size >= 0),
    title             text NOT NULL DEFAULT '',
    source            text NOT NULL DEFAULT '',
    contact_id        uuid,
    owner_id          text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN
                          ('new', 'working', 'qualified', 'disqualified', 'converted')),
    tags              text[] NOT NULL DEFAULT '{}',
    custom_fields     jsonb NOT NULL DEFAULT '{}',
    score             integer NOT NULL DEFAULT 0,
    score_factors     jsonb NOT NULL DEFAULT '[]',
    score_time        timestamptz NOT NULL,
    converted_deal_id uuid,
    convert_time      timestamptz,
    version           bigint NOT NULL DEFAULT 1,
    etag              text NOT NULL DEFAULT new_etag(),
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contact_summaries (tenant_id, id)
);
-- The list order: highest score first, newest first among equals (keyset on both).
CREATE INDEX leads_by_score ON leads (tenant_id, score DESC, id DESC);
CREATE INDEX leads_contact ON leads (tenant_id, contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX leads_email ON leads (tenant_id, lower(email)) WHERE email <> '';

CREATE TABLE scoring_rules (
    tenant_id      uuid NOT NULL,
    id             uuid NOT NULL,
    label          text NOT NULL DEFAULT '',
    kind           text NOT NULL CHECK (kind IN ('fit', 'engagement')),
    points         integer NOT NULL CHECK (points BETWEEN -1000 AND 1000 AND points <> 0),
    conditions     jsonb NOT NULL DEFAULT '[]',
    event_type     text NOT NULL DEFAULT '',
    contact_field  text NOT NULL DEFAULT '',
    half_life_days integer NOT NULL DEFAULT 0 CHECK (half_life_days >= 0),
    version        bigint NOT NULL DEFAULT 1,
    etag           text NOT NULL DEFAULT new_etag(),
    create_time    timestamptz NOT NULL,
    update_time    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX scoring_rules_event_type ON scoring_rules (tenant_id, event_type)
    WHERE kind = 'engagement';

-- One row per event an engagement rule counted for a lead: the key makes an event count
-- once per lead and rule however often it is delivered.
CREATE TABLE engagement_hits (
    tenant_id   uuid NOT NULL,
    lead_id     uuid NOT NULL,
    rule_id     uuid NOT NULL,
    event_id    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, lead_id, rule_id, event_id),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES leads (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, rule_id) REFERENCES scoring_rules (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX engagement_hits_rule ON engagement_hits (tenant_id, rule_id);

CREATE TABLE deals (
    tenant_id         uuid NOT NULL,
    id                uuid NOT NULL,
    name              text NOT NULL,
    amount            bigint NOT NULL DEFAULT 0 CHECK (amount >= 0),
    currency          text NOT NULL,
    pipeline_id       uuid NOT NULL,
    stage_id          uuid NOT NULL,
    close_date        date,
    owner_id          text NOT NULL DEFAULT '',
    contact_id        uuid,
    company_id        uuid,
    lead_id           uuid,
    forecast_category text NOT NULL CHECK (forecast_category IN
                          ('pipeline', 'best_case', 'commit', 'closed', 'omitted')),
    custom_fields     jsonb NOT NULL DEFAULT '{}',
    close_time        timestamptz,
    version           bigint NOT NULL DEFAULT 1,
    etag              text NOT NULL DEFAULT new_etag(),
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    -- The stage belongs to the deal's pipeline, of the same tenant.
    FOREIGN KEY (tenant_id, pipeline_id, stage_id) REFERENCES stages (tenant_id, pipeline_id, id),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contact_summaries (tenant_id, id),
    FOREIGN KEY (tenant_id, company_id) REFERENCES company_summaries (tenant_id, id)
);
CREATE INDEX deals_stage ON deals (tenant_id, stage_id, id DESC);
CREATE INDEX deals_pipeline ON deals (tenant_id, pipeline_id, id DESC);
CREATE INDEX deals_contact ON deals (tenant_id, contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX deals_company ON deals (tenant_id, company_id) WHERE company_id IS NOT NULL;
CREATE INDEX deals_close_date ON deals (tenant_id, close_date) WHERE close_date IS NOT NULL;
CREATE INDEX deals_close_time ON deals (tenant_id, close_time) WHERE close_time IS NOT NULL;
CREATE INDEX deals_created ON deals (tenant_id, create_time);

-- A deal's moves, keyed by the version each gave it; its creation is the first.
CREATE TABLE stage_changes (
    tenant_id        uuid NOT NULL,
    deal_id          uuid NOT NULL,
    deal_version     bigint NOT NULL,
    from_stage_id    uuid,
    to_stage_id      uuid NOT NULL,
    from_pipeline_id uuid,
    to_pipeline_id   uuid NOT NULL,
    actor            text NOT NULL,
    change_time      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, deal_id, deal_version),
    FOREIGN KEY (tenant_id, deal_id) REFERENCES deals (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE activities (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('call', 'meeting', 'email', 'note', 'task')),
    subject     text NOT NULL,
    body        text NOT NULL DEFAULT '',
    lead_id     uuid,
    deal_id     uuid,
    due_time    timestamptz,
    done        boolean NOT NULL DEFAULT false,
    done_time   timestamptz,
    owner_id    text NOT NULL DEFAULT '',
    version     bigint NOT NULL DEFAULT 1,
    etag        text NOT NULL DEFAULT new_etag(),
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CHECK ((lead_id IS NULL) <> (deal_id IS NULL)),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES leads (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, deal_id) REFERENCES deals (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX activities_lead ON activities (tenant_id, lead_id, id DESC) WHERE lead_id IS NOT NULL;
CREATE INDEX activities_deal ON activities (tenant_id, deal_id, id DESC) WHERE deal_id IS NOT NULL;

-- When decay will have changed a lead's score: the re-scoring worker's queue, one row per
-- lead with decaying points. Its RLS is enabled but not forced, like the chassis's outbox: the
-- service sees one tenant's rows, while the worker finds the due ones of every tenant through
-- the SECURITY DEFINER function below (run as the owner), then re-scores each tenant's leads
-- in a tenant transaction of its own.
CREATE TABLE rescore_due (
    tenant_id uuid NOT NULL,
    lead_id   uuid NOT NULL,
    due_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, lead_id),
    FOREIGN KEY (tenant_id, lead_id) REFERENCES leads (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX rescore_due_at ON rescore_due (tenant_id, due_at);
ALTER TABLE rescore_due ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rescore_due
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

CREATE FUNCTION sales_leads_due(due_by timestamptz, cap integer)
RETURNS TABLE (tenant_id uuid, lead_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id, lead_id FROM rescore_due WHERE due_at <= due_by ORDER BY due_at LIMIT cap
$$;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sales_tenants', 'contact_summaries', 'company_summaries',
                             'pipelines', 'stages', 'leads', 'scoring_rules', 'engagement_hits',
                             'deals', 'stage_changes', 'activities']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I'
            ' USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)'
            ' WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)', t);
    END LOOP;
END $$;
