"""Speech / background separation: quality on synthetic mixtures with known stems, and speed.

    .venv/bin/python -m bench.separation [--model random|DIR|HUB_ID] [--seconds 30] [--mixtures 3]
    .venv/bin/python -m bench.separation --checkpoint PATH|HUB_ID  # HT-Demucs: a demucs .th

Mixtures (16 kHz mono): espeak-ng sentences (``export/speech_clips.py``, two voices) with gaps,
over generated "music" (a chord progression of harmonic notes with a pulse) and coloured noise,
speech at ``--snr`` dB over the background. For each mixture and each separator:

* SDR (dB) of the speech and background stems against the references: 10 log10 |ref|^2 /
  |ref - estimate|^2 (plain SDR, no allowed distortion filter: a strict figure);
* residual original speech in the final mix's background, dB re the original speech: the
  background as the mix lays it (ducked by ``duck_db`` under speech for ducking, by
  ``separated_duck_db`` for a separated stem) projected on the speech reference frame by frame
  (100 ms); ducking alone leaves the original voices at about ``duck_db``;
* realtime factor (elapsed / audio seconds) through Triton (the orchestrator's client) and
  in-process (onnxruntime, ``--threads`` intra-op threads), and the mixture-consistency error.

Separators: ``none`` (the mix as both estimates: what ducking starts from), ``oracle`` (the ideal
ratio mask |S| / (|S| + |B|) through the same STFT / overlap-add: this front end's ceiling), and
the chosen checkpoint (``random``: the tiny random net, whose figures are noise by design).
``--checkpoint`` takes a demucs checkpoint (HT-Demucs: a ``.th`` file, a directory holding
one, or a Hub id whose repository holds one, ``owner/name:file.th`` among several): the export serves it as ``separation_htdemucs`` and the mixtures are resampled to its
44.1 kHz, its speech stem back to 16 kHz, background = mix - speech (``--model`` takes one too).
Prints a table and saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import TEMPLATES, private_stack, save

SR = 16000
Array = NDArray[np.float32]


def music(seconds: float, seed: int) -> Array:
    """Chords of harmonic notes changing every second, a pulse on the beat, coloured noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    t = np.arange(n) / SR
    out = np.zeros(n)
    roots = rng.choice([110.0, 130.8, 146.8, 164.8, 196.0], size=math.ceil(seconds))
    for i, root in enumerate(roots):
        span = slice(i * SR, min(n, (i + 1) * SR))
        for ratio in (1.0, 1.25, 1.5):
            for k in range(1, 5):
                out[span] += np.sin(2 * np.pi * root * ratio * k * t[span]) / k**1.5
    out *= 1 + 0.5 * np.maximum(0, np.sin(2 * np.pi * 2 * t)) ** 8  # a pulse at 120 bpm
    noise = np.cumsum(rng.standard_normal(n)) * 0.02
    noise -= np.convolve(noise, np.ones(400) / 400, mode="same")  # brown noise, DC removed
    mixed = out / np.std(out) + 0.5 * noise / (np.std(noise) + 1e-9)
    result: Array = (mixed / np.std(mixed)).astype(np.float32)
    return result


def speech_track(seconds: float, start: int) -> tuple[Array, list[tuple[float, float]]]:
    """Sentences with 0.6 s gaps until ``seconds`` are filled, and where each is spoken."""
    from polydub.export import speech_clips

    n = round(seconds * SR)
    out = np.zeros(n, np.float32)
    intervals: list[tuple[float, float]] = []
    at, k = int(0.5 * SR), start
    while at < n:
        clips = speech_clips.speech(1, k)
        if clips is None:
            raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
        audio = clips[0][1][: n - at]
        out[at : at + audio.size] = audio
        intervals.append((at / SR, (at + audio.size) / SR))
        at += audio.size + int(0.6 * SR)
        k += 1
    return out, intervals


def sdr(reference: Array, estimate: Array) -> float:
    error = float(np.sum((reference.astype(np.float64) - estimate) ** 2))
    return round(
        10 * math.log10(float(np.sum(reference.astype(np.float64) ** 2)) / max(error, 1e-20)), 2
    )


def residual_speech_db(background: Array, speech: Array) -> float:
    """Energy of ``background`` along ``speech``, frame by frame (100 ms), re the speech."""
    frame = SR // 10
    total = residual = 0.0
    for i in range(0, speech.size - frame + 1, frame):
        s, b = speech[i : i + frame].astype(np.float64), background[i : i + frame]
        energy = float(s @ s)
        if energy > 0:
            residual += float(s @ b) ** 2 / energy  # |projection|^2
            total += energy
    return round(10 * math.log10(max(residual, 1e-20) / total), 2)


def final_residual_db(
    background: Array, speech: Array, intervals: Sequence[tuple[float, float]], separated: bool
) -> float:
    from polydub.media.mix import MixPolicy, duck_envelope

    policy = MixPolicy()
    depth = policy.separated_duck_db if separated else policy.duck_db
    gain = duck_envelope(0, background.size, SR, intervals, depth, policy)
    return residual_speech_db(background * gain, speech)


def oracle_mask(speech: Array, background: Array) -> Any:
    from polydub.serving.separation import spectrogram

    def mask(specs: Array, starts: list[int]) -> Array:
        from polydub.serving.separation import chunk_at

        out = []
        for start in starts:
            s = np.hypot(*spectrogram(chunk_at(speech, start)))
            b = np.hypot(*spectrogram(chunk_at(background, start)))
            out.append(s / (s + b + 1e-9))
        masks: Array = np.stack(out).astype(np.float32)
        return masks

    return mask


