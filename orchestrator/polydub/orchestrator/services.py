"""What the stages use, created once per worker process and shared by its concurrent jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from polydub.infra.storage import ObjectStore
from polydub.infra.triton import Deadline, InferenceClient
from polydub.manifest import Manifest, fetch_manifest
from polydub.media.mix import BackgroundSeparator, MixPolicy
from polydub.media.probe import Limits
from polydub.orchestrator.inference.asr import AsrClient
from polydub.orchestrator.inference.diarization import DiarizationClient
from polydub.orchestrator.inference.gender import GenderClient
from polydub.orchestrator.inference.translation import TranslationClient
from polydub.orchestrator.inference.tts import TtsClient
from polydub.orchestrator.inference.vad import VadClient
from polydub.orchestrator.state import JobStore
from polydub.orchestrator.timing import TimingPolicy
from polydub.orchestrator.voices import Voice
from polydub.settings import Settings

MANIFEST_TTL_SECONDS = 60.0


@dataclass
class Services:
    settings: Settings
    jobs: JobStore
    store: ObjectStore
    triton: InferenceClient
    vad: VadClient
    diarization: DiarizationClient
    asr: AsrClient
    gender: GenderClient
    translation: TranslationClient
    tts: TtsClient
    limits: Limits = field(default_factory=Limits)
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    mix: MixPolicy = field(default_factory=MixPolicy)
    separator: BackgroundSeparator | None = None  # a source-separation model, when deployed
    # Each language's voice with its own pitch, measured once per process: "voice:<language>".
    voice_cache: dict[str, Voice] = field(default_factory=dict)
    manifest_cache: tuple[float, Manifest] | None = None

    async def manifest(self) -> Manifest:
        """What Triton serves (``polydub.manifest``), re-read at most once a minute."""
        cached = self.manifest_cache
        if cached is None or time.monotonic() - cached[0] > MANIFEST_TTL_SECONDS:
            cached = (time.monotonic(), await fetch_manifest(self.triton))
            self.manifest_cache = cached
        return cached[1]

    async def random_weights(self, models: list[str]) -> bool:
        """Whether any of ``models`` is served with random weights (its output is noise)."""
        served = (await self.manifest()).models
        return any(served[m].random for m in models if m in served)

    @classmethod
    def create(
        cls, settings: Settings, jobs: JobStore, store: ObjectStore, triton: InferenceClient
    ) -> Services:
        def per_unit(seconds: float) -> Deadline:
            return Deadline.from_settings(seconds, settings)

        return cls(
            settings=settings,
            jobs=jobs,
            store=store,
            triton=triton,
            vad=VadClient(triton),
            diarization=DiarizationClient(triton),
            asr=AsrClient(triton, deadline=per_unit(settings.triton_asr_seconds_per_audio_second)),
            gender=GenderClient(triton),
            translation=TranslationClient(
                triton,
                deadline=per_unit(settings.triton_translation_seconds_per_token),
                max_in_flight=settings.triton_translation_max_in_flight,
            ),
            tts=TtsClient(triton, deadline=per_unit(settings.triton_tts_seconds_per_token)),
            limits=Limits.from_settings(settings),
        )
