-- Job metadata and webhook events (issue #14, item 4).
-- A job's name and free-form metadata (a JSON object, at most 16 KiB), echoed in every answer
-- and webhook so a caller can find its own records in them.
ALTER TABLE jobs ADD COLUMN name text;
ALTER TABLE jobs ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';

-- Account-level webhook endpoints: every job of the key is delivered to each of them, beside the
-- job's own callback_url. Signed with the key's webhook secret, like the callback.
CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    owner_id    uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    url         text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, url)
);

-- Deliveries per language as well as per job: language '' is the job's own event. One row per
-- job, state, language and destination, so each event reaches each endpoint once.
ALTER TABLE webhook_deliveries ADD COLUMN language text NOT NULL DEFAULT '';
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_job_id_state_key;
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (job_id, state, language, url);
