-- Who may be written to: notify's copy of the contacts and their consents (kept from contacts'
-- events) and its own suppression list (unsubscribes, hard bounces, addresses added by hand).

CREATE TABLE contacts (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    email      text NOT NULL DEFAULT '',  -- the first (primary) address; '' when none
    first_name text NOT NULL DEFAULT '',
    last_name  text NOT NULL DEFAULT '',
    owner_id   text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE consents (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,                 -- the consent's id in contacts
    contact_id uuid NOT NULL,
    purpose    text NOT NULL,
    status     text NOT NULL CHECK (status IN ('granted', 'withdrawn')),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX consents_contact ON consents (tenant_id, contact_id, purpose);

-- purpose '' suppresses every purpose (hard bounces, additions by hand); an unsubscribe
-- suppresses the purpose of the mail it came from.
CREATE TABLE suppressions (
    tenant_id   uuid NOT NULL,
    email_key   text NOT NULL,                -- the address, lower-cased
    purpose     text NOT NULL DEFAULT '',
    reason      text NOT NULL CHECK (reason IN ('unsubscribed', 'bounced', 'manual')),
    detail      text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, email_key, purpose)
);

ALTER TABLE contacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE contacts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON contacts
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

ALTER TABLE consents ENABLE ROW LEVEL SECURITY;
ALTER TABLE consents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON consents
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

ALTER TABLE suppressions ENABLE ROW LEVEL SECURITY;
ALTER TABLE suppressions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON suppressions
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
