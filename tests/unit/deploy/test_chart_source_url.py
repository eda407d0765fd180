"""The chart refuses the test-only source_url setting (issue #14 item 5): a deployment cannot
let the worker fetch from loopback over http."""

from __future__ import annotations

import pytest

from polydub.deploy import chart
from polydub.deploy.chart import ChartError


def test_the_test_only_loopback_setting_fails_to_render() -> None:
    extra = {"POLYDUB_SOURCE_URL_ALLOW_LOOPBACK": "true"}
    with pytest.raises(ChartError, match="POLYDUB_SOURCE_URL_ALLOW_LOOPBACK is a test-only"):
        chart.render({"config": {"extraEnv": extra}})
    enabled = {"POLYDUB_SOURCE_URL_ENABLED": "true"}  # the feature itself deploys
    rendered = chart.render({"config": {"extraEnv": enabled}})
    assert rendered
