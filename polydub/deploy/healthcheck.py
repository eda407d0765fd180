"""The container HEALTHCHECK of the polydub image: one GET, exit 0 on a 2xx answer, else 1.

One image runs both the API and the worker, which answer on different ports, so the URL comes
from ``HEALTHCHECK_URL`` (the worker's run sets it to its metrics endpoint). Standard library
only: it must work in the slim runtime image whatever extras are installed.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health/live"


def check(url: str, timeout: float = 4.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    return 0 if check(os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)) else 1


if __name__ == "__main__":
    sys.exit(main())
