-- Idempotency keys belong to the calling API key, not only to its tenant: another key of the
-- same tenant sending the same Idempotency-Key makes its own request and never receives the
-- first one's response. A running request holds its key for a lease, so a gateway that dies
-- mid-request leaves nothing stuck: once the lease lapses a retry takes the key over (safe,
-- because the owning service recorded the key with its write and answers the retry from it).
-- A response that carried a secret (a new API key) is never stored: the row says so instead.
--
-- Rows from before name no caller and may hold API-key secrets, so they are dropped; a retry
-- of one of those requests runs again.

DELETE FROM idempotency_keys;

ALTER TABLE idempotency_keys
    ADD COLUMN principal   text NOT NULL,                 -- the calling key ("key:<id>")
    ADD COLUMN claim       uuid,                          -- the attempt running; NULL once answered
    ADD COLUMN lease_until timestamptz,                   -- when that attempt's hold lapses
    ADD COLUMN withheld    boolean NOT NULL DEFAULT false, -- answered with a secret, not stored
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD PRIMARY KEY (tenant_id, principal, key);
