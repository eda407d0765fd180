"""The names of polydub's Triton models and of their tensors: one spelling for the exporters'
GraphSpecs, the python models and the orchestrator's clients.

Tensor names are ``StrEnum`` members, so they are plain ``str`` wherever a name is expected and a
model's inputs or outputs can be listed in order (``list(NllbIn)``): the committed configs are
checked against these (``tests/unit/export/test_configs.py``).
"""

from __future__ import annotations

from enum import StrEnum

# Every speech model reads 16 kHz mono float32 audio, and MMS-TTS speaks at 16 kHz.
SAMPLE_RATE = 16000

# ------------------------------------------------------------------------------------ models

WHISPER = "whisper"  # python: features, language detection, greedy decoding
NLLB = "nllb"  # python: tokenisation and beam search over the two graphs below, in-process
NLLB_ENCODER = "nllb_encoder"  # graph names (export reports); files nllb/1/encoder.onnx ...
NLLB_DECODER = "nllb_decoder"  # ... and decoder.onnx, no longer Triton models of their own
# The decoder's cross K/V and encoder mask axis when a source's beams share them (one per source)
NLLB_CROSS_SOURCES = "sources"
MMS_TTS_PREFIX = "mms_tts_"  # one graph per language: mms_tts_<ISO 639-3>
MMS_TTS_TOKENIZER = "mms_tts_tokenizer"  # python: serves each voice's TtsTokenizer spec
SILERO_VAD = "silero_vad"
PYANNOTE_SEGMENTATION = "pyannote_segmentation"
SPEAKER_EMBEDDING = "speaker_embedding"
GENDER = "gender"
SEPARATION = "separation"  # speech mask of a spectrogram (polydub.serving.separation)
SEPARATION_HTDEMUCS = "separation_htdemucs"  # HT-Demucs speech stem (polydub.serving.htdemucs)
MANIFEST = "polydub_manifest"  # python: serves manifest.json (polydub.manifest)


def mms_tts(language: str) -> str:
    """The MMS-TTS voice of one language (ISO 639-3): ``mms_tts_eng``."""
    return f"{MMS_TTS_PREFIX}{language}"


# ----------------------------------------------------------------------- python (BLS) models


class WhisperIn(StrEnum):
    AUDIO = "audio"
    LANGUAGE = "language"
    TASK = "task"
    MAX_NEW_TOKENS = "max_new_tokens"  # optional
    MIN_NEW_TOKENS = "min_new_tokens"  # optional


class WhisperOut(StrEnum):
    TEXT = "text"
    TOKENS = "tokens"
    SEGMENTS = "segments"
    DETECTED_LANGUAGE = "detected_language"
    LANGUAGE_PROBABILITY = "language_probability"
    AVG_LOGPROB = "avg_logprob"
    NO_SPEECH_PROB = "no_speech_prob"


class NllbIn(StrEnum):
    TEXT = "text"
    SRC_LANG = "src_lang"
    TGT_LANG = "tgt_lang"
    N_BEST = "n_best"  # optional
    MAX_LENGTH = "max_length"  # optional


class NllbOut(StrEnum):
    TRANSLATIONS = "translations"
    SCORES = "scores"
    TOKEN_IDS = "token_ids"


class TtsTokenizerIn(StrEnum):
    LANGUAGE = "language"


class TtsTokenizerOut(StrEnum):
    TOKENIZER = "tokenizer"


class ManifestIn(StrEnum):
    FORMAT = "format"


class ManifestOut(StrEnum):
    MANIFEST = "manifest"


# -------------------------------------------------------------------------------- ONNX graphs


class NllbEncoderIn(StrEnum):
    INPUT_IDS = "input_ids"
    ATTENTION_MASK = "attention_mask"


class NllbEncoderOut(StrEnum):
    LAST_HIDDEN_STATE = "last_hidden_state"  # for checks; plus cross_key.i / cross_value.i


class NllbDecoderIn(StrEnum):
    INPUT_IDS = "input_ids"
    ENCODER_ATTENTION_MASK = "encoder_attention_mask"  # plus past_* and cross_* per layer


