"""Every SQL statement of the API tier lives here; other modules call these functions.

One module per table group: ``jobs`` (jobs, their targets, events and artifacts),
``uploads`` (presigned upload reservations),
``keys`` (api_keys), ``quota`` (the rate buckets and the concurrent-job count), ``outbox`` (the
queue messages), ``webhooks`` (webhook_deliveries), ``retention`` (the purge) and
``reconcile`` (stuck jobs). The logic that
decides what to run (key hashing, rate-limit decisions, the outbox relay, webhook delivery, the
retention sweep) stays in its own module and owns the transactions it needs.

The two writers both tiers share, a job's events and its webhook deliveries, are
``polydub.jobs``'s (``record_event``, ``record_webhook_delivery``): the orchestrator writes them
too. The health probe's ``SELECT 1`` is a liveness check, not data access, and stays in
``routes/health.py``.
"""
