"""How search sees text: words, and scripts written without spaces between words.

The indexes (migration 0005) and the queries must cut text the same way:
- a word is a run of letters and digits; everything else separates words (so
  `foo_bar.baz()` holds the words `foo`, `bar`, `baz`);
- Chinese, Japanese, Korean, Thai and the other scripts in `UNSEGMENTED` mark no word
  boundaries, so there every character counts on its own: PostgreSQL indexes each as a
  word (a search for `东京` is the phrase `东 京`), SQLite keeps such texts in a trigram
  index as well.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass

UNSEGMENTED: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x9FFF),  # CJK radicals and symbols, kana, Bopomofo, Hangul Jamo, CJK ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFFDC),  # half-width katakana and Hangul
    (0x20000, 0x3134F),  # CJK ideographs, extensions B to G
)
"""Code point ranges (inclusive) whose characters are words of their own."""

_STARTS = [low for low, _ in UNSEGMENTED]


def is_unsegmented(char: str) -> bool:
    code = ord(char)
    index = bisect.bisect_right(_STARTS, code) - 1
    return index >= 0 and code <= UNSEGMENTED[index][1]


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in ranges)


LETTER = rf"(?:(?![{_class(UNSEGMENTED)}])[^\W_])"
"""A letter or digit that is not of an unsegmented script (regular expression)."""
_WORD = re.compile(rf"(?=[^\W_])[{_class(UNSEGMENTED)}]|{LETTER}+")
"""A letter or digit of an unsegmented script alone, or a run of other letters and digits."""


def word_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each word of `text`, in order."""
    for found in _WORD.finditer(text):
        yield found.span()


def words(text: str) -> tuple[str, ...]:
    """The words of `text`, lower-cased, but for a letter whose lower case is longer (`İ` is
    `i` and a combining dot): kept, as the indexes fold it to one letter themselves."""
    return tuple(_lower(text[start:end]) for start, end in word_spans(text))


def _lower(word: str) -> str:
    return "".join(lower if len(lower := char.lower()) == 1 else char for char in word)


def word_pattern(term: Term) -> str:
    """A regular expression (case-insensitive) for the term's words one after another, each
    whole (the last possibly only begun, for a prefix), anything but letters and digits
    between them: what PostgreSQL's index matches, read from the raw text."""
    words = r"[\W_]+".join(map(re.escape, term.words))
    end = f"{LETTER}*" if term.prefix else f"(?!{LETTER})"
    return f"(?i)(?<!{LETTER}){words}{end}"


def edge_pattern(term: Term) -> str | None:
    """For a term of unsegmented scripts that starts or ends with another letter or digit
    (`Python写`): a regular expression (case-insensitive) for its text with a whole word at
    that end (or the start of one, for a prefix, and the rest of that word), as PostgreSQL's
    index finds it; None for other terms, found as typed."""
    text = " ".join(term.text.split())
    start = f"(?<!{LETTER})" if re.match(LETTER, text) else ""
    end = (f"{LETTER}*" if term.prefix else f"(?!{LETTER})") if re.search(f"{LETTER}$", text) else ""
    if not term.unsegmented or not (start or end):
        return None
    return f"(?i){start}{re.escape(text)}{end}"


@dataclass(frozen=True)
class Term:
    """One thing a search asks for: a word, a phrase, or a literal string such as `foo_bar.baz()`.

    `text` is what was typed (without quotes, a leading `-` or a trailing `*`); `words` are
    its words, which must follow one another. A literal term (one with characters other
    than letters, digits and spaces) must also appear exactly as typed, ignoring case.
    """

    text: str
    words: tuple[str, ...]
    exclude: bool = False
    prefix: bool = False
    """The last word may be the start of a longer one."""
    fragment: bool = False
    """Its text may be anywhere, inside words too (`UserNam` in `getUserName`): how a term is
    looked for again when its words found nothing (`Query.fragments`)."""

    @property
    def literal(self) -> bool:
        return any(not (char.isalnum() or char.isspace()) for char in self.text)

    @property
    def unsegmented(self) -> bool:
        return any(is_unsegmented(char) for char in self.text)


@dataclass(frozen=True)
class Query:
    """Every term must match, and none of the excluded ones."""

    terms: tuple[Term, ...]

    @property
    def included(self) -> tuple[Term, ...]:
        return tuple(term for term in self.terms if not term.exclude)

    @property
    def excluded(self) -> tuple[Term, ...]:
        return tuple(term for term in self.terms if term.exclude)

    def fragments(self) -> Query | None:
        """The query again with its included terms of `FRAGMENT_MIN` characters or more as
        fragments, for when its words find nothing; None if no term can be one. Terms of
        unsegmented scripts are left as they are: their characters are words already, so
        they match inside text anyway."""
        terms = tuple(
            Term(term.text, term.words, fragment=True)
            if not term.exclude and not term.unsegmented and len(term.text) >= FRAGMENT_MIN
            else term
            for term in self.terms
        )
        return Query(terms) if terms != self.terms else None


FRAGMENT_MIN = 3
"""Characters a fragment needs: a trigram index (PostgreSQL's pg_trgm) finds shorter ones
only by reading every text."""
