-- Rules: when an event arrives, send a template or call a webhook.

CREATE TABLE rules (
    tenant_id   uuid NOT NULL,
    id          uuid NOT NULL,
    name        text NOT NULL,
    event_type  text NOT NULL,                 -- a pattern, as webhooks' event types
    conditions  jsonb NOT NULL DEFAULT '[]',   -- [{field, operator, values}]
    action      jsonb NOT NULL,                -- {template_id, recipient, address, contact_field, webhook_id}
    disabled    boolean NOT NULL DEFAULT false,
    version     bigint NOT NULL DEFAULT 1,
    etag        text NOT NULL DEFAULT new_etag(),
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

ALTER TABLE rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE rules FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rules
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
