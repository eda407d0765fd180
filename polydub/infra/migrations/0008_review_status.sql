-- A job whose languages wait for review (job option ``review``) waits in 'review' itself: it is
-- not finished (no job.succeeded yet) and no worker holds it until a render re-queues it.
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'review'));
