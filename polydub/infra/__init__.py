"""Clients for the services polydub talks to: PostgreSQL, NATS JetStream, S3 and Triton.

Each is created once per process (the API's lifespan, a worker's start) and shared.
"""
