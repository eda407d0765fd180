-- Issue #13: a presigned upload lands under uploads/<id>/, a prefix no job reads; accepting it
-- copies the object to the server-owned inputs/<id>/source, whose identity the job pins.

-- Set while a POST /jobs turns the reservation into a job (claimed: no twin can use it, and
-- the sweep leaves its object alone); an open reservation has none. Only open ones count
-- against a key's cap (api_max_open_uploads).
ALTER TABLE uploads ADD COLUMN consumed_at timestamptz;
CREATE INDEX uploads_open ON uploads (owner_id, expires_at) WHERE consumed_at IS NULL;
-- Reservations from before: their PUT URLs write the job's own input key with no size bound.
-- Expired now, so the next retention pass deletes what was sent; the client reserves again.
UPDATE uploads SET expires_at = now() WHERE object_key LIKE 'inputs/%';

-- The ETag of the input object that was probed at submission; every read of the input by a
-- worker is conditional on it (If-Match). NULL for jobs from before this migration.
ALTER TABLE jobs ADD COLUMN input_etag text;
