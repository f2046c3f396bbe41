-- An answer that carries a secret (a field marked debug_redact) is never stored: its record
-- keeps the key, so a repeat is refused instead of run twice or answered with the secret.
ALTER TABLE idempotency_records ADD COLUMN withheld boolean NOT NULL DEFAULT false;
