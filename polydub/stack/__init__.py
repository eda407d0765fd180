"""The local stack: PostgreSQL, NATS JetStream, S3 and Triton, then the API and a worker.

``polydub stack up|down|status`` drives it; the test suite starts one of its own on free ports.
"""

from polydub.stack.stack import Stack, StackError

__all__ = ["Stack", "StackError"]
