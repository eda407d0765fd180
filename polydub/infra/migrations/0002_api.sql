-- What the API tier adds to the core schema: the per-key webhook signing secret, the retry
-- counter that names each re-enqueue's message (<job>:retry:<n>), presigned-upload reservations,
-- and the per-key token buckets of the rate limiter (shared by every API replica).

ALTER TABLE api_keys ADD COLUMN webhook_secret text;   -- HMAC-SHA256 key for this key's webhooks
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

ALTER TABLE jobs ADD COLUMN retries integer NOT NULL DEFAULT 0;
CREATE INDEX jobs_owner_status_created ON jobs (owner_id, status, created_at DESC, id DESC);

-- A presigned upload: the client PUTs to inputs/<id>/source, then creates the job from it.
CREATE TABLE uploads (
    id          uuid PRIMARY KEY,                         -- becomes the job id
    owner_id    uuid NOT NULL REFERENCES api_keys (id),
    object_key  text NOT NULL,
    filename    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX uploads_expires ON uploads (expires_at);

-- Token bucket per key: refilled continuously at rate_limit_per_minute / 60 tokens a second.
CREATE TABLE api_rate_buckets (
    key_id      uuid PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