def separate_with_starts(audio: Array, mask: Any) -> Any:
    """``serving.separation.separate`` for a mask that needs the chunks' positions (the oracle)."""
    from polydub.serving.separation import OverlapAdd, batches, masked_waveform

    result = OverlapAdd(audio.size)
    for starts, specs in batches(audio, 8):
        for start, spec, m in zip(starts, specs, mask(specs, starts), strict=True):
            result.add(start, masked_waveform(spec, m))
    return result.stems(audio)


def row(name: str, stems: Any, mix: Array, speech: Array, background: Array,
        intervals: Sequence[tuple[float, float]], seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    separated = name != "none"
    out = {
        "separator": name,
        "sdr_speech_db": sdr(speech, stems.speech),
        "sdr_background_db": sdr(background, stems.background),
        "residual_speech_final_db": final_residual_db(
            stems.background, speech, intervals, separated
        ),
        # "none" takes the mix as both estimates: no decomposition, nothing to sum back.
        "consistency_error": float(np.abs(stems.speech + stems.background - mix).max())
        if separated
        else None,
    }
    if seconds is not None:
        out["realtime_factor"] = round(seconds / (mix.size / SR), 4)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    from polydub.export.repository import copy_templates
    from polydub.export.separation import MODEL, SeparationExporter
    from polydub.export.spec import RANDOM, Checkpoint, Target
    from polydub.infra.triton import InferenceClient
    from polydub.orchestrator.inference.separation import SeparationClient
    from polydub.serving.separation import Stems, separate

    ref = args.checkpoint or args.model
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {"model": ref, "seconds": args.seconds, "snr_db": args.snr}
    with private_stack(["triton"]) as settings:
        repository = settings.model_repository
        checkpoint = Checkpoint(ref if ref != RANDOM else RANDOM, "MIT")
        report = SeparationExporter().export({MODEL: checkpoint}, Target.CPU, repository)
        copy_templates(TEMPLATES, repository, report.models)
        notes["export"] = report.notes
        served = report.models[0]
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(repository / served / "1" / "model.onnx"), options)

        def local(specs: Array) -> Array:
            out: Array = session.run(None, {"spectrogram": specs})[0]
            return out

        def local_mask_net(mix: Array) -> Stems:
            return separate(mix, local)

        async with InferenceClient(settings.triton_url) as triton:
            await triton.load_model(served)
            client: Any = SeparationClient(triton)
            local_stems: Any = local_mask_net
            label = ref
            if served != MODEL:  # HT-Demucs: its own front end at 44.1 kHz
                client, local_stems = htdemucs_runners(session, triton)
                label = f"htdemucs {ref}"
            for m in range(args.mixtures):
                speech, intervals = speech_track(args.seconds, 3 * m)
                bg = music(args.seconds, m)
                scale = math.sqrt(float(np.mean(speech**2)) / 10 ** (args.snr / 10))
                background = (bg * scale).astype(np.float32)
                mix = speech + background

                runs: list[tuple[str, Stems, float | None]] = [
                    ("none", Stems(mix, mix), None),
                    ("oracle", separate_with_starts(mix, oracle_mask(speech, background)), None),
                ]
                started = time.perf_counter()
                stems = local_stems(mix)
                runs.append((f"{label} onnxruntime", stems, time.perf_counter() - started))
                started = time.perf_counter()
                stems = await client.separate(mix)
                runs.append((f"{label} triton", stems, time.perf_counter() - started))
                for name, result, elapsed in runs:
                    figures = row(name, result, mix, speech, background, intervals, elapsed)
                    rows.append({"mixture": m, **figures})
    return {"notes": notes, "rows": rows}


class _AtRate:
    """``HtDemucsClient`` at the mixtures' 16 kHz, with ``separate(mix)`` like the mask net's."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def separate(self, mix: Array) -> Any:
        return await self.client.separate(mix, SR)


def htdemucs_runners(session: Any, triton: Any) -> tuple[Any, Any]:
    """(Triton client, in-process separation) of the HT-Demucs graph in ``session``."""
    from polydub.orchestrator.inference.htdemucs import HtDemucsClient, at_rate, resample
    from polydub.serving import htdemucs as front

    chunking = front.Chunking.of_waveform(session.get_inputs()[0].shape)

    def speech(waves: Array, specs: Array) -> tuple[Array, Array]:
        spec, wave = session.run(None, {"waveform": waves, "spectrogram": specs})
        return spec, wave

    def local(mix: Array) -> Any:
        native = front.separate(resample(mix, SR, front.SAMPLE_RATE), speech, chunking)
        return at_rate(mix, SR, native)

    return _AtRate(HtDemucsClient(triton, chunking)), local


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ("mixture", "separator", "sdr_speech_db", "sdr_background_db",
               "residual_speech_final_db", "consistency_error", "realtime_factor")  # fmt: skip
    print(" | ".join(columns))
    for r in rows:
        print(" | ".join(f"{r.get(c, '')}" if not isinstance(r.get(c), float) else f"{r[c]:.4g}"
                         for c in columns))  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="random", help="random, a directory or a Hub id")
    parser.add_argument(
        "--checkpoint",
        help="a demucs HT-Demucs checkpoint: a .th file, or a directory or Hub id holding one "
        "(OWNER/NAME:FILE.th among several)",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="per mixture")
    parser.add_argument("--mixtures", type=int, default=3)
    parser.add_argument("--snr", type=float, default=0.0, help="speech over background, dB")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    print_table(outcome["rows"])
    print(save("separation", outcome))
