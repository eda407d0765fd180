-- Quality-gate warnings (orchestrator/gates.py): a JSON array of {code, message, stage}, kept
-- with the job for the figures of job-scope stages (transcription) and with each target language
-- for its own (translation, synthesis, mix). A stage that runs again replaces its own entries.

ALTER TABLE jobs ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
ALTER TABLE job_targets ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
