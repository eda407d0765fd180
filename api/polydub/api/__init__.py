"""The API tier (imported as ``polydub.api``): the job API clients use at volume.

FastAPI under ``/api/v1``; see ``app.create_app``. PostgreSQL is the system of record, S3 holds
inputs and outputs, NATS JetStream carries the job messages (through an outbox) and progress.
"""
