"""The dubbing pipeline's stages, in order.

Once per job:   validate → extract_audio → separate → diarize → transcribe → gender
Per language:   translate → assign_voices → synthesize → mix → mux → subtitles
Each stage reads earlier stages' outputs from S3 by key and writes its own to deterministic keys
``jobs/<job>/<stage>/<language or _>/...``; weights are rough relative costs for percent / ETA.
The JSON those objects hold is read and written by ``polydub.orchestrator.records`` alone.

A new stage is an async ``(StageContext) -> StageResult`` function in a module here and one line
below; ``tests/unit/orchestrator/test_pipeline.py`` shows the runner's rules with toy stages.
"""

from __future__ import annotations

from polydub.orchestrator.pipeline import Stage
from polydub.orchestrator.stages.deliver import mix, mux, subtitles
from polydub.orchestrator.stages.dub import assign_voices, synthesize, translate
from polydub.orchestrator.stages.ingest import extract_audio, validate
from polydub.orchestrator.stages.separate import separate_background
from polydub.orchestrator.stages.speech import detect_gender, diarize_speakers, transcribe

STAGES: list[Stage] = [
    Stage("validate", "job", validate, weight=0.2),
    Stage("extract_audio", "job", extract_audio, weight=0.5),
    # before the speech stages: they hear its speech stem, the mixes lay its background
    Stage("separate", "job", separate_background, weight=1.0),
    Stage("diarize", "job", diarize_speakers, weight=2.0),
    Stage("transcribe", "job", transcribe, weight=3.0),
    Stage("gender", "job", detect_gender, weight=0.3),
    Stage("translate", "target", translate, weight=1.5),
    Stage("assign_voices", "target", assign_voices, weight=0.3),
    Stage("synthesize", "target", synthesize, weight=3.0),
    Stage("mix", "target", mix, weight=1.0),
    Stage("mux", "target", mux, weight=0.7),
    Stage("subtitles", "target", subtitles, weight=0.2),
]
