"""The search box's language: words (all must match), "a quoted phrase", -excluded, prefix*.

Everything else is taken literally: `foo_bar.baz()` and `example.com/docs` are strings to
find as typed. Parsing never fails; what it cannot use it drops (a term with no letter or
digit in it, such as `=>`, finds nothing and is left out).
"""

from __future__ import annotations

from models.search_text import Query, Term, words

MAX_TERMS = 32


def parse(text: str) -> Query:
    """The terms of `text`, in the order typed, at most `MAX_TERMS`."""
    terms: list[Term] = []
    position, end = 0, len(text)
    while position < end and len(terms) < MAX_TERMS:
        if text[position].isspace() or not text[position].isprintable():
            position += 1
            continue
        exclude = text[position] == "-" and position + 1 < end and not text[position + 1].isspace()
        if exclude:
            position += 1
        if text[position] == '"':
            closing = text.find('"', position + 1)
            closing = end if closing == -1 else closing
            body, position = text[position + 1 : closing], closing + 1
            prefix = position < end and text[position] == "*"
            while position < end and text[position] == "*":
                position += 1
        else:
            start = position
            while position < end and not text[position].isspace() and text[position].isprintable():
                position += 1
            body = text[start:position]
            prefix = body.endswith("*")
            body = body.rstrip("*")
        body = " ".join("".join(char if char.isprintable() else " " for char in body).split())
        found = words(body)
        if found:
            terms.append(Term(text=body, words=found, exclude=exclude, prefix=prefix))
    return Query(tuple(terms))
