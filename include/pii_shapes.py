"""What PII looks like, model-free: the enricher's own recognizer and safety net, and the leak
audit's eyes.

``find_pii(text)`` returns the spans of anything shaped like an email address, a US SSN,
a payment card number or a phone number:

- phone numbers: each run of digit groups is tried, longest first from each group, with
  ``phonenumbers.parse``: with its ``+`` or ``00`` country code, with a trunk ``0`` in the
  main European regions (``020 7946 0958``, ``01 42 68 53 00``), else as a North American
  number; an extension (``ext. 12``, ``x1234``) goes with its number, and a number never
  takes in the rest of a date, a time or a quantity that follows it. A bare run of digits,
  or a number of fewer than 10 digits without a country code, counts only after a word
  that says "phone" (``Tel:``, ``hotline``...): documents are full of ids of those shapes
  (accession, kit, subject numbers) that must survive. Data is not a phone: its digit
  groups must break where its country prints numbers (``phonenumbers``' formats for the
  region, compared from the right: ``23646 45190``, an ISBN, a version or a decimal do not),
  and a number inside a longer run of numbers (a table row, a matrix, a hex dump) counts only
  after a phone word. A number that a table cell cut in two (its head ends a row, the rest
  opens the next paragraph) is found when the two parts make one;
- an SSN is 3-2-4 digits split by dashes, dots or spaces, or 9 bare digits in a table
  column headed "SSN", within a few lines after the word, or right next to other PII;
- a card number is printed in card groupings (4-4-4-4, Amex's 4-6-5) or as 13 to 19 bare
  digits, and passes the Luhn check;
- values broken over two lines (``212-555-`` then ``0142``) still match: line breaks
  count as spaces, and a separator may be followed by one.

The spans index the text given (no normalisation changes lengths) and never overlap.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

PII_KINDS = ("EMAIL", "PHONE", "SSN", "CREDIT_CARD")

# The top-level domain is letters: "…example.net0044 20 7946 0902" is an address glued to a phone number.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}")
# Where a separator may be followed by a line break (read as spaces: one, or two for a CRLF).
_BREAK = " {0,2}"
_SSN = re.compile(rf"(?<![\d.-])\d{{3}}([-. ]){_BREAK}\d{{2}}\1{_BREAK}\d{{4}}(?![\d-]|\.\d)")
_NINE_DIGITS = re.compile(r"(?<![\d-])\d{9}(?![\d-])")
# An SSN is asked for by name, or as the taxpayer id of a W-9.
_SSN_WORD = re.compile(r"(?i)\b(?:ssn|social security|tin|taxpayer|tax id(?:entifier)?|w-9)\b")
_SSN_WORD_REACH = 200
_MARKER = re.compile(r"\[REDACTED:[A-Z_]+\]")
# A phone number a table cell cut in two: its head ends the row, the rest opens the next paragraph.
_SPLIT_PHONE = re.compile(
    r"(?P<head>(?:\+|00)\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){0,2}|\(\d{3}\))[ \t]*(?:\|[ \t]*)*\r?\n\s*"
    r"(?P<tail>\d[\d .-]{4,}\d)"
)
# Card numbers as printed: 4-4-4-4 (and up to 3 more), Amex's 4-6-5, or 13 to 19 bare digits.
# A separator may be followed by a line break. Each is tried on its own (a 16-digit card followed by a
# list number is not a 19-digit one).
_CARDS = tuple(re.compile(rf"(?<![\d-]){shape}(?![\d-])") for shape in (
    rf"\d{{4}}(?:[ -]{_BREAK}\d{{4}}){{3}}", rf"\d{{4}}(?:[ -]{_BREAK}\d{{4}}){{3}}[ -]\d{{1,3}}",
    rf"\d{{4}}[ -]{_BREAK}\d{{6}}[ -]{_BREAK}\d{{5}}", r"\d{13,19}"))
# Not inside a word (NCT01234567) or another number.
_PHONE_RUN = re.compile(r"(?<![A-Za-z0-9+])(?:\+|00(?=[1-9]))?\(?\d(?:(?:[\d ()\-]|\.(?=\d))*\d)?")
_DATE = re.compile(r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}[./-]\d{1,2}[./-]\d{1,2}")
_DIGIT_GROUP = re.compile(r"\(?\d+\)?")
_EXTENSION = re.compile(r"^,? ?(?:ext\.?|extension|x) ?\d{1,5}\b", re.IGNORECASE)
# Where a number with a trunk 0 (020 7946 0958, 01 42 68 53 00) is tried as a national number.
_TRUNK_REGIONS = ("GB", "FR", "DE", "AU", "IE", "NL", "IT", "ES", "IN")
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:phone|tel|telephone|mobile|cell|fax|hotline|call|dial|contact)\b\W{0,3}$")
# What may not follow a phone number: the rest of a date, a time, an id ("18/09/2025",
# "28-Nov-2025", "14:00"); a "/" before another number is fine ("212-555-0142/212-555-0199").
_CUT_END = re.compile(r"[-.:][0-9A-Za-z]|/(?!\+|\(?\d{2,}[ .)-])")
_UNIT = re.compile(r" ?(?:mg|g|kg|mL|ml|L|µg|mcg|°|%|units?|mmHg|IU|h|min|days?|weeks?)\b")
_SSN_HEADER = re.compile(r"(?i)\b(?:ssn|social security)\b")
_PHONE_HEADER = re.compile(r"(?i)\b(?:phone|tel|telephone|mobile|cell|fax|contact number)\b")
_SSN_CELL = re.compile(r"\d{3}[-. ]?\d{2}[-. ]?\d{4}")
# A closing parenthesis before any opening one: the number follows a list item or a call ("1) -2147...").
_UNOPENED = re.compile(r"^[^(]*\)")
# A decimal fraction: a lone 0, its point, digits.
_DECIMAL = re.compile(r"^\(?0[.,]\d")
# A reference is not PII, whatever its digits look like: an ISBN-10 or -13 as printed (hyphenated, its
# last group the one check character) or after the word, whose check digit holds; a DOI
# (10.<registrant>/<id>).
# Printed without the word, only with hyphens: "+61 2 5550 9098 3" (a phone, then a list number) has an
# ISBN-10's groups and, one time in eleven, its check digit.
_ISBNS = (re.compile(r"(?<![\w-])(?P<number>(?:97[89]-)?\d{1,5}-\d{1,7}-\d{1,7}-[\dX])(?![\w-])"),
          re.compile(r"(?i:isbn(?:-1[03])?:?) ?(?P<number>(?:97[89][- ]?)?\d[\d -]{7,12}[\dX])(?![\w-])"))
_DOI = re.compile(r"\b10\.\d{4,9}/\S+?(?=[.,;)]*(?:\s|$))")
_MIN_PHONE_DIGITS = 7
_MAX_PHONE_DIGITS = 15  # E.164
_NANP_DIGITS = 10  # area code and number


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
    """Non-overlapping spans of PII-shaped text, in order (overlaps: see ``_without_overlaps``)."""
    flat = re.sub(r"\s", " ", text)  # same length: spans found in it index ``text``
    found = [Span(m.start(), m.end(), "EMAIL") for m in _EMAIL.finditer(flat)]
    # The numbers are looked for with the e-mail addresses blanked: their digits are no number, and a
    # number glued to one (an address, then a phone, with no space) stands alone.
    for email in found:
        flat = f"{flat[: email.start]}{' ' * (email.end - email.start)}{flat[email.end :]}"
    found += [Span(m.start(), m.end(), "SSN") for m in _SSN.finditer(flat)]
    found += _ssn_columns(text)
    found += [Span(m.start(), m.end(), "CREDIT_CARD")
              for card in _CARDS for m in card.finditer(flat) if luhn_valid(m.group())]
    found += _phones(flat) + _phones_split_by_layout(text) + _phone_columns(text, flat)
    # Nine bare digits are an SSN after the word (a table's header may be a few rows up) or
    # right next to other PII (a ledger line: subject, SSN, card).
    beside = [(s.start, s.end) for s in found] + [m.span() for m in _MARKER.finditer(flat)]
    words = _MARKER.sub(lambda marker: " " * len(marker.group()), flat)  # "[REDACTED:SSN]" is no word for SSN
    for match in _NINE_DIGITS.finditer(flat):
        start, end = match.span()
        if _SSN_WORD.search(words[max(0, start - _SSN_WORD_REACH) : start]) or any(
            0 <= start - e <= 2 or 0 <= s - end <= 2 for s, e in beside
        ):
            found.append(Span(start, end, "SSN"))
    references = _references(flat)
    return _without_overlaps([span for span in found if span.kind == "EMAIL" or not any(
        start < span.end and span.start < end for start, end in references)])


def isbn_valid(number: str) -> bool:
    """The check character of an ISBN-10 (weights 10 to 1, mod 11, X for 10) or an ISBN-13 (weights
    1 and 3, mod 10), separators ignored."""
    chars = re.sub(r"[^\dX]", "", number.upper())
    if len(chars) == 10 and chars[:9].isdigit():
        values = [int(c) for c in chars[:9]] + [10 if chars[9] == "X" else int(chars[9])]
        return sum(weight * value for weight, value in zip(range(10, 0, -1), values)) % 11 == 0
    if len(chars) == 13 and chars.isdigit() and chars.startswith(("978", "979")):
        return sum(int(c) * (3 if position % 2 else 1) for position, c in enumerate(chars)) % 10 == 0
    return False


def _references(flat: str) -> list[tuple[int, int]]:
    """Where the text cites something: ISBNs whose check character holds, and DOIs."""
    isbns = [m.span("number") for shape in _ISBNS for m in shape.finditer(flat) if isbn_valid(m["number"])]
    return isbns + [m.span() for m in _DOI.finditer(flat)]


def _ssn_columns(text: str) -> list[Span]:
    """Nine digits in a Markdown table column headed "SSN": the header is their context."""
    return [Span(start, end, "SSN") for start, end in _column_cells(text, _SSN_HEADER)
            if _SSN_CELL.fullmatch(text[start:end])]


def _phone_columns(text: str, flat: str) -> list[Span]:
    """Numbers in a Markdown table column headed like a phone ("Phone", "Fax"): the header names
    them, as a phone word before a number does (read in ``flat``, ``text`` as ``find_pii`` reads it)."""
    return [Span(start, end, "PHONE") for start, end in _column_cells(text, _PHONE_HEADER)
            if _is_phone(flat, start, end, named=True)]


def _column_cells(text: str, header: re.Pattern) -> list[tuple[int, int]]:
    """The spans of the non-empty cells of Markdown table columns whose header matches ``header``."""
    spans: list[tuple[int, int]] = []
    columns: list[bool] = []  # per column: does its header match?
    offset = 0
    for line in text.split("\n"):
        if not line.startswith("|"):
            columns = []
        elif not columns:
            columns = [bool(header.search(cell)) for cell in line.split("|")]
        elif any(columns):
            position = offset
            for number, cell in enumerate(line.split("|")):
                value = cell.strip()
                if value and number < len(columns) and columns[number]:
                    start = position + cell.index(value)
                    spans.append((start, start + len(value)))
                position += len(cell) + 1
        offset += len(line) + 1
    return spans


def _phones_split_by_layout(text: str) -> list[Span]:
    spans = []
    for match in _SPLIT_PHONE.finditer(text):
        joined = f"{match['head']} {match['tail']}"
        if _is_phone(joined, 0, len(joined)):
            spans += [Span(*match.span("head"), "PHONE"), Span(*match.span("tail"), "PHONE")]
    return spans


def _phones(flat: str) -> list[Span]:
    """Phone numbers among the runs of digit groups: at each group, the longest run of groups from
    there that ``phonenumbers`` parses as a possible number is one, and the search goes on after it.
    So a number followed by a time (``+44 20 7946 0337 14``) or preceded by an id is still found."""
    spans = []
    for run in _PHONE_RUN.finditer(flat):
        groups = list(_DIGIT_GROUP.finditer(run.group()))
        context = bool(_PHONE_CONTEXT.search(flat[max(0, run.start() - 24) : run.start()]))
        first = 0
        while first < len(groups):
            for last in range(len(groups), first, -1):
                start, end = run.start() + groups[first].start(), run.start() + groups[last - 1].end()
                # A number among more plain numbers is data (a table row, a matrix, a hex dump),
                # unless a phone word says otherwise: a phone may stand beside a time or a date
                # ("+44 20 7946 0337 14", "+49 30 4884108 2025-12-11"), not in a row of values.
                if not context and _among_numbers(flat, run.start(), start, run.end(), end):
                    continue
                if run.group().startswith(("+", "00")) and first == 0:
                    start = run.start()
                if _is_phone(flat, start, end):
                    end += m.end() if (m := _EXTENSION.match(flat[end:])) else 0  # an extension goes with it
                    spans.append(Span(start, end, "PHONE"))
                    first = last
                    break
            else:
                first += 1
    return spans


# Plain numbers beside a candidate, around it in its run, that make it one value of a row.
_PLAIN_NUMBER = re.compile(r"(?<!\S)\d+(?!\S)")
_NUMBERS_OF_A_ROW = 3


def _among_numbers(flat: str, run_start: int, start: int, run_end: int, end: int) -> bool:
    """Whether the run holds, beside the candidate, at least three more plain numbers (space-separated
    digits, not a date or a time)."""
    beside = flat[run_start:start] + " " + flat[end:run_end]
    return len(_PLAIN_NUMBER.findall(beside)) >= _NUMBERS_OF_A_ROW


def _is_phone(flat: str, start: int, end: int, *, named: bool = False) -> bool:
    """Whether ``flat[start:end]`` is a phone number; ``named``: a table column's header says it is one."""
    import phonenumbers

    candidate = flat[start:end]
    count = len(digits(candidate))
    if count < _MIN_PHONE_DIGITS or count > _MAX_PHONE_DIGITS or _DATE.search(candidate):
        return False
    # A number is not cut out of a longer dash- or dot-joined one (a date, an id), and only an
    # area code or a trunk "(0)" stands in parentheses.
    if _CUT_END.match(flat[end:]) or re.match(r"\d[-.]", flat[max(0, start - 2) : start]):
        return False
    if _UNIT.match(flat[end:]):  # the last group is a quantity: "+49 30 3284851 10 mg/kg"
        return False
    if candidate.endswith(")") or re.search(r".\((?!0\))", candidate) or _UNOPENED.match(candidate):
        return False
    if _DECIMAL.match(candidate):  # 0.000488281
        return False
    context = named or bool(_PHONE_CONTEXT.search(flat[max(0, start - 24) : start]))
    formatted = bool(re.search(r"\d[ .()\-]+\d|^\(", candidate))
    # Bare digits (2125550142, 0012345678) are most often ids: a phone only after a phone word.
    if not formatted and not context and not candidate.startswith("+"):
        return False
    if candidate.startswith("00"):
        candidate = "+" + candidate[2:]
    if candidate.startswith("+"):
        regions: tuple[str | None, ...] = (None,)
    elif candidate.lstrip("(").startswith("0"):  # a trunk prefix: a national number abroad
        regions = _TRUNK_REGIONS
        if count < _NANP_DIGITS and not context:  # 01296-1182 is a ZIP+4 code as often as a phone
            return False
    else:
        regions = ("US",)
        # Without a country code, fewer than 10 digits (163-3123) is the shape of the ids
        # documents are full of.
        if not context and count < _NANP_DIGITS:
            return False
    for region in regions:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        # Dialled with its country code, or named a phone, a number need only be possible (the
        # ranges kept for fiction are not valid); a bare national number must be a valid one of
        # its region (an area code in use, a length its ranges have).
        plausible = phonenumbers.is_possible_number if candidate.startswith("+") or context \
            else phonenumbers.is_valid_number
        if plausible(number) and _grouped_as_printed(candidate, number):
            return True
    return False


