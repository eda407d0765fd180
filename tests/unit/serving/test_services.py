"""What the python models run, without Triton: ``polydub.serving``'s services on a tiny export,
their graph calls answered by onnxruntime in-process (the integration tests serve them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from polydub.export import nllb
from polydub.export.nllb import NllbExporter
from polydub.export.spec import Target
from polydub.serving.batch import Failure, parameters
from polydub.serving.names import NLLB, NllbIn, NllbOut
from polydub.serving.nllb_ort import OrtNllb
from polydub.serving.nllb_service import CANCELLED, PARAMETERS, NllbService, cpu_share
from polydub.serving.tts_tokenizer import SpecFolder, TtsTokenizer, spec_path

pytestmark = pytest.mark.unit
# One search per batch: the tests that count a batch's rows per decoder run.
ONE_SEARCH = {**PARAMETERS, "searches": "1"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = nllb.build_tiny()
    repository = tmp_path_factory.mktemp("repo")
    NllbExporter().export_model(model, tokenizer, Target.CPU, repository, "tiny")
    return repository


def _count_steps(service: NllbService, rows: list[int]) -> None:
    """Record the rows of every decoder run the service makes (its own session, in-process)."""
    graphs = service.graphs
    decode = graphs.decode

    def counted(input_ids: NDArray[Any], *rest: Any) -> Any:
        rows.append(len(input_ids))
        return decode(input_ids, *rest)

    graphs.decode = counted  # type: ignore[method-assign,assignment]


def _request(
    text: str, tgt: str, n_best: int | None = None, max_length: int | None = None
) -> dict[str, NDArray[Any]]:
    request: dict[str, NDArray[Any]] = {
        NllbIn.TEXT: np.array([[text.encode()]], dtype=np.object_),
        NllbIn.SRC_LANG: np.array([[b"eng_Latn"]], dtype=np.object_),
        NllbIn.TGT_LANG: np.array([[tgt.encode()]], dtype=np.object_),
    }
    if n_best is not None:
        request[NllbIn.N_BEST] = np.array([[n_best]], dtype=np.int32)
    if max_length is not None:
        request[NllbIn.MAX_LENGTH] = np.array([[max_length]], dtype=np.int32)
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


def test_nllb_service_batches_in_process_and_fails_one_request_alone(repository: Path) -> None:
    version = repository / NLLB / "1"
    service = NllbService(version, ONE_SEARCH)
    assert service.graphs.threads >= 1  # 0 in the config: one per CPU, set explicitly
    assert service.graphs.providers["decoder"] == ["CPUExecutionProvider"]
    rows: list[int] = []
    _count_steps(service, rows)
    requests = [
        _request("Hello there.", "fra_Latn", n_best=2),
        _request("Where is the station?", "xx_Latn"),  # not a language: this request only
        _request("We meet tomorrow.", "spa_Latn"),
    ]
    outcomes = service.run(requests)
    assert isinstance(outcomes[1], Failure) and outcomes[1].invalid
    assert "xx_Latn" in outcomes[1].message
    first, third = outcomes[0], outcomes[2]
    assert not isinstance(first, Failure) and not isinstance(third, Failure)
    assert first[NllbOut.TRANSLATIONS].shape == (1, 2) and third[NllbOut.SCORES].shape == (1, 1)
    assert first[NllbOut.SCORES][0, 0] >= first[NllbOut.SCORES][0, 1]
    assert first[NllbOut.TOKEN_IDS].dtype == np.int64
    # Both valid requests in one search: the first step has a row per request, then every
    # beam of both (4 each) until one finishes.
    assert rows[0] == 2 and max(rows) == 2 * int(PARAMETERS["num_beams"])
    # The cache buffers are given back once the batch is done.
    assert all(b.flat.size == 0 for b in (service.graphs._new, *service.graphs._pasts))


def test_a_cancelled_request_stops_being_decoded(repository: Path) -> None:
    """Triton's cancellation, asked between steps: the abandoned request leaves the batch at
    once, its rows leave every later step, and the other request's result is unchanged."""
    service = NllbService(repository / NLLB / "1", ONE_SEARCH)
    requests = [
        _request("Hello there, how are you today?", "fra_Latn", max_length=40),
        _request("We meet tomorrow at the station.", "spa_Latn", max_length=40),
    ]
    full: list[int] = []
    _count_steps(service, full)
    alone = service.run(requests)
    steps_alone = len(full)

    asked = 0

    def cancelled_after_three_steps() -> bool:
        nonlocal asked
        asked += 1
        return asked > 3

    cut: list[int] = []
    service = NllbService(repository / NLLB / "1", ONE_SEARCH)
    _count_steps(service, cut)
    outcomes = service.run(requests, [cancelled_after_three_steps, lambda: False])
    assert outcomes[0] == Failure(CANCELLED, cancelled=True)
    kept, expected = outcomes[1], alone[1]
    assert not isinstance(kept, Failure) and not isinstance(expected, Failure)
    assert np.array_equal(kept[NllbOut.TOKEN_IDS], expected[NllbOut.TOKEN_IDS])
    # Asked once per step until it said yes, then never again; the rows it had (4 beams) are
    # gone from the step after: fewer rows decoded in all.
    assert asked == 4
    beams = int(PARAMETERS["num_beams"])
    assert cut[:4] == [2, 2 * beams, 2 * beams, 2 * beams] and set(cut[4:]) <= {beams}
    assert sum(cut) < sum(full) and len(cut) <= steps_alone


