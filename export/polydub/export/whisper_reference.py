"""Whisper references for the export's checks and the tests: PyTorch outputs on fixed inputs,
transformers' greedy ``generate``, and the served decoding (``polydub.serving.whisper_decode``)
over the exported graphs in this process (``OrtWhisper``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.export import whisper_int8
from polydub.export.whisper_graphs import (
    BLS_MODEL,
    DECODER_MODEL,
    ENCODER_MODEL,
    DecoderGraph,
    EncoderGraph,
    graph_path,
)
from polydub.serving.names import layer_tensors
from polydub.serving.whisper_decode import DecodeOptions, DecodeResult, greedy_decode
from polydub.serving.whisper_features import log_mel_spectrogram
from polydub.serving.whisper_ort import OrtGraphs
from polydub.serving.whisper_service import TOKENIZER_DIR
from polydub.serving.whisper_text import FACTS_FILE, WhisperFacts

Array = NDArray[Any]


def check_audio() -> list[Array]:
    """Fixed synthetic clips: voiced-like tones (7.3 s), noise (2.1 s), silence (1 s)."""
    return whisper_int8.synthetic_clips()


def reference_audio() -> tuple[list[Array], str | None]:
    """The clips the export checks PyTorch parity and greedy tokens on: two spoken sentences
    (espeak-ng, two voices) and the noise clip; without espeak-ng the synthetic clips, and a
    note saying so."""
    synthetic = check_audio()
    spoken = whisper_int8.check_clips(2)
    if not spoken.speech:
        return synthetic, "whisper parity checked on synthetic tones: espeak-ng is not installed"
    return [*spoken.audios, synthetic[1]], None


class OrtWhisper:
    """The two exported graphs in this process, as a ``DecoderBackend``: the served model's own
    ``whisper_ort.OrtGraphs`` (the same sessions, io_binding and loop as the BLS), so the
    in-process reference and the served model differ by the serving only."""

    def __init__(
        self,
        encoder: Path,
        decoder: Path,
        facts: WhisperFacts,
        threads: int = 1,
        tokenizer_dir: Path | None = None,
    ) -> None:
        self.graphs = OrtGraphs(encoder, decoder, facts, threads=threads)
        self.facts = facts
        self.tokenizer_dir = tokenizer_dir

    @classmethod
    def from_repository(cls, repository: Path, variant: str = "", threads: int = 1) -> OrtWhisper:
        tokenizer_dir = repository / BLS_MODEL / "1" / TOKENIZER_DIR
        return cls(
            graph_path(repository, ENCODER_MODEL, variant),
            graph_path(repository, DECODER_MODEL, variant),
            WhisperFacts.load(tokenizer_dir / FACTS_FILE),
            threads=threads,
            tokenizer_dir=tokenizer_dir,
        )

    def encode(self, features: Array) -> Any:
        return self.graphs.encode(features)

    def step(self, input_ids: Array, past: Any | None, cross: Any) -> tuple[Array, Any]:
        logits, presents = self.graphs.step(input_ids, past, cross)
        return logits, presents

    def select(self, state: Any, rows: Array) -> Any:
        return self.graphs.select(state, rows)

    def decode(
        self, audios: Sequence[Array], options: Sequence[DecodeOptions], max_new_tokens: int
    ) -> list[DecodeResult]:
        features = log_mel_spectrogram(audios, self.facts.n_mels)
        return greedy_decode(self, features, options, self.facts, max_new_tokens)


@dataclass
class References:
    """PyTorch outputs on fixed inputs, computed once and compared with any exported graphs."""

    features: Array
    encoder: list[Array]  # EncoderGraph outputs
    decoder_feeds: list[dict[str, Array]]  # three steps: [sot] (empty past), [lang, task], [ts]
    decoder: list[list[Array]]  # DecoderGraph outputs per step
    hf_logits: list[Array]  # transformers' own forward: last-position logits per step


def torch_references(model: Any, facts: WhisperFacts, features: Array) -> References:
    import torch
    from transformers import modeling_outputs

    outputs_module: Any = modeling_outputs  # untyped
    n = facts.decoder_layers
    decoder = DecoderGraph(model).eval()
    with torch.inference_mode():
        encoder = [o.numpy() for o in EncoderGraph(model).eval()(torch.from_numpy(features))]
        hidden = outputs_module.BaseModelOutput(last_hidden_state=torch.from_numpy(encoder[0]))
        batch = features.shape[0]
        past = [np.zeros((batch, facts.decoder_heads, 0, facts.head_dim), np.float32)] * (2 * n)
        steps = [
            np.full((batch, 1), facts.sot, np.int64),
            np.array([[next(iter(facts.languages.values())), facts.transcribe]] * batch, np.int64),
            np.full((batch, 1), facts.timestamp_begin, np.int64),
        ]
        refs = References(features, encoder, [], [], [])
        prefix = np.zeros((batch, 0), np.int64)
        for ids in steps:
            feed: dict[str, Array] = {"input_ids": ids}
            feed.update(zip(layer_tensors("past", n), past, strict=True))
            feed.update(zip(layer_tensors("cross", n), encoder[1:], strict=True))
            outputs = [o.numpy() for o in decoder(*(torch.from_numpy(v) for v in feed.values()))]
            prefix = np.concatenate([prefix, ids], axis=1)
            hf = model(encoder_outputs=hidden, decoder_input_ids=torch.from_numpy(prefix))
            refs.decoder_feeds.append(feed)
            refs.decoder.append(outputs)
            refs.hf_logits.append(hf.logits[:, -1].numpy())
            past = outputs[1:]
    return refs


def check_graphs(
    refs: References,
    encoder_path: Path,
    decoder_path: Path,
    diff: Callable[[Sequence[Array], Sequence[Array]], float] | None = None,
) -> tuple[float, float]:
    """Differences of the encoder and the decoder on fixed inputs, relative to each output's
    scale: ``max_rel_diff`` (worst element over the output's max |value|) unless ``diff`` says
    otherwise (``rms_rel_diff`` for int8, whose single outlier elements say little).

    Judged on what the served model reads: the encoder's cross-attention K/V (its
    ``last_hidden_state`` is an output for checks only), the decoder's logits and K/V cache. The
    decoder's reference is our flat DecoderGraph, which must itself match transformers'
    WhisperForConditionalGeneration forward: the larger of both differences is returned.
    """
    from polydub.export.onnx_tools import max_rel_diff, run_onnx

    measure = diff or max_rel_diff
    encoder = run_onnx(encoder_path, {"input_features": refs.features})
    encoder_diff = measure(refs.encoder[1:], encoder[1:])
    decoder_diff = 0.0
    for feed, expected, hf in zip(refs.decoder_feeds, refs.decoder, refs.hf_logits, strict=True):
        decoder_diff = max(decoder_diff, measure(expected, run_onnx(decoder_path, feed)))
        decoder_diff = max(decoder_diff, max_rel_diff([hf], expected[:1]))
    return encoder_diff, decoder_diff


def hf_greedy_tokens(
    model: Any,
    features: Array,
    language: str | None,
    task: str,
    max_new_tokens: int,
    languages: Sequence[str] | None = None,
) -> list[list[int]]:
    """One window's greedy decode by transformers: ``detect_language``, then the plain
    ``GenerationMixin.generate`` with Whisper's own logits processors (begin-suppress, suppress,
    ``WhisperTimeStampLogitsProcessor``) in the order Whisper's generate installs them.

    Whisper's ``generate`` itself is not the reference: even for a short clip it runs its
    long-form seek loop (re-decoding from the last timestamp), which a single window doesn't do.
    ``languages``: the Whisper codes detection may pick (as the BLS: polydub's); None: all.
    """
    import copy

    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )
    from transformers.utils import logging as transformers_logging

    generation = copy.deepcopy(model.generation_config)
    if languages is not None:
        generation.lang_to_id = {f"<|{c}|>": generation.lang_to_id[f"<|{c}|>"] for c in languages}
    task_id = generation.task_to_id[task]
    processors = LogitsProcessorList(
        [
            SuppressTokensAtBeginLogitsProcessor(generation.begin_suppress_tokens, begin_index=3),
            SuppressTokensLogitsProcessor(generation.suppress_tokens),
            WhisperTimeStampLogitsProcessor(generation, begin_index=3),
        ]
    )
    generation.suppress_tokens = None
    generation.begin_suppress_tokens = None
    # generate() merges the model's own suppress lists back in and warns that ours take
    # precedence (they are the same lists): quiet for the duration.
    hf_logging: Any = transformers_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _generate_rows(
            model, features, language, task_id, generation, processors, max_new_tokens
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def _generate_rows(
    model: Any,
    features: Array,
    language: str | None,
    task_id: int,
    generation: Any,
    processors: Any,
    max_new_tokens: int,
) -> list[list[int]]:
    import torch
    from transformers import GenerationMixin

    eot = generation.eos_token_id
    out: list[list[int]] = []
    with torch.inference_mode():
        for row in range(features.shape[0]):
            feats = torch.from_numpy(features[row : row + 1])
            encoded = model.get_encoder()(feats)
            if language is None:
                lang_id = int(
                    model.detect_language(encoder_outputs=encoded, generation_config=generation)[0]
                )
            else:
                lang_id = generation.lang_to_id[f"<|{language}|>"]
            prompt = torch.tensor([[generation.decoder_start_token_id, lang_id, task_id]])
            sequences = GenerationMixin.generate(
                model,
                encoder_outputs=encoded,
                decoder_input_ids=prompt,
                logits_processor=processors,
                generation_config=generation,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
            tokens = sequences[0, 3:].tolist()
            out.append(tokens[: tokens.index(eot)] if eot in tokens else tokens)
    return out