def _grouped_as_printed(candidate: str, number: object) -> bool:
    """A phone number is printed in its country's grouping (``phonenumbers``' formats for the region:
    (212) 555-0142, 020 7946 0958, 01 42 68 53 00), or in coarser groups, or not grouped at all;
    measurements (23646 45190), ISBNs (0-387-95457-0), versions and decimals are not. The groups are
    compared from the right (a country code, a trunk 0 or a NANP 1 may stand before the number)."""
    import phonenumbers

    printed = re.findall(r"\d+", candidate.replace("(0)", " "))
    if candidate.startswith(("+", "00")):
        code = str(number.country_code)
        head = printed[0].removeprefix("00")
        printed = ([head[len(code):]] if len(head) > len(code) else []) + printed[1:]
    national = phonenumbers.national_significant_number(number)
    canonical = re.findall(r"\d+", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    return _breaks(printed, len(national)) <= _breaks(canonical, len(national))


def _breaks(groups: list[str], length: int) -> set[int]:
    """Where a number's digit groups break, counted in digits from its right end, within its
    national significant number of ``length`` digits."""
    breaks, total = set(), 0
    for group in reversed(groups[1:]):
        total += len(group)
        if total < length:
            breaks.add(total)
    return breaks


_VERSION_WORD = re.compile(r"(?i)\b(?:version|release|v)\W{0,2}$")
# A word just before (within the 24 characters read) that says an address follows.
_ADDRESS_WORD = re.compile(r"(?i)\b(?:ip|ipv4|address(?:es)?|host|server|client|gateway|dns|router|proxy|ping|"
                           r"connect(?:ed|ion)?|login|logged in)\b")
# The octets of a section number (1.2.19.1): a dotted quad of such numbers is an address only when a
# word says so (8.8.8.8 after "DNS").
_SECTION_OCTET = 31


def is_ip_address(text: str, start: int, end: int) -> bool:
    """Whether what Presidio took for an IP address at ``text[start:end]`` is one.

    An IPv6 address in space the IETF keeps reserved (``::/8`` and all else outside global unicast,
    unique and link-local, multicast, IPv4-mapped) is one only after a word that says address: that is
    where code's slices, loopbacks and scopes (``::4``, ``1::2``, ``::1``, C++'s ``b::c``) and
    gnuplot's ``every ::3:0:7:4`` fall. An IPv4 address is not one when named as a version
    (``version 1.2.3.4``), and, if all its octets are small enough to number a section of a manual
    (``27 1.2.19.1 OpenMP support``), only after a word that says address."""
    value, before = text[start:end], text[max(0, start - 24) : start]
    if ":" in value:
        try:
            address = ipaddress.ip_interface(value).ip
        except ValueError:
            return False
        named = bool(_ADDRESS_WORD.search(before))
        return not address.is_reserved or address.ipv4_mapped is not None or named
    if _VERSION_WORD.search(before):
        return False
    octets = [int(octet) for octet in re.findall(r"\d+", value)]
    return max(octets, default=0) > _SECTION_OCTET or bool(_ADDRESS_WORD.search(before))


def _without_overlaps(spans: list[Span]) -> list[Span]:
    """Stricter shapes first (an SSN's 3-2-4 beats a phone read across it), then the longer span."""
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: (_PRIORITY[s.kind], s.start - s.end)):
        if all(span.end <= other.start or other.end <= span.start for other in kept):
            kept.append(span)
    return sorted(kept)


_PRIORITY = {"EMAIL": 0, "CREDIT_CARD": 1, "SSN": 2, "PHONE": 3}


def redacted(text: str) -> tuple[str, list[Span]]:
    """``text`` with every PII-shaped span replaced by its marker (``[REDACTED:SSN]``), and the spans."""
    spans = find_pii(text)
    for span in reversed(spans):
        text = f"{text[: span.start]}[REDACTED:{span.kind}]{text[span.end :]}"
    return text, spans
