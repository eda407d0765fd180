"""MMS-TTS tokenisation (``polydub.serving.tts_tokenizer``): normalisation, blank interleaving as
transformers' VitsTokenizer does it, and the tokenizer spec the tiny export writes, round-tripped."""

from __future__ import annotations

import pytest

from polydub.export.mms_tts import LICENSE, tiny_tokenizer, tiny_vocab
from polydub.serving.tts_tokenizer import TtsTokenizer
from tests.unit.tiny_exports import TTS_HOP, TTS_MODEL

pytestmark = pytest.mark.unit


def test_normalisation_lowercases_strips_and_collapses() -> None:
    tok = TtsTokenizer("eng", tiny_vocab("eng"))
    assert (
        tok.normalize_text("  Hello,\n\tWORLD!!  it’s  ok — fine ") == "hello world it's ok - fine"
    )
    assert tok.normalize_text("Café Müller") == "cafe muller"  # accent-free base when absent
    assert tok.normalize_text("¡¿?!… 123") == ""


def test_normalisation_keeps_language_letters_and_composes() -> None:
    tok = TtsTokenizer("spa", tiny_vocab("spa"))
    decomposed = "Nin\u0303o Pe\u0301rez"  # as some translators emit it
    assert tok.normalize_text(decomposed) == "niño pérez"


def test_encode_interleaves_blank_and_matches_vits_tokenizer() -> None:
    hf_tokenizer = tiny_tokenizer("fra")
    tok = TtsTokenizer("fra", tiny_vocab("fra"))
    for text in ["Ça va très bien", "l'œuvre d'art", "Bonjour le monde"]:
        assert tok.encode(text) == hf_tokenizer(text)["input_ids"], text
    ids = tok.encode("ab")
    vocab = tiny_vocab("fra")
    assert ids == [0, vocab["a"], 0, vocab["b"], 0]
    assert tok.encode("...") == []
    assert TtsTokenizer("fra", vocab, add_blank=False).encode("ab") == [vocab["a"], vocab["b"]]


def test_tokenizer_spec_roundtrips(tts_spec: TtsTokenizer) -> None:
    assert tts_spec == TtsTokenizer.from_json(tts_spec.to_json())
    assert (tts_spec.language, tts_spec.model, tts_spec.license) == ("eng", TTS_MODEL, LICENSE)
    assert (tts_spec.sampling_rate, tts_spec.hop_length, tts_spec.add_blank) == (
        16_000,
        TTS_HOP,
        True,
    )
    assert tts_spec.vocab == tiny_vocab("eng") and tts_spec.vocab["_"] == 0
