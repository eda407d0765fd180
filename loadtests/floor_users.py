"""The Locust users of ``python -m loadtests.floor``: pollers against its ``ok`` app."""

from __future__ import annotations

import os
import random

import gevent
from locust import FastHttpUser, constant_pacing, task

PACE = float(os.environ.get("POLYDUB_FLOOR_PACE", "0.2"))


class Poller(FastHttpUser):
    """As ``locustfile.Poller``: one request every PACE seconds, from a random phase."""

    wait_time = constant_pacing(PACE)

    def on_start(self) -> None:
        gevent.sleep(random.uniform(0.0, PACE))

    @task
    def poll(self) -> None:
        self.client.get("/", name="GET /")
