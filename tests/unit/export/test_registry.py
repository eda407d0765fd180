"""The license table ``polydub models list`` prints agrees with the exporters' Checkpoints."""

from __future__ import annotations

import pytest

from polydub.export.registry import FAMILIES, LICENSES, get_family, model_source
from polydub.export.spec import Preset

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_real_checkpoint_is_listed_with_its_license(family: str) -> None:
    exporter = get_family(family)
    listed = {s.license.lower() for s in LICENSES.values() if s.family == family}
    for preset in (Preset.SMALL, Preset.LARGE):
        for checkpoint in [*exporter.defaults(preset).values(), *exporter.optional().values()]:
            sources = [
                s
                for s in LICENSES.values()
                if s.family == family
                and checkpoint.ref in s.checkpoint.replace("<lang>", checkpoint.ref[-3:])
            ]
            assert sources, f"{checkpoint.ref} is not in LICENSES"
            assert {s.license.lower() for s in sources} == {checkpoint.license.lower()}
            assert checkpoint.license.lower() in listed


def test_model_names_resolve_to_their_source() -> None:
    expected = {
        "silero_vad": ("vad", "MIT"),
        "pyannote_segmentation": ("diarization", "MIT"),
        "speaker_embedding": ("diarization", "CC-BY-4.0"),
        "whisper": ("whisper", "MIT"),
        "whisper_encoder": ("whisper", "MIT"),
        "nllb_decoder": ("nllb", "CC-BY-NC-4.0"),
        "mms_tts_tokenizer": ("mms_tts", "CC-BY-NC-4.0"),
        "mms_tts_fra": ("mms_tts", "CC-BY-NC-4.0"),
        "gender": ("gender", "Apache-2.0"),
    }
    for name, (family, license_) in expected.items():
        source = model_source(name)
        assert source is not None and (source.family, source.license) == (family, license_)
    fra = model_source("mms_tts_fra")
    assert fra is not None and fra.checkpoint == "facebook/mms-tts-fra"
    assert model_source("whisper_x") is None and model_source("mms_tts_frax") is None
