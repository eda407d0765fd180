"""The non-weight files of a transformers Whisper checkpoint, derived from a CTranslate2 folder:
tokenizer files from its ``tokenizer.json`` + ``vocabulary.txt``, ``generation_config.json``
from its ``config.json`` (``suppress_ids``, ``suppress_ids_begin``, ``lang_ids``,
``alignment_heads``). Used by ``ct2_whisper.convert``.

The CTranslate2 vocabulary (one token a line, by id) is the authority for the ids: the
``tokenizer.json`` of older Whisper conversions stops at ``<|notimestamps|>``, while the model
also has the 1501 timestamp tokens ``<|0.00|>`` .. ``<|30.00|>`` after it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from polydub.errors import ConfigurationError

__all__ = ["ct2_vocabulary", "write_generation_config", "write_tokenizer"]

EOT = "<|endoftext|>"
# openai/whisper's max_initial_timestamp of 1.0 s, in 0.02 s timestamp steps
MAX_INITIAL_TIMESTAMP_INDEX = 50
MODEL_MAX_LENGTH = 1024  # what the openai/whisper-* tokenizer configs declare


def _invalid(message: str) -> ConfigurationError:
    return ConfigurationError(message, code="ct2_whisper_invalid")


def ct2_vocabulary(ct2_dir: Path) -> list[str]:
    """Tokens by id: ``vocabulary.json`` (newer converters) or ``vocabulary.txt``."""
    if (ct2_dir / "vocabulary.json").is_file():
        tokens: list[str] = json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
        return tokens
    # split on "\n" only: a token may be empty (Whisper's id 50256) or hold other line breaks
    lines = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _runs(tokens: list[str], special: set[str]) -> list[tuple[bool, list[str]]]:
    """Consecutive tokens grouped by specialness, in id order (adding them keeps the ids)."""
    runs: list[tuple[bool, list[str]]] = []
    for token in tokens:
        if runs and runs[-1][0] == (token in special):
            runs[-1][1].append(token)
        else:
            runs.append((token in special, [token]))
    return runs


def write_tokenizer(ct2_dir: Path, out_dir: Path, vocab_size: int) -> Any:
    """Save a WhisperTokenizer (slow files + the fast ``tokenizer.json``) with exactly the ids of
    the CTranslate2 vocabulary into ``out_dir``; returns the slow tokenizer."""
    import transformers

    hf: Any = transformers  # untyped
    source: dict[str, Any] = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    bpe: dict[str, Any] = source.get("model") or {}
    if bpe.get("type") != "BPE":
        raise _invalid(f"{ct2_dir}/tokenizer.json is not a byte-level BPE tokenizer")
    base: dict[str, int] = bpe["vocab"]
    # tokenizers < 0.20 writes a merge as "a b", newer ones as ["a", "b"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    vocabulary = ct2_vocabulary(ct2_dir)
    if len(vocabulary) != vocab_size:
        raise _invalid(f"the vocabulary has {len(vocabulary)} tokens, the model {vocab_size}")
    added: dict[int, str] = {t["id"]: t["content"] for t in source.get("added_tokens", [])}
    for token, index in [*base.items(), *((t, i) for i, t in added.items())]:
        if index >= vocab_size or vocabulary[index] != token:
            raise _invalid(f"tokenizer.json gives {token!r} id {index}, the vocabulary disagrees")
    special = {t["content"] for t in source.get("added_tokens", []) if t.get("special")}
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(base, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tokenizer = hf.WhisperTokenizer(
            vocab_file=str(vocab_file),
            merges_file=str(merges_file),
            pad_token=EOT,
            model_max_length=MODEL_MAX_LENGTH,
        )
    for is_special, run in _runs(vocabulary[len(tokenizer) :], special):
        if is_special:
            tokenizer.add_special_tokens(
                {"additional_special_tokens": run}, replace_additional_special_tokens=False
            )
        else:
            tokenizer.add_tokens(run)
    if tokenizer.get_vocab() != {token: index for index, token in enumerate(vocabulary)}:
        raise _invalid("the rebuilt tokenizer's ids differ from the CTranslate2 vocabulary")
    tokenizer.save_pretrained(str(out_dir))
    # the fast tokenizer, converted once here rather than on every load
    hf.WhisperTokenizerFast.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    return tokenizer


def write_generation_config(
    tokenizer: Any, ct2_config: dict[str, Any], max_length: int, out_dir: Path
) -> Any:
    """Whisper's generation config (the one the published checkpoints carry) from the
    CTranslate2 config and the token ids; saved into ``out_dir`` and returned."""
    import transformers

    hf: Any = transformers  # untyped
    vocab: dict[str, int] = tokenizer.get_vocab()

    def need(token: str) -> int:
        if token not in vocab:
            raise _invalid(f"the vocabulary has no {token}: not a Whisper tokenizer")
        return vocab[token]

    for key in ("suppress_ids", "suppress_ids_begin"):
        if not isinstance(ct2_config.get(key), list):
            raise _invalid(f"the CTranslate2 config.json has no {key} list")
    eot = need(EOT)
    lang_ids: list[int] = list(ct2_config.get("lang_ids") or [])
    fields: dict[str, Any] = {
        "decoder_start_token_id": need("<|startoftranscript|>"),
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": max_length,
        "is_multilingual": bool(lang_ids),
        "no_timestamps_token_id": need("<|notimestamps|>"),
        "prev_sot_token_id": need("<|startofprev|>"),
        "suppress_tokens": list(ct2_config["suppress_ids"]),
        "begin_suppress_tokens": list(ct2_config["suppress_ids_begin"]),
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "return_timestamps": False,
    }
    if lang_ids:
        fields["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        fields["task_to_id"] = {"transcribe": need("<|transcribe|>"),
                                "translate": need("<|translate|>")}  # fmt: skip
    if ct2_config.get("alignment_heads"):
        fields["alignment_heads"] = [list(head) for head in ct2_config["alignment_heads"]]
    generation = hf.GenerationConfig(**fields)
    generation.save_pretrained(str(out_dir))
    return generation
