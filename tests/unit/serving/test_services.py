"""What the python models run, without Triton: ``polydub.serving``'s services on a tiny export,
their graph calls answered by onnxruntime in-process (the integration tests serve them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export import nllb
from polydub.export.nllb import NllbExporter
from polydub.export.onnx_tools import run_onnx
from polydub.export.spec import Target
from polydub.serving.batch import Failure, parameters
from polydub.serving.names import NLLB, NLLB_DECODER, NLLB_ENCODER, NllbIn, NllbOut
from polydub.serving.nllb_service import PARAMETERS, NllbService
from polydub.serving.tts_tokenizer import SpecFolder, TtsTokenizer, spec_path

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = nllb.build_tiny()
    repository = tmp_path_factory.mktemp("repo")
    NllbExporter().export_model(model, tokenizer, Target.CPU, repository, "tiny")
    return repository


def _graphs(repository: Path, calls: list[tuple[str, int]]) -> Any:
    """One BLS call, as the model.py makes it, answered by onnxruntime."""

    def infer(
        model: str, feeds: Mapping[str, NDArray[Any]], outputs: Sequence[str]
    ) -> list[NDArray[Any]]:
        calls.append((model, len(next(iter(feeds.values())))))
        return run_onnx(repository / model / "1" / "model.onnx", dict(feeds), list(outputs))

    return infer


def _request(text: str, tgt: str, n_best: int | None = None) -> dict[str, NDArray[Any]]:
    request: dict[str, NDArray[Any]] = {
        NllbIn.TEXT: np.array([[text.encode()]], dtype=np.object_),
        NllbIn.SRC_LANG: np.array([[b"eng_Latn"]], dtype=np.object_),
        NllbIn.TGT_LANG: np.array([[tgt.encode()]], dtype=np.object_),
    }
    if n_best is not None:
        request[NllbIn.N_BEST] = np.array([[n_best]], dtype=np.int32)
    return request


def test_parameters_take_the_config_over_the_defaults() -> None:
    config = {
        "parameters": {
            "num_beams": {"string_value": "2"},
            "max_len_b": {"string_value": ""},  # empty: the default
            "EXECUTION_ENV_PATH": {"string_value": "/env.tar.gz"},  # the backend's own
        }
    }
    params = parameters(config, PARAMETERS)
    assert params["num_beams"] == "2" and params["max_len_b"] == PARAMETERS["max_len_b"]
    assert params["EXECUTION_ENV_PATH"] == "/env.tar.gz"
    assert parameters({}, PARAMETERS) == PARAMETERS


def test_nllb_service_batches_chunks_and_fails_one_request_alone(repository: Path) -> None:
    calls: list[tuple[str, int]] = []
    version = repository / NLLB / "1"
    whole = NllbService(version, PARAMETERS, _graphs(repository, calls))
    small = {**PARAMETERS, "encoder_max_batch_size": "1", "decoder_max_batch_size": "3"}
    chunked = NllbService(version, small, _graphs(repository, calls))
    requests = [
        _request("Hello there.", "fra_Latn", n_best=2),
        _request("Where is the station?", "xx_Latn"),  # not a language: this request only
        _request("We meet tomorrow.", "spa_Latn"),
    ]
    outcomes = whole.run(requests)
    assert isinstance(outcomes[1], Failure) and outcomes[1].invalid
    assert "xx_Latn" in outcomes[1].message
    first, third = outcomes[0], outcomes[2]
    assert not isinstance(first, Failure) and not isinstance(third, Failure)
    assert first[NllbOut.TRANSLATIONS].shape == (1, 2) and third[NllbOut.SCORES].shape == (1, 1)
    assert first[NllbOut.SCORES][0, 0] >= first[NllbOut.SCORES][0, 1]
    assert first[NllbOut.TOKEN_IDS].dtype == np.int64

    calls.clear()
    again = chunked.run(requests)
    assert max(rows for model, rows in calls if model == NLLB_ENCODER) == 1
    assert max(rows for model, rows in calls if model == NLLB_DECODER) <= 3
    for served, expected in ((again[0], first), (again[2], third)):
        assert not isinstance(served, Failure)
        assert np.array_equal(served[NllbOut.TOKEN_IDS], expected[NllbOut.TOKEN_IDS])


def test_spec_folder_serves_specs_and_lists_languages(tmp_path: Path) -> None:
    folder = SpecFolder(tmp_path)
    assert folder.respond("") == b'{"languages": []}'
    spec = TtsTokenizer("spa", {"_": 0, "a": 1})
    spec_path(tmp_path, "spa").write_text(spec.to_json())
    assert folder.respond(" spa ") == spec.to_json().encode()
    assert folder.respond("") == b'{"languages": ["spa"]}'
    with pytest.raises(ValueError, match="no MMS-TTS tokenizer for language 'eng'"):
        folder.respond("eng")
    with pytest.raises(ValueError, match="not an ISO 639-3 code"):
        folder.respond("../x")
