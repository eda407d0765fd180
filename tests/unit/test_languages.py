"""Languages as people write them: ISO 639-1, 639-3, 639-2/B and BCP-47 tags, answered as the
canonical ISO 639-3 code; unknown ones named with the closest supported code."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from polydub.errors import InvalidInput
from polydub.languages import check_served, get_language, resolve, suggest, unsupported_message
from polydub.schemas import JobOptions, LanguageOut, LanguagesOut


@pytest.mark.parametrize(
    ("tag", "code"),
    [
        ("spa", "spa"),
        ("es", "spa"),
        ("es-ES", "spa"),
        ("es_MX", "spa"),
        (" ES ", "spa"),
        ("spa_Latn", "spa"),  # FLORES-200, as NLLB writes it
        ("ger", "deu"),  # ISO 639-2/B
        ("de-CH", "deu"),
        ("sw", "swh"),  # the macrolanguage goes to the individual language the models speak
        ("swa", "swh"),
        ("iw", "heb"),  # a deprecated tag, through CLDR's aliases
        ("pt-BR", "por"),
        ("en-US", "eng"),
    ],
)
def test_tags_resolve_to_the_canonical_code(tag: str, code: str) -> None:
    language = resolve(tag)
    assert language is not None and language.code == code
    assert get_language(tag).code == code


@pytest.mark.parametrize("tag", ["xx", "zh", "zh-Hant-TW", "auto", "e", "", "{code}", "spanish!"])
def test_unknown_tags_resolve_to_none(tag: str) -> None:
    assert resolve(tag) is None


def test_unknown_names_its_tag_and_the_closest_code() -> None:
    assert suggest("spanish") == "spa"
    assert suggest("Itallian") == "ita"
    assert suggest("spx") == "spa"
    assert suggest("qqqqqq") is None
    message = unsupported_message("spanich")
    assert message.startswith("unsupported language 'spanich' (did you mean 'spa', Spanish?)")
    assert "supported: ben, ces" in message
    assert "did you mean" not in unsupported_message("qqqqqq")
    with pytest.raises(InvalidInput) as refused:
        get_language("fre nch")
    assert refused.value.code == "unsupported_language"
    assert "(did you mean 'fra', French?)" in refused.value.message


def test_check_served_names_the_missing_and_the_served() -> None:
    check_served(["spa"], {"spa", "fra"})
    with pytest.raises(InvalidInput) as refused:
        check_served(["spa", "ita"], {"spa", "fra"})
    assert refused.value.code == "language_not_served"
    assert refused.value.message == (
        "cannot dub into ita (Italian) with the models being served; served: fra, spa"
    )
    assert refused.value.detail == {"languages": ["ita"], "served": ["fra", "spa"]}


def test_job_options_answer_canonical_codes() -> None:
    options = JobOptions(target_languages=["es-ES,fr", "spa", "de_DE"], source_language="en-GB")
    assert options.target_languages == ["spa", "fra", "deu"]
    assert options.source_language == "eng"
    with pytest.raises(ValidationError) as same:
        JobOptions(target_languages=["en"], source_language="eng")
    assert same.value.errors()[0]["type"] == "same_language"
    with pytest.raises(ValidationError) as unknown:
        JobOptions(target_languages=["italiano"])
    error = unknown.value.errors()[0]
    assert error["type"] == "unsupported_language"
    # The template is filled in: the tag and the suggestion, no "{code!r}" left.
    assert error["msg"].startswith("unsupported language 'italiano' (did you mean 'ita'")


def test_targets_of_what_is_served() -> None:
    def language(code: str, *, translate: bool, synthesize: bool) -> LanguageOut:
        return LanguageOut(
            code=code,
            name=code,
            transcribe=True,
            translate=translate,
            synthesize=synthesize,
            dub_target=translate and synthesize,
        )

    served = LanguagesOut(
        auto_detect=True,
        models=[],
        languages=[
            language("spa", translate=True, synthesize=True),
            language("ita", translate=True, synthesize=False),
        ],
    )
    assert served.targets() == ["spa"]
    assert served.targets(subtitles_only=True) == ["spa", "ita"]
