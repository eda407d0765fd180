"""The latency floor of a status measurement on this machine: Locust's pollers, paced as in
``loadtests.run --profile status``, against an ASGI app that only answers ``ok``.

    python -m loadtests.floor                    # 64 users, 0.2 s pace, 20 s, 2 uvicorn workers
    python -m loadtests.floor --users 80 --duration 30

Whatever this measures is not polydub's: it is the load generator, the HTTP server and the
machine's scheduling (on a 2-core VM: p50 16 ms, p99 32 ms at 323 requests/s). Compare it with
the status profile's figures to see how much of their latency the API adds
(docs/reliability.md).
The app lives here, the Locust users in ``floor_users.py``: importing locust patches the
standard library for gevent, which the app's uvicorn must not get.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from polydub.stack.isolated import free_port

USERS = Path(__file__).with_name("floor_users.py")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every HTTP request with 200 ``ok`` (and the lifespan with nothing)."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--pace", type=float, default=0.2, help="seconds between requests")
    parser.add_argument("--duration", type=int, default=20, help="seconds of load")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args(argv)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "loadtests.floor:app", "--port", str(port),
         "--workers", str(args.workers), "--log-level", "warning"],
        start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(3)  # the workers import and bind
        locust = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(USERS), "--headless", "--only-summary",
             "-u", str(args.users), "-r", "20", "-t", f"{args.duration}s",
             "--reset-stats", "--host", f"http://127.0.0.1:{port}", "Poller"],
            env={**os.environ, "POLYDUB_FLOOR_PACE": str(args.pace)},
            check=False,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=15)
    return locust.returncode


if __name__ == "__main__":
    sys.exit(main())