class NllbDecoderOut(StrEnum):
    TOP_LOG_PROBS = "top_log_probs"
    TOP_IDS = "top_ids"  # plus new_* per layer: this step's K/V, not the whole cache


class WhisperEncoderIn(StrEnum):
    """The encoder graph (a file of the ``whisper`` model, run in its own onnxruntime session)."""

    INPUT_FEATURES = "input_features"


class WhisperEncoderOut(StrEnum):
    LAST_HIDDEN_STATE = "last_hidden_state"  # for checks; plus cross_key.i / cross_value.i


class WhisperDecoderIn(StrEnum):
    INPUT_IDS = "input_ids"  # plus past_* and cross_* per layer (layer_tensors)


class WhisperDecoderOut(StrEnum):
    LOGITS = "logits"  # plus present_* per layer


def layer_tensors(kind: str, layers: int) -> list[str]:
    """The per-layer K/V tensors of the Whisper and NLLB graphs, in graph order:
    ``<kind>_key.0``, ``<kind>_value.0``, ``<kind>_key.1``, ...; kind is ``cross``, ``past``,
    ``present`` (Whisper: past + this step) or ``new`` (NLLB: this step only). One tensor per
    layer: a [batch, layers, ...] stack costs a copy of the whole cache to build every step and
    one to slice each layer out of it."""
    return [f"{kind}_{part}.{i}" for i in range(layers) for part in ("key", "value")]


class MmsTtsIn(StrEnum):
    INPUT_IDS = "input_ids"
    ATTENTION_MASK = "attention_mask"
    LENGTH_SCALE = "length_scale"
    NOISE_SCALE = "noise_scale"
    NOISE_SCALE_DURATION = "noise_scale_duration"
    SEED = "seed"


class MmsTtsOut(StrEnum):
    WAVEFORM = "waveform"
    WAVEFORM_LENGTHS = "waveform_lengths"
    DURATIONS = "durations"


class VadIn(StrEnum):
    AUDIO = "audio"
    STATE = "state"


class VadOut(StrEnum):
    SPEECH_PROBS = "speech_probs"
    STATE_OUT = "state_out"


class SegmentationIn(StrEnum):
    WAVEFORM = "waveform"


class SegmentationOut(StrEnum):
    LOG_PROBS = "log_probs"


class EmbeddingIn(StrEnum):
    WAVEFORM = "waveform"
    WEIGHTS = "weights"


class EmbeddingOut(StrEnum):
    EMBEDDING = "embedding"


class GenderIn(StrEnum):
    WAVEFORM = "waveform"


class GenderOut(StrEnum):
    F0_HZ = "f0_hz"
    PERIODICITY = "periodicity"
    ENERGY_DB = "energy_db"


class SeparationIn(StrEnum):
    SPECTROGRAM = "spectrogram"  # [batch, 2 (real, imag), frames, bins]


class SeparationOut(StrEnum):
    SPEECH_MASK = "speech_mask"  # [batch, frames, bins] in [0, 1]


class HtDemucsIn(StrEnum):
    WAVEFORM = "waveform"  # [batch, channels, length] at 44.1 kHz
    SPECTROGRAM = "spectrogram"  # [batch, 2 * channels (real, imag), 2048, frames]


class HtDemucsOut(StrEnum):
    SPEECH_SPECTROGRAM = "speech_spectrogram"  # the vocals' spectrogram branch, same shape
    SPEECH_WAVEFORM = "speech_waveform"  # the vocals' waveform branch; the stem is their sum


# The python models' tensors by model: what their committed configs must declare, in order.
PYTHON_MODELS: dict[str, tuple[type[StrEnum], type[StrEnum]]] = {
    WHISPER: (WhisperIn, WhisperOut),
    NLLB: (NllbIn, NllbOut),
    MMS_TTS_TOKENIZER: (TtsTokenizerIn, TtsTokenizerOut),
    MANIFEST: (ManifestIn, ManifestOut),
}
