"""The polydub API from Python: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

The response models are the API's own (``polydub.schemas``), so a field the server adds is
a field the client sees. See docs/client.md::

    from polydub.client import Client

    with Client("http://127.0.0.1:8080", api_key="pd_...") as client:
        job = client.create_job("talk.mp4", ["spa", "fra"])
        job = client.wait(job.id, on_event=print)
        paths = client.download_outputs(job.id, "out/")
"""

from polydub.client._async import AsyncClient
from polydub.client._common import ApiError, JobEvent
from polydub.client._sync import Client
from polydub.jobs import SETTLED, TERMINAL, ArtifactKind, JobStatus
from polydub.schemas import (
    JobOut,
    JobPage,
    LanguagesOut,
    OutputFile,
    OutputsOut,
    PurgeOut,
    TargetOut,
)

__all__ = [
    "SETTLED",
    "TERMINAL",
    "ApiError",
    "ArtifactKind",
    "AsyncClient",
    "Client",
    "JobEvent",
    "JobOut",
    "JobPage",
    "JobStatus",
    "LanguagesOut",
    "OutputFile",
    "OutputsOut",
    "PurgeOut",
    "TargetOut",
]
