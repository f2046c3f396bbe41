-- Tickets with their status history, comments and SLA timers; SLA policies; knowledge-base
-- articles; the contact facts support keeps from contact events.
--
-- Every table carries tenant_id, every key and B-tree index leads with it, and row-level
-- security (enabled and forced) shows a transaction only the rows of the tenant in
-- app.tenant_id, as in the contacts service. The NULLIF matters: once a transaction that set
-- app.tenant_id ends, the setting reads '' rather than NULL, and ''::uuid would fail instead
-- of matching nothing. Times are written by the service from its clock, not by now(): the SLA
-- arithmetic and its tests depend on them.

CREATE FUNCTION new_etag() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT replace(gen_random_uuid()::text, '-', '')
$$;

CREATE TABLE sla_policies (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    name            text NOT NULL,
    position        integer NOT NULL DEFAULT 0 CHECK (position >= 0),
    conditions      jsonb NOT NULL DEFAULT '{}',
    targets         jsonb NOT NULL,                 -- {"first_response": seconds, ...}
    warning_percent integer NOT NULL CHECK (warning_percent BETWEEN 1 AND 99),
    business_hours  jsonb,                          -- NULL: around the clock
    version         bigint NOT NULL DEFAULT 1,
    etag            text NOT NULL DEFAULT new_etag(),
    create_time     timestamptz NOT NULL,
    update_time     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- Matching order; ids are UUIDv7, so equal positions match in creation order.
CREATE INDEX sla_policies_order ON sla_policies (tenant_id, position, id);

CREATE TABLE tickets (
    tenant_id            uuid NOT NULL,
    id                   uuid NOT NULL,             -- UUIDv7: id DESC is newest first
    subject              text NOT NULL,
    description          text NOT NULL DEFAULT '',
    contact_id           uuid NOT NULL,
    company_id           uuid,
    priority             text NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    status               text NOT NULL CHECK (status IN (
                             'new', 'open', 'pending', 'on_hold', 'solved', 'closed')),
    channel              text NOT NULL CHECK (channel IN ('email', 'web', 'phone', 'chat', 'api')),
    assignee_id          text NOT NULL DEFAULT '',
    team                 text NOT NULL DEFAULT '',
    tags                 text[] NOT NULL DEFAULT '{}',
    custom_fields        jsonb NOT NULL DEFAULT '{}',
    sla_policy           jsonb,                     -- the matched policy as it was; NULL: none
    first_response_at    timestamptz,
    solved_at            timestamptz,               -- the last solve, while solved or closed
    next_response_round  integer NOT NULL DEFAULT 0,
    next_response_start  timestamptz,
    next_response_done   timestamptz,
    csat_rating          smallint CHECK (csat_rating BETWEEN 1 AND 5),
    csat_comment         text,
    csat_time            timestamptz,
    version              bigint NOT NULL DEFAULT 1,
    etag                 text NOT NULL DEFAULT new_etag(),
    create_time          timestamptz NOT NULL,
    update_time          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX tickets_status ON tickets (tenant_id, status, id DESC);
CREATE INDEX tickets_assignee ON tickets (tenant_id, assignee_id, id DESC);
CREATE INDEX tickets_team ON tickets (tenant_id, team, id DESC);
CREATE INDEX tickets_contact ON tickets (tenant_id, contact_id, id DESC);
CREATE INDEX tickets_created ON tickets (tenant_id, create_time);
CREATE INDEX tickets_rated ON tickets (tenant_id, csat_time) WHERE csat_time IS NOT NULL;
-- GIN cannot lead with a uuid column without the btree_gin extension; the tag filter combines
-- this index with the primary key's tenant prefix.
CREATE INDEX tickets_tags ON tickets USING gin (tags);

-- Every status a ticket had and since when: what the SLA clocks and the backlog report read.
CREATE TABLE ticket_statuses (
    tenant_id uuid NOT NULL,
    ticket_id uuid NOT NULL,
    seq       integer NOT NULL,
    status    text NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, ticket_id, seq),
    FOREIGN KEY (tenant_id, ticket_id) REFERENCES tickets (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE comments (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    ticket_id   uuid NOT NULL,
    body        text NOT NULL,
    visibility  text NOT NULL CHECK (visibility IN ('public', 'internal')),
    author_type text NOT NULL CHECK (author_type IN ('agent', 'contact')),
    author_id   text NOT NULL,
    create_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, ticket_id) REFERENCES tickets (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX comments_ticket ON comments (tenant_id, ticket_id, id);

-- One row per ticket, target, round and kind (warning or breach): the key makes each fire at
-- most once, across restarts and replicas. due_at follows the ticket (NULL while its clock is
-- paused or the target is done); fired_at is set, once, in the transaction that writes the
-- event to the outbox.
CREATE TABLE sla_timers (
    tenant_id uuid NOT NULL,
    ticket_id uuid NOT NULL,
    target    text NOT NULL CHECK (target IN ('first_response', 'next_response', 'resolution')),
    cycle     integer NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('warning', 'breach')),
    due_at    timestamptz,
    fired_at  timestamptz,
    PRIMARY KEY (tenant_id, ticket_id, target, cycle, kind),
    FOREIGN KEY (tenant_id, ticket_id) REFERENCES tickets (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sla_timers_due ON sla_timers (tenant_id, due_at)
    WHERE fired_at IS NULL AND due_at IS NOT NULL;

-- What support knows of each contact, kept from the contacts service's events (and from the
-- contact a new ticket was checked against); version guards against late events.
CREATE TABLE contact_facts (
    tenant_id  uuid NOT NULL,
    contact_id uuid NOT NULL,
    name       text NOT NULL DEFAULT '',
    email      text NOT NULL DEFAULT '',
    company_id uuid,
    deleted    boolean NOT NULL DEFAULT false,
    version    bigint NOT NULL,
    PRIMARY KEY (tenant_id, contact_id)
);

CREATE TABLE kb_articles (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL,
    title         text NOT NULL,
    body          text NOT NULL DEFAULT '',
    status        text NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
    locale        text NOT NULL,
    search_config regconfig NOT NULL,              -- from the locale's language
    tags          text[] NOT NULL DEFAULT '{}',
    version       bigint NOT NULL DEFAULT 1,
    etag          text NOT NULL DEFAULT new_etag(),
    create_time   timestamptz NOT NULL,
    update_time   timestamptz NOT NULL,
    publish_time  timestamptz,
    -- The title weighs more than the body in ranking.
    search        tsvector GENERATED ALWAYS AS (
                      setweight(to_tsvector(search_config, title), 'A')
                      || setweight(to_tsvector(search_config, body), 'B')) STORED,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX kb_articles_status ON kb_articles (tenant_id, status, id DESC);
CREATE INDEX kb_articles_search ON kb_articles USING gin (search);
CREATE INDEX kb_articles_tags ON kb_articles USING gin (tags);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sla_policies', 'tickets', 'ticket_statuses', 'comments',
                             'sla_timers', 'contact_facts', 'kb_articles'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I'
            ' USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)'
            ' WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END $$;

-- The timer worker must find the tenants with timers due before it can work in one tenant's
-- transaction. The tables' owner may read sla_timers across tenants (a policy for it alone;
-- FORCE makes even the owner obey the others), and the app role reaches that view only
-- through this function, which returns tenant ids and nothing else. It skips from tenant to
-- tenant along sla_timers_due (one index probe each) instead of reading every pending timer.
DO $$
BEGIN
    EXECUTE format(
        'CREATE POLICY owner_scans_due_timers ON sla_timers FOR SELECT TO %I USING (true)',
        current_user);
END $$;

CREATE FUNCTION support_tenants_with_due_timers(due_by timestamptz, max_tenants integer)
RETURNS TABLE (tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH RECURSIVE tenants AS (
        (SELECT s.tenant_id FROM sla_timers s
          WHERE s.fired_at IS NULL AND s.due_at IS NOT NULL
          ORDER BY s.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT s.tenant_id FROM sla_timers s
                 WHERE s.fired_at IS NULL AND s.due_at IS NOT NULL AND s.tenant_id > t.tenant_id
                 ORDER BY s.tenant_id LIMIT 1)
          FROM tenants t WHERE t.tenant_id IS NOT NULL
    )
    SELECT t.tenant_id FROM tenants t
     WHERE t.tenant_id IS NOT NULL
       AND EXISTS (SELECT 1 FROM sla_timers s
                    WHERE s.tenant_id = t.tenant_id AND s.fired_at IS NULL
                      AND s.due_at IS NOT NULL AND s.due_at <= due_by)
     LIMIT max_tenants
$$;
