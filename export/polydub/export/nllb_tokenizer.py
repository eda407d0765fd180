"""An NLLB-200 tokenizer built offline for the ``tiny`` preset.

The real tokenizer is a 256k-piece sentencepiece model plus the FLORES-200 language codes as
special tokens. Offline we train a small sentencepiece model on generated multilingual text (real
phrases plus pseudo-words in every script polydub supports) and wrap it in the same
``NllbTokenizer`` class, with the same vocabulary layout (``<s> <pad> </s> <unk>``, pieces,
language codes, ``<mask>``), so everything downstream (``tokenizer.json``, ids of the special tokens,
language-code prefixes) behaves as with the real one; only the pieces are fewer.
"""

from __future__ import annotations

import importlib
import io
import random
import tempfile
from pathlib import Path
from typing import Any

from polydub.languages import LANGUAGES

TINY_SPM_VOCAB = 800  # sentencepiece pieces; the tokenizer adds 4 specials, 202 languages, <mask>
SEED = 20240611

# A few real phrases so that common words become single pieces.
PHRASES = {
    "eng_Latn": ["Hello, how are you today?", "The weather is nice and the film starts at eight."],
    "spa_Latn": [
        "Hola, ¿cómo estás hoy?",
        "El tiempo es agradable y la película empieza a las ocho.",
    ],
    "fra_Latn": ["Bonjour, comment allez-vous aujourd'hui ?", "Il fait beau et le film commence."],
    "deu_Latn": [
        "Hallo, wie geht es dir heute?",
        "Das Wetter ist schön und der Film beginnt um acht.",
    ],
    "ita_Latn": ["Ciao, come stai oggi?", "Il tempo è bello e il film comincia alle otto."],
    "por_Latn": ["Olá, como você está hoje?", "O tempo está bom e o filme começa às oito."],
    "rus_Cyrl": ["Привет, как дела сегодня?", "Погода хорошая, и фильм начинается в восемь."],
    "ukr_Cyrl": ["Привіт, як справи сьогодні?", "Погода гарна, і фільм починається о восьмій."],
    "ell_Grek": ["Γεια σου, τι κάνεις σήμερα;", "Ο καιρός είναι ωραίος."],
    "heb_Hebr": ["שלום, מה שלומך היום?", "מזג האוויר נעים."],
    "hin_Deva": ["नमस्ते, आज आप कैसे हैं?", "मौसम अच्छा है।"],
    "ben_Beng": ["নমস্কার, আজ আপনি কেমন আছেন?"],
    "tam_Taml": ["வணக்கம், இன்று நீங்கள் எப்படி இருக்கிறீர்கள்?"],
    "tha_Thai": ["สวัสดี วันนี้คุณเป็นอย่างไรบ้าง"],
    "kor_Hang": ["안녕하세요, 오늘 어떻게 지내세요?"],
    "tur_Latn": ["Merhaba, bugün nasılsın?"],
    "vie_Latn": ["Xin chào, hôm nay bạn thế nào?"],
    "pol_Latn": ["Cześć, jak się dzisiaj masz?"],
    "ces_Latn": ["Ahoj, jak se dnes máš?"],
    "hun_Latn": ["Szia, hogy vagy ma?"],
    "yor_Latn": ["Ẹ n lẹ, báwo ni o ṣe wà lónìí?"],
}

# Letters per script (by the FLORES code's script suffix) to make pseudo-words from.
_LATIN = "abcdefghijklmnopqrstuvwxyzáàâäãåçéèêëíìîïñóòôöõúùûüýÿßćčďěłńňőřśšťůűźżşğıđơưạẹọụṣ"
SCRIPTS = {
    "Latn": _LATIN,
    "Cyrl": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяіїєґ",
    "Grek": "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ",
    "Hebr": "אבגדהוזחטיכלמנסעפצקרשתךםןףץ",
    "Deva": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसहािीुूेैोौंः्",
    "Beng": "অআইঈউঊএঐওঔকখগঘচছজঝটঠডঢণতথদধনপফবভমযরলশষসহািীুূেৈোৌং্",
    "Taml": "அஆஇஈஉஊஎஏஐஒஓஔகஙசஞடணதநபமயரலவழளறனாிீுூெேைொோௌ்",
    "Thai": "กขคฆงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮะาำิีึืุูเแโใไ่้๊๋",
    "Hang": "가나다라마바사아자차카타파하고노도로모보소오조초코토포호구누두루무부수우주추쿠투푸후",
}


def training_text(sentences_per_language: int = 40) -> list[str]:
    """Deterministic multilingual text: the phrases above plus pseudo-sentences per script."""
    rng = random.Random(SEED)
    lines: list[str] = []
    for phrases in PHRASES.values():
        lines.extend(phrases * 3)
    codes = sorted({lang.nllb for lang in LANGUAGES.values()} | set(PHRASES))
    for code in codes:
        letters = SCRIPTS[code.split("_")[1]]
        for _ in range(sentences_per_language):
            words = [
                "".join(rng.choice(letters) for _ in range(rng.randint(1, 7)))
                for _ in range(rng.randint(3, 12))
            ]
            lines.append(" ".join(words) + rng.choice([".", "?", "!", ","]))
    return lines


def train_sentencepiece(path: Path, vocab_size: int = TINY_SPM_VOCAB) -> Path:
    """A unigram sentencepiece model with NLLB's special-id layout (unk=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def _use_compatible_protobuf_schema() -> None:
    """Let transformers' slow->fast conversion parse the sentencepiece model.

    sentencepiece 0.2.3 ships a ``sentencepiece_model_pb2`` generated for protobuf 7, which refuses
    to load under the protobuf 6 that tritonclient and nvidia-pytriton pin; transformers bundles
    the same schema generated for protobuf >= 4, so the converter uses that one instead.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    except Exception:
        from transformers.utils import sentencepiece_model_pb2_new

        # importlib: ``transformers.convert_slow_tokenizer`` as an attribute is the function.
        convert: Any = importlib.import_module("transformers.convert_slow_tokenizer")
        convert.import_protobuf = lambda error_message="": sentencepiece_model_pb2_new


def build_tiny_tokenizer() -> Any:
    """``NllbTokenizerFast`` over a freshly trained tiny sentencepiece model, all 202 FLORES codes."""
    from transformers import NllbTokenizer, NllbTokenizerFast

    _use_compatible_protobuf_schema()
    with tempfile.TemporaryDirectory(prefix="nllb-tiny-spm-") as tmp:
        spm_path = train_sentencepiece(Path(tmp) / "sentencepiece.bpe.model")
        # The default special tokens are the 202 FLORES-200 codes, as in the real checkpoint.
        slow = NllbTokenizer(vocab_file=str(spm_path), src_lang="eng_Latn", legacy_behaviour=False)
        slow.save_pretrained(tmp)
        fast = NllbTokenizerFast.from_pretrained(tmp, src_lang="eng_Latn", legacy_behaviour=False)
    missing = [lang.nllb for lang in LANGUAGES.values() if lang.nllb not in fast.get_vocab()]
    if missing:
        raise RuntimeError(f"tiny NLLB tokenizer lacks language codes {missing}")
    return fast
