-- Contacts, companies, the emails that must be unique per tenant, and custom field definitions.
--
-- Every table carries tenant_id, every key and index leads with it, and row-level security
-- (enabled and forced) shows a transaction only the rows of the tenant in app.tenant_id. The
-- NULLIF matters: once a transaction that set app.tenant_id ends, the setting reads '' rather
-- than NULL, and ''::uuid would fail instead of matching nothing.

-- A fresh etag per change: random, so it says nothing about the record, and made by this one
-- function, so bulk updates (a deleted company's contacts) make them as single-row writes do.
CREATE FUNCTION new_etag() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT replace(gen_random_uuid()::text, '-', '')
$$;

CREATE TABLE companies (
    tenant_id     uuid NOT NULL,
    id            uuid NOT NULL,             -- UUIDv7: time-ordered, so id DESC is newest first
    name          text NOT NULL,
    domain        text NOT NULL DEFAULT '',
    industry      text NOT NULL DEFAULT '',
    size          integer NOT NULL DEFAULT 0 CHECK (size >= 0),
    custom_fields jsonb NOT NULL DEFAULT '{}',
    version       bigint NOT NULL DEFAULT 1,
    etag          text NOT NULL DEFAULT new_etag(),
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    -- Also the keyset list index: a B-tree scanned backwards serves ORDER BY id DESC.
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX companies_updated ON companies (tenant_id, update_time);

CREATE TABLE contacts (
    tenant_id       uuid NOT NULL,
    id              uuid NOT NULL,
    first_name      text NOT NULL DEFAULT '',
    last_name       text NOT NULL DEFAULT '',
    emails          text[] NOT NULL DEFAULT '{}',  -- as given; uniqueness lives in contact_emails
    phones          text[] NOT NULL DEFAULT '{}',  -- E.164
    company_id      uuid,
    owner_id        text NOT NULL DEFAULT '',
    tags            text[] NOT NULL DEFAULT '{}',
    lifecycle_stage text,                           -- NULL: unspecified
    custom_fields   jsonb NOT NULL DEFAULT '{}',
    version         bigint NOT NULL DEFAULT 1,
    etag            text NOT NULL DEFAULT new_etag(),
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    -- Through tenant_id, so a contact can only ever point at a company of its own tenant.
    -- No ON DELETE action: deleting a company clears its contacts' company_id in the service,
    -- which bumps their versions and emits contact.updated; this key catches any path that
    -- would not.
    CONSTRAINT contacts_company_fk FOREIGN KEY (tenant_id, company_id)
        REFERENCES companies (tenant_id, id),
    CONSTRAINT contacts_lifecycle_stage CHECK (lifecycle_stage IN (
        'subscriber', 'lead', 'marketing_qualified_lead', 'sales_qualified_lead',
        'opportunity', 'customer', 'evangelist', 'other'))
);
CREATE INDEX contacts_company ON contacts (tenant_id, company_id, id DESC)
    WHERE company_id IS NOT NULL;
CREATE INDEX contacts_stage ON contacts (tenant_id, lifecycle_stage, id DESC);
CREATE INDEX contacts_updated ON contacts (tenant_id, update_time);
-- GIN cannot lead with a uuid column without the btree_gin extension; the tag filter combines
-- this index with the primary key's tenant prefix.
CREATE INDEX contacts_tags ON contacts USING gin (tags);

-- One row per address of a contact, keyed by its lower-cased form: the primary key makes an
-- address belong to at most one contact per tenant, case-insensitively, even under
-- concurrent writes (the loser's INSERT ... ON CONFLICT finds the winner's committed row).
CREATE TABLE contact_emails (
    tenant_id  uuid NOT NULL,
    email_key  text NOT NULL,
    contact_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, email_key),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX contact_emails_contact ON contact_emails (tenant_id, contact_id);

CREATE TABLE field_definitions (
    tenant_id   uuid NOT NULL,
    object_type text NOT NULL CHECK (object_type IN ('contact', 'company')),
    name        text NOT NULL,
    type        text NOT NULL CHECK (type IN ('string', 'number', 'bool', 'date', 'enum')),
    options     text[] NOT NULL DEFAULT '{}',
    label       text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object_type, name)
);

ALTER TABLE companies ENABLE ROW LEVEL SECURITY;
ALTER TABLE companies FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON companies
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

ALTER TABLE contacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE contacts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON contacts
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

ALTER TABLE contact_emails ENABLE ROW LEVEL SECURITY;
ALTER TABLE contact_emails FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON contact_emails
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

ALTER TABLE field_definitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE field_definitions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON field_definitions
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
