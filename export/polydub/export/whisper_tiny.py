"""The ``tiny`` Whisper: a randomly initialised WhisperForConditionalGeneration with small dimensions
and a byte-level BPE tokenizer built offline with Whisper's real special tokens.

Same config class, same graphs, same tokenizer classes and token layout as the real checkpoints
(``<|endoftext|>``, ``<|startoftranscript|>``, language tokens, tasks, ``<|startoflm|>``,
``<|startofprev|>``, ``<|nocaptions|>``, ``<|notimestamps|>``, then ``<|0.00|>`` .. ``<|30.00|>``),
so everything downstream runs unchanged; only the transcripts are noise.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polydub.languages import LANGUAGES

SEED = 0
TINY_DIMS: dict[str, int] = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "num_mel_bins": 80,
}
BPE_VOCAB = 400  # 256 byte symbols + merges learned from the corpus below
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a test of the tiny whisper tokenizer",
    "one two three four five six seven eight nine ten",
    "dubbing video in many languages with speech recognition and translation",
    "hola mundo, bonjour le monde, hallo welt, ciao mondo, olá mundo",
]
# openai/whisper's non-speech symbols: suppressed during sampling (``suppress_tokens``).
_SYMBOLS = [
    *'"#()*+/:;<=>@[\\]^_`{|}~「」『』',
    *("<<", ">>", "<<<", ">>>", "--", "---", "-(", "-[", "('", '("', "((", "))"),
    *("(((", ")))", "[[", "]]", "{{", "}}", "♪♪", "♪♪♪"),
]
_MISC = set("♩♪♫♬♭♮♯")


def special_tokens() -> list[str]:
    """Whisper's special tokens in id order, <|notimestamps|> last (timestamps follow it)."""
    languages = [f"<|{lang.whisper}|>" for lang in LANGUAGES.values()]
    return [
        "<|startoftranscript|>",
        *languages,
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    return [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def build_tokenizer(out_dir: Path, vocab_size: int | None = None) -> Any:
    """A WhisperTokenizer (slow, pure python) saved to ``out_dir``; returns it.

    ``vocab_size``: pad the BPE vocabulary with filler tokens (never produced by encoding) so the
    whole vocabulary has this size, e.g. whisper-base's 51865 for benchmarks where the cost of
    the output projection and the logit rules must be the real one.
    """
    import json

    import transformers
    from tokenizers import ByteLevelBPETokenizer

    hf: Any = transformers  # untyped
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS, vocab_size=BPE_VOCAB, min_frequency=1, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        if vocab_size is not None:
            vocab_path = Path(tmp) / "vocab.json"
            vocab: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))
            # + <|endoftext|> (added by WhisperTokenizer), the special and timestamp tokens
            extra = 1 + len(special_tokens()) + len(timestamp_tokens())
            for i in range(vocab_size - extra - len(vocab)):
                vocab[f"<fill{i}>"] = len(vocab)
            vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
        tokenizer = hf.WhisperTokenizer(
            vocab_file=str(Path(tmp) / "vocab.json"),
            merges_file=str(Path(tmp) / "merges.txt"),
        )
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens()})
    tokenizer.add_tokens(timestamp_tokens())
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def suppress_tokens(tokenizer: Any) -> list[int]:
    """openai/whisper's ``non_speech_tokens`` for this vocabulary, plus the task/control tokens."""
    ids: set[int] = set()
    for symbol in _SYMBOLS + sorted(_MISC):
        for text in (symbol, " " + symbol):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1 or (symbol in _MISC and encoded):
                ids.add(encoded[0])
    for text in (" -", " '"):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    # A small vocabulary splits " ♪" into " " + bytes: never suppress the plain space.
    ids.discard(tokenizer.encode(" ", add_special_tokens=False)[0])
    for token in (
        "<|startoftranscript|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
    ):
        ids.add(tokenizer.convert_tokens_to_ids(token))
    return sorted(ids)


def build_model(tokenizer: Any, dims: Mapping[str, int] = TINY_DIMS) -> tuple[Any, Any]:
    """(WhisperForConditionalGeneration, GenerationConfig) with fixed-seed random weights;
    ``dims``: WhisperConfig sizes (the tiny ones, or e.g. whisper-base's for benchmarks)."""
    import torch
    import transformers

    hf: Any = transformers  # untyped
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    suppress = suppress_tokens(tokenizer)
    begin_suppress = [tokenizer.encode(" ", add_special_tokens=False)[0], eot]
    config = hf.WhisperConfig(
        vocab_size=len(tokenizer),
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        **dims,
    )
    torch.manual_seed(SEED)
    model = hf.WhisperForConditionalGeneration(config).eval()
    lang_to_id = {f"<|{lang.whisper}|>": ids(f"<|{lang.whisper}|>") for lang in LANGUAGES.values()}
    generation = hf.GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    model.generation_config = generation
    return model, generation
