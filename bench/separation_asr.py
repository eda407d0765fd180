"""Does the separated speech stem help ASR? Whisper-base WER on the mixture vs on speech stems.

    .venv/bin/python -m bench.separation_asr [--model random|DIR|HUB_ID|PATH.th] [--seconds 60] [--snr 0 -5]

The recording: ``bench.asr_real``'s espeak-ng sentences with known text, over ``bench.separation``'s
generated music and noise at each ``--snr`` dB (speech over background). The ASR: the real whisper-base
the ``polydub[export]`` wheels carry, served by Triton, ``AsrClient.transcribe_packed`` on the known
sentence spans +- 0.1 s (as the ``transcribe`` stage cuts VAD regions), English given. Inputs:

* ``clean``: the speech alone (the floor no separator can beat);
* ``mixture``: speech + background, what ``transcribe`` sees without separation;
* ``<model>``: the speech stem of the chosen checkpoint through Triton (``random``: the tiny random
  net, expected to be worse than the mixture: its masks are noise);
* ``oracle``: the ideal-ratio-mask speech stem through the same STFT / overlap-add (this front
  end's ceiling for a perfect mask).

Prints WER per input and saves JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.asr_real import MARGIN_S, Audio, make_recording
from bench.common import TEMPLATES, private_stack, save
from bench.separation import htdemucs_runners, music, oracle_mask, sdr, separate_with_starts


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from polydub.export.ct2_whisper import bundled_checkpoint
    from polydub.export.repository import copy_templates
    from polydub.export.separation import MODEL, SeparationExporter
    from polydub.export.spec import RANDOM, Checkpoint, Target
    from polydub.export.wer import word_error_rate
    from polydub.export.whisper import WhisperExporter
    from polydub.export.whisper_graphs import BLS_MODEL
    from polydub.infra.triton import InferenceClient
    from polydub.orchestrator.inference.asr import AsrClient, AudioRegion
    from polydub.orchestrator.inference.separation import SeparationClient

    recording = make_recording(args.seconds)
    speech = recording.audio
    generated = music(recording.seconds, 0)[: speech.size]
    notes: dict[str, Any] = {"model": args.model, "snr_db": args.snr}
    with private_stack(["triton"]) as settings:
        started = time.perf_counter()
        repository = settings.model_repository
        whisper = WhisperExporter().export(
            {BLS_MODEL: Checkpoint(str(bundled_checkpoint()), "MIT")}, Target.CPU, repository
        )
        checkpoint = Checkpoint(args.model if args.model != RANDOM else RANDOM, "MIT")
        separation = SeparationExporter().export({MODEL: checkpoint}, Target.CPU, repository)
        copy_templates(TEMPLATES, repository, whisper.models + separation.models)
        notes["export_s"] = round(time.perf_counter() - started, 1)
        served = separation.models[0]  # separation_htdemucs for a demucs checkpoint
        async with InferenceClient(settings.triton_url) as triton:
            await triton.load_model(BLS_MODEL)
            await triton.load_model(served)
            asr = AsrClient(triton)
            separator: Any = SeparationClient(triton)
            if served != MODEL:
                import onnxruntime as ort

                graph = ort.InferenceSession(str(repository / served / "1" / "model.onnx"))
                separator = htdemucs_runners(graph, triton)[0]
            rows = []
            for snr, name, audio in await _inputs(separator, speech, generated, args):
                regions = [
                    AudioRegion(
                        max(0.0, a - MARGIN_S),
                        audio[
                            max(0, round((a - MARGIN_S) * 16000)) : round((b + MARGIN_S) * 16000)
                        ],
                    )
                    for a, b in recording.spans
                ]
                results = await asr.transcribe_packed(regions, language="eng")
                text = " ".join(r.text for r in results)
                wer = round(word_error_rate(recording.reference, text), 4)
                rows.append(
                    {"snr_db": snr, "input": name, "wer": wer, "sdr_speech_db": sdr(speech, audio)}
                )
                print(f"  {snr} dB {name}: WER {wer:.3f}", flush=True)
    notes["audio_seconds"] = round(recording.seconds, 2)
    notes["sentences"] = len(recording.texts)
    return {"notes": notes, "rows": rows}


async def _inputs(
    separation: Any, speech: Audio, generated: Audio, args: argparse.Namespace
) -> list[tuple[float | None, str, Audio]]:
    """(snr, name, audio) for every input the ASR hears: the clean speech once, then per SNR."""
    inputs: list[tuple[float | None, str, Audio]] = [(None, "clean", speech)]
    for snr in args.snr:
        scale = math.sqrt(float(np.mean(speech**2)) / 10 ** (snr / 10))
        background = (generated * scale).astype(np.float32)
        mixture = speech + background
        stem = (await separation.separate(mixture)).speech
        oracle = separate_with_starts(mixture, oracle_mask(speech, background)).speech
        inputs += [(snr, "mixture", mixture), (snr, args.model, stem), (snr, "oracle", oracle)]
    return inputs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model", default="random", help="random, a directory or a Hub id")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the recording")
    parser.add_argument(
        "--snr", type=float, nargs="+", default=[0.0, -5.0], help="speech over background, dB"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    outcome = asyncio.run(main(parse_args()))
    print(" | ".join(("snr_db", "input", "wer", "sdr_speech_db")))
    for r in outcome["rows"]:
        print(f"{r['snr_db']} | {r['input']} | {r['wer']:.3f} | {r['sdr_speech_db']:.2f}")
    print(outcome["notes"])
    print(save("separation_asr", outcome))
