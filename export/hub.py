"""The Hugging Face Hub: whether it answers, and loading checkpoints with a clear gated-model error."""

from __future__ import annotations

import logging
import os

import httpx

from polydub.errors import ConfigurationError
from polydub.export.spec import Checkpoint, Preset

log = logging.getLogger(__name__)

HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        return httpx.head(f"{HUB_URL}/api/models", timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def resolve_preset(preset: Preset) -> Preset:
    """``auto`` becomes ``small`` when the Hub answers, else ``tiny`` with a loud warning."""
    if preset is not Preset.AUTO:
        return preset
    if hub_reachable():
        return Preset.SMALL
    log.warning(
        "the Hugging Face Hub cannot be reached: exporting the TINY preset (random weights). "
        "Everything runs end to end, but the transcripts, translations and speech are noise."
    )
    return Preset.TINY


def require_access(checkpoint: Checkpoint) -> str | None:
    """The token to use for a checkpoint; a clear error when a gated model has none."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if checkpoint.gated and not token:
        raise ConfigurationError(
            f"{checkpoint.hub_id} is gated on the Hugging Face Hub: accept its terms on "
            f"https://huggingface.co/{checkpoint.hub_id} and set HF_TOKEN.",
            code="gated_model_needs_token",
        )
    return token