def test_a_request_of_many_rows_is_asked_once_per_step(repository: Path) -> None:
    """Triton is asked about a request once per decode step, not once per row of it."""
    service = NllbService(repository / NLLB / "1", ONE_SEARCH)
    texts = ["Hello there.", "We meet tomorrow at the station.", "Good night.", "Thank you."]
    many: dict[str, NDArray[Any]] = {
        NllbIn.TEXT: np.array([[t.encode()] for t in texts], dtype=np.object_),
        NllbIn.SRC_LANG: np.array([[b"eng_Latn"]] * len(texts), dtype=np.object_),
        NllbIn.TGT_LANG: np.array([[b"fra_Latn"]] * len(texts), dtype=np.object_),
        NllbIn.MAX_LENGTH: np.array([[12]] * len(texts), dtype=np.int32),
    }
    steps: list[int] = []
    _count_steps(service, steps)
    asked = 0

    def never() -> bool:
        nonlocal asked
        asked += 1
        return False

    outcomes = service.run([many], [never])
    assert not isinstance(outcomes[0], Failure)
    assert outcomes[0][NllbOut.TOKEN_IDS].shape[0] == len(texts)
    assert asked == len(steps)  # one question a step, whatever the rows


def test_several_searches_answer_as_one(repository: Path) -> None:
    """A batch shared out among searches running at once (threads over one set of sessions)
    answers every request as one search does: a request of several rows spread over the
    searches, and a cancelled request, asked once and dropped. (fp32 graphs: int8 ones
    quantize a run's activations with one scale for all its rows, so a row's scores move a
    little with the rows decoded beside it.)"""
    fp32 = {"encoder_file": "encoder_fp32.onnx", "decoder_file": "decoder_fp32.onnx"}
    texts = ["Good night, see you soon.", "Thank you.", "The train leaves at noon."]
    rows: dict[str, NDArray[Any]] = {
        NllbIn.TEXT: np.array([[t.encode()] for t in texts], dtype=np.object_),
        NllbIn.SRC_LANG: np.array([[b"eng_Latn"]] * len(texts), dtype=np.object_),
        NllbIn.TGT_LANG: np.array([[b"ita_Latn"]] * len(texts), dtype=np.object_),
        NllbIn.N_BEST: np.array([[2]] * len(texts), dtype=np.int32),
        NllbIn.MAX_LENGTH: np.array([[16]] * len(texts), dtype=np.int32),
    }
    requests = [
        _request("Hello there.", "fra_Latn", n_best=2, max_length=16),
        _request("Where is the station?", "deu_Latn", n_best=2, max_length=16),
        _request("We meet tomorrow.", "spa_Latn", n_best=2, max_length=16),
        rows,
    ]
    one = NllbService(repository / NLLB / "1", {**ONE_SEARCH, **fp32}).run(requests)
    service = NllbService(repository / NLLB / "1", {**PARAMETERS, **fp32, "searches": "3"})
    assert len(service.translator.models) == 3 and service.graphs.threads >= 1
    asked: list[int] = []

    def asks(i: int) -> Callable[[], bool]:
        def gone() -> bool:
            asked.append(i)
            return i == 1  # request 1's client went away

        return gone

    outcomes = service.run(requests, [asks(i) for i in range(len(requests))])
    assert outcomes[1] == Failure(CANCELLED, cancelled=True)
    assert asked.count(1) == 1  # once gone, never asked again
    for i in (0, 2, 3):
        got, want = outcomes[i], one[i]
        assert not isinstance(got, Failure) and not isinstance(want, Failure)
        np.testing.assert_array_equal(got[NllbOut.TOKEN_IDS], want[NllbOut.TOKEN_IDS])
        np.testing.assert_allclose(got[NllbOut.SCORES], want[NllbOut.SCORES], atol=1e-5)
    assert outcomes[3][NllbOut.TOKEN_IDS].shape[:2] == (3, 2)  # type: ignore[index]
    for model in service.translator.models:  # every search gave its cache back
        assert isinstance(model, OrtNllb)
        assert all(b.flat.size == 0 for b in (model._new, *model._pasts))


def test_cpu_share_resolves_zeros() -> None:
    import os

    cpus = len(os.sched_getaffinity(0))
    assert cpu_share(0, 0) == (cpus, 1)
    assert cpu_share(1, 0) == (1, cpus)
    assert cpu_share(cpus * 2, 0) == (cpus * 2, 1)
    assert cpu_share(2, 3) == (2, 3)


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
