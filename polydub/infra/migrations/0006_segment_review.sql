-- Review and re-dub (issue #14): a language's edited segments, waiting for a render, and the
-- outputs of each earlier render, kept downloadable after a newer one replaced them.

CREATE TABLE segment_edits (
    job_id     uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    language   text NOT NULL,
    segments   jsonb NOT NULL,                   -- the whole editable state (polydub.review)
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, language)
);

-- artifacts holds each language's current outputs; a render copies them here first, as the
-- version they were, before its own outputs replace them.
CREATE TABLE artifact_versions (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    language     text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    kind         text NOT NULL,
    object_key   text NOT NULL,
    content_type text NOT NULL,
    size_bytes   bigint NOT NULL,
    sha256       text,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (job_id, language, version, kind)
);

-- The version the language's current outputs are (1 until a render).
ALTER TABLE job_targets ADD COLUMN output_version integer NOT NULL DEFAULT 1;

-- A language of a job with the ``review`` option waits in 'review' after translation.
ALTER TABLE job_targets DROP CONSTRAINT job_targets_status_check;
ALTER TABLE job_targets ADD CONSTRAINT job_targets_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'review'));
