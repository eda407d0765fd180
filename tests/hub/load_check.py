"""Load every fake-hub repository the way a user's process does: ``python -m tests.hub.load_check``
with ``HF_ENDPOINT`` (and ``HF_HUB_CACHE``, ``HF_TOKEN``) set before huggingface_hub is imported.

Prints one JSON object: per check, the facts a test asserts on, or ``{"error": "Type: message"}``.
Nothing here knows the server: only the environment points the real loading code at it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.hub.build import EMBEDDING, MMS_LANGUAGES, MMS_PREFIX, NLLB, SEGMENTATION, WHISPER

Facts = dict[str, Any]
SPEECH_TEXT = {"spa": "hola mundo", "fra": "bonjour a vous", "deu": "guten tag", "eng": "good day"}


def _noise(samples: int) -> Any:
    import numpy as np

    return (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)


def _transformers() -> Any:
    import transformers

    return transformers  # untyped


def whisper() -> Facts:
    import torch

    hf = _transformers()
    model = hf.WhisperForConditionalGeneration.from_pretrained(WHISPER).eval()
    tokenizer = hf.WhisperTokenizer.from_pretrained(WHISPER)
    generation = hf.GenerationConfig.from_pretrained(WHISPER)
    extractor = hf.WhisperFeatureExtractor.from_pretrained(WHISPER)
    features = extractor(_noise(16000), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(features, language="es", task="transcribe", max_new_tokens=3)
    names = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|es|>", "<|transcribe|>"]
    names += ["<|notimestamps|>", "<|0.00|>", "<|30.00|>"]
    hello = tokenizer.encode(" hola mundo", add_special_tokens=False)
    return {
        "class": type(model).__name__,
        "vocab_size": model.config.vocab_size,
        "d_model": model.config.d_model,
        "tokenizer_len": len(tokenizer),
        "ids": {name: tokenizer.convert_tokens_to_ids(name) for name in names},
        "roundtrip": tokenizer.decode(hello),
        "languages": len(generation.lang_to_id),
        "lang_es": generation.lang_to_id["<|es|>"],
        "task_to_id": generation.task_to_id,
        "no_timestamps": generation.no_timestamps_token_id,
        "suppress_tokens": len(generation.suppress_tokens),
        "mel_bins": features.shape[1],
        "generated": out[0].tolist(),
    }


def nllb() -> Facts:
    import torch

    hf = _transformers()
    tokenizer = hf.AutoTokenizer.from_pretrained(NLLB, src_lang="spa_Latn")
    model = hf.M2M100ForConditionalGeneration.from_pretrained(NLLB, attn_implementation="eager")
    source = tokenizer("Hola, ¿cómo estás?", return_tensors="pt")
    french = tokenizer.convert_tokens_to_ids("fra_Latn")
    with torch.no_grad():
        out = model.generate(**source, forced_bos_token_id=french, max_new_tokens=4)
    ids = source.input_ids[0].tolist()
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "model_class": type(model).__name__,
        "vocab_size": model.config.vocab_size,
        "tokenizer_len": len(tokenizer),
        "source_first": tokenizer.convert_ids_to_tokens(ids[0]),
        "source_last": tokenizer.convert_ids_to_tokens(ids[-1]),
        "generated_prefix": tokenizer.convert_ids_to_tokens(out[0].tolist()[:2]),
        "special_ids": [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id],
    }


def mms_tts(language: str) -> Facts:
    import torch

    from polydub.orchestrator.text_normalize import TtsTokenizer

    hf = _transformers()
    repo_id = MMS_PREFIX + language
    model = hf.VitsModel.from_pretrained(repo_id).eval()
    tokenizer = hf.VitsTokenizer.from_pretrained(repo_id)
    # VitsTokenizer splits text on its pad token, a vocabulary letter ("k" in mms-tts-eng), and
    # then leaves out blanks next to it: its ids differ from MMS's (and polydub's) interleaving
    # for texts with that letter. The comparison below is of texts without it.
    text = SPEECH_TEXT[language].replace(tokenizer.pad_token, "")
    inputs = tokenizer(text, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        waveform = model(**inputs).waveform
    ours = TtsTokenizer(language, dict(tokenizer.encoder)).encode(text)
    return {
        "class": type(model).__name__,
        "pad_id": tokenizer.pad_token_id,
        "sampling_rate": model.config.sampling_rate,
        "same_ids_as_polydub": inputs.input_ids[0].tolist() == ours,
        "samples": waveform.shape[-1],
    }


def pyannote(repo_id: str, token: str | bool | None = None, cache: Path | None = None) -> Facts:
    import torch
    import yaml
    from huggingface_hub import hf_hub_download

    from polydub.export import pyannote_segmentation as seg
    from polydub.export import wespeaker_resnet as wes

    def download(name: str) -> Path:
        return Path(hf_hub_download(repo_id, name, token=token, cache_dir=cache))

    config = yaml.safe_load(download("config.yaml").read_text())
    path = download("pytorch_model.bin")
    state = seg.load_lightning_state_dict(path)
    with torch.no_grad():
        if repo_id == SEGMENTATION:
            network = seg.build(seg.REAL)
            network.load_state_dict(state)  # strict: every key, every shape
            shape = network(torch.from_numpy(_noise(160000)).view(1, 1, -1)).shape
        else:
            network = wes.build(wes.REAL)
            network.load_state_dict(state)
            waveform = torch.from_numpy(_noise(32000)).view(1, 1, -1)
            shape = network(waveform, torch.ones(1, seg.num_frames(32000))).shape
    return {"target": config["model"]["_target_"], "keys": len(state), "output": list(shape)}


def polydub_hub() -> Facts:
    """polydub's own Hub helpers, reading HF_ENDPOINT and HF_TOKEN like the export does."""
    from polydub.export import hub
    from polydub.export.spec import Checkpoint

    inspected = hub.inspect(Checkpoint(WHISPER, "mit"), hub.Expected(model_type="whisper"))
    gated = Checkpoint(SEGMENTATION, "MIT", gated=True)
    return {
        "reachable": hub.hub_reachable(),
        "revision": inspected.revision,
        "weight_bytes": inspected.weight_bytes,
        "gated_file": hub.fetch_file(gated, "config.yaml").name,
    }


def _error_name(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "no error"


def gated_refused() -> Facts:
    """In an empty cache: huggingface_hub serves a cached file when the Hub refuses the HEAD."""
    with tempfile.TemporaryDirectory() as cache:
        return {
            "no_token": _error_name(lambda: pyannote(SEGMENTATION, False, Path(cache))),
            "wrong_token": _error_name(lambda: pyannote(SEGMENTATION, "hf_wrong", Path(cache))),
        }


CHECKS: dict[str, Callable[[], Facts]] = {
    "whisper": whisper,
    "nllb": nllb,
    **{f"mms_tts_{lang}": functools.partial(mms_tts, lang) for lang in MMS_LANGUAGES},
    "embedding": functools.partial(pyannote, EMBEDDING),
    "segmentation": functools.partial(pyannote, SEGMENTATION),
    "gated_refused": gated_refused,
    "polydub_hub": polydub_hub,
}


def main(names: list[str]) -> int:
    results: dict[str, Facts] = {"endpoint": {"HF_ENDPOINT": os.environ.get("HF_ENDPOINT")}}
    for name in names or list(CHECKS):
        started = time.perf_counter()
        try:
            results[name] = CHECKS[name]()
        except Exception as exc:
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
