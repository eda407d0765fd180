-- Hardening (issue #13).
-- The fingerprint of the request that created a job with an Idempotency-Key: a repeat with the
-- same key and another body is refused (idempotency_mismatch) instead of answered with the first
-- job. NULL for jobs created before this column (and for jobs without a key): never compared.
ALTER TABLE jobs ADD COLUMN idempotency_hash bytea;

-- A stage that ends with its job or target language is closed with the reason, never left
-- 'running': 'failed' (the job's or language's error) or 'cancelled'.
ALTER TABLE job_stages ADD COLUMN error_code text;
ALTER TABLE job_stages ADD COLUMN error_message text;
ALTER TABLE job_stages DROP CONSTRAINT job_stages_status_check;
ALTER TABLE job_stages ADD CONSTRAINT job_stages_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled'));
