"""What PII looks like, model-free: the enricher's safety net and the leak audit's eyes.

``find_pii(text)`` returns the spans of anything shaped like an email address, a US SSN,
a payment card number (13 to 19 digits passing the Luhn check) or a phone number:

- phone numbers are found by ``phonenumbers``' matcher (a leading ``00`` is read as the
  international ``+``), plus national formats with a trunk ``0`` (``020 7946 0958``,
  ``01 42 68 53 00``); an extension (``ext. 12``, ``x1234``) goes with its number. A bare
  run of digits counts only after a word that says "phone" (``Tel:``, ``hotline``...):
  documents are full of bare ids (accession, kit, sample numbers) that must survive;
- an SSN is 3-2-4 digits split by dashes, dots or spaces, or 9 bare digits after "SSN";
- values broken over two lines (``212-555-`` then ``0142``) still match: line breaks
  count as spaces, and a separator may be followed by one.

The spans index the text given (no normalisation changes lengths) and never overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PII_KINDS = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_SSN = re.compile(r"(?<![\d.-])\d{3}([-. ]) ?\d{2}\1 ?\d{4}(?![\d-]|\.\d)")
_SSN_BARE = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\b\D{0,20}?(?<!\d)(\d{9})(?!\d)")
# Digits and the separators people put between them (not "/": it separates two numbers).
_NUMBER_RUN = re.compile(r"\+?\(?\d(?:[\d .()\-]*\d)?")
_NATIONAL_PHONE = re.compile(r"(?<![\d+])\(?0\d{1,4}\)?(?:[ .-] ?\d{2,4}){2,4}(?!\d)")
_EXTENSION = re.compile(r"^,? ?(?:ext\.?|extension|x) ?\d{1,5}\b", re.IGNORECASE)
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:phone|tel|telephone|mobile|cell|fax|hotline|call|dial|contact)\b\W{0,3}$")
_CARD_DIGITS = range(13, 20)
_MIN_PHONE_DIGITS = 7


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    kind: str


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def luhn_valid(number: str) -> bool:
    """The check digit of a card number, separators ignored."""
    total = 0
    for position, char in enumerate(reversed(digits(number))):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def find_pii(text: str) -> list[Span]:
    """Non-overlapping spans of PII-shaped text, in order; the longer wins an overlap."""
    flat = re.sub(r"\s", " ", text)  # same length: spans found in it index ``text``
    found = [Span(m.start(), m.end(), "EMAIL") for m in _EMAIL.finditer(flat)]
    found += [Span(m.start(), m.end(), "SSN") for m in _SSN.finditer(flat)]
    found += [Span(m.start(1), m.end(1), "SSN") for m in _SSN_BARE.finditer(flat)]
    for match in _NUMBER_RUN.finditer(flat):
        run = digits(match.group())
        if len(run) in _CARD_DIGITS and luhn_valid(run):
            found.append(Span(match.start(), match.end(), "CREDIT_CARD"))
    found += _phones(flat)
    return _without_overlaps(found)


def _phones(flat: str) -> list[Span]:
    import phonenumbers

    # " +" for "00": the same length, so the matcher's offsets still index the text.
    # Only before a country code and a separator: "0012345678" is a kit number, not a call abroad.
    dialable = re.sub(r"(?<![\d+])00(?=[1-9]\d{0,2}[ .-])", " +", flat)
    spans = []
    for match in phonenumbers.PhoneNumberMatcher(dialable, "US", leniency=phonenumbers.Leniency.POSSIBLE):
        raw = match.raw_string
        formatted = raw.lstrip().startswith("+") or bool(re.search(r"\d[ .()\-]+\d|^\(", raw))
        if len(digits(raw)) >= _MIN_PHONE_DIGITS and (formatted or _PHONE_CONTEXT.search(flat[: match.start])):
            start = match.start + (len(raw) - len(raw.lstrip()))
            if flat[start - 1 : start + 1] == "00":  # the "+" stands for the second 0 of "00"
                start -= 1
            spans.append(Span(start, match.end, "PHONE"))
    for match in _NATIONAL_PHONE.finditer(flat):
        if len(digits(match.group())) >= 9:
            spans.append(Span(match.start(), match.end(), "PHONE"))
    # An extension belongs to its number.
    return [Span(s.start, s.end + (m.end() if (m := _EXTENSION.match(flat[s.end:])) else 0), s.kind) for s in spans]


def _without_overlaps(spans: list[Span]) -> list[Span]:
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start - s.end):  # longest first
        if all(span.end <= other.start or other.end <= span.start for other in kept):
            kept.append(span)
    return sorted(kept)
