-- Consent per contact and purpose: granted or withdrawn, with its legal basis, source and time.
-- One row per (contact, purpose), with an id of its own: the subject of its events, whose
-- version orders them. A contact's consents go with it.

CREATE TABLE consents (
    tenant_id    uuid NOT NULL,
    id           uuid NOT NULL,
    contact_id   uuid NOT NULL,
    purpose      text NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_]{0,63}$'),
    status       text NOT NULL CHECK (status IN ('granted', 'withdrawn')),
    legal_basis  text NOT NULL DEFAULT '',
    source       text NOT NULL DEFAULT '',
    consent_time timestamptz NOT NULL,           -- when the contact gave or withdrew it
    version      bigint NOT NULL DEFAULT 1,
    update_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, contact_id, purpose),
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id) ON DELETE CASCADE
);

ALTER TABLE consents ENABLE ROW LEVEL SECURITY;
ALTER TABLE consents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON consents
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
