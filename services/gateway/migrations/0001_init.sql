-- The gateway's own data: tenants, API keys and the idempotency store.
-- No row-level security here: the gateway is the authority that resolves the tenant (an API
-- key lookup comes before any tenant is known), and every query names the tenant explicitly.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,                 -- the recognisable part of the secret
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    scopes      text[] NOT NULL,
    secret_hash bytea NOT NULL,                   -- SHA-256 of the random secret part
    create_time timestamptz NOT NULL DEFAULT now(),
    revoke_time timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

CREATE TABLE idempotency_keys (
    tenant_id        uuid NOT NULL,
    key              text NOT NULL,
    request_hash     bytea NOT NULL,
    status_code      integer,                     -- NULL while the first request is running
    response_body    bytea,
    response_headers jsonb,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
