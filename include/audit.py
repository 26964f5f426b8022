"""The leak audit: does anything downstream of enrichment hold PII?

It reads everything that is meant to be free of PII, and only that: the enriched chunks
(``<artifacts>/enriched/``: text, heading, entities, key phrases), the embeddings' Parquet
files (``<artifacts>/embeddings/``: text and metadata) and every record of the vector
store (text and metadata). The raw PDFs and the extracted Markdown and chunks upstream
of enrichment still hold PII by design; they are not audited.

Two ways to look:

- **against truth files** (``--truth file.json``, a JSON list of ``{"kind", "value"}``):
  each value is searched in a normalised form. An email matches case-insensitively. A
  phone number, SSN or card number matches by its digits, whatever separators, spaces or
  line breaks stand between them, so ``212-555-`` at a line end and ``0142`` on the next
  still count. A phone number leaks as soon as its last seven digits (the subscriber
  number) are there;
- **by shape** (always): anything that looks like an email address, an SSN, a card
  number that passes the Luhn check, or a phone number, as ``include.pii_shapes`` sees
  them (the same eyes as the enricher's safety net: the truth files are the independent
  check).

    python -m include.audit [--truth T.json ...] [--no-store]

prints the leaks by kind with where each was found (values masked) and exits 1 if
there is any.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from include.pii_shapes import PII_KINDS, digits, find_pii
from include.settings import PipelineSettings, get_settings
from include.storage import Storage, join_uri

# The fields of a chunk that go downstream besides its text.
_FIELDS = ("text", "heading", "entities", "key_phrases")
# A run of digits with whatever stands between them in a text, line breaks included.
_NUMBER_RUN = re.compile(r"[+(]?\d(?:[\d\s().\-/]*\d)?")
# Digits of a phone number that identify it on their own: the subscriber number.
PHONE_KEY_DIGITS = 7


@dataclass(frozen=True)
class Leak:
    kind: str
    where: str
    field: str
    found: str  # masked

    def line(self) -> str:
        return f"{self.kind:<12} {self.where} [{self.field}]: {self.found}"


def mask(text: str) -> str:
    """Enough to find it again, not enough to read it."""
    text = " ".join(text.split())
    return text if len(text) <= 4 else f"{text[:2]}{'*' * (len(text) - 4)}{text[-2:]}"


class TruthMatcher:
    """Finds the labelled PII values of truth files in a text."""

    def __init__(self, truth: Iterable[dict[str, str]]) -> None:
        self._emails: set[str] = set()
        self._digits: dict[str, str] = {}  # the digits that betray a value -> its kind
        for item in truth:
            kind, value = item["kind"], item["value"]
            if kind == "EMAIL":
                self._emails.add(value.lower())
            elif kind in PII_KINDS:
                found = digits(value.split(" ext")[0].split(" x")[0])
                self._digits[found[-PHONE_KEY_DIGITS:] if kind == "PHONE" else found] = kind

    def __len__(self) -> int:
        return len(self._emails) + len(self._digits)

    def find(self, text: str) -> Iterator[tuple[str, str]]:
        lowered = text.lower()
        for email in self._emails:
            if email in lowered:
                yield "EMAIL", email
        runs = [digits(match.group()) for match in _NUMBER_RUN.finditer(text)]
        for key, kind in self._digits.items():
            if any(key in run for run in runs):
                yield kind, key


def find_shapes(text: str) -> Iterator[tuple[str, str]]:
    """Whatever looks like PII, labelled or not (``include.pii_shapes``)."""
    for span in find_pii(text):
        yield span.kind, text[span.start : span.end]


def downstream_texts(settings: PipelineSettings, *, include_store: bool = True) -> Iterator[tuple[str, str, str]]:
    """(where, field, text) for everything downstream of enrichment."""
    import pyarrow.parquet as pq

    storage = Storage(settings)
    for uri in storage.list(join_uri(settings.artifacts_uri, "enriched")):
        if uri.endswith(".jsonl"):
            for number, row in enumerate(storage.read_jsonl(uri)):
                yield from _row_texts(f"{uri}#{number}", row)
    for uri in storage.list(join_uri(settings.artifacts_uri, "embeddings")):
        if uri.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=list(_FIELDS))
            for number, row in enumerate(table.to_pylist()):
                yield from _row_texts(f"{uri}#{number}", row)
    if include_store:
        from include.backends.vector_stores import build_vector_store

        store = build_vector_store(settings)
        for record_id, text, metadata in store.scan():
            yield f"{store.location}/{record_id}", "id", record_id
            yield f"{store.location}/{record_id}", "text", text
            for name, value in metadata.items():
                if isinstance(value, str):
                    yield f"{store.location}/{record_id}", name, value


def _row_texts(where: str, row: dict) -> Iterator[tuple[str, str, str]]:
    for name in _FIELDS:
        value = row.get(name)
        if value:
            yield where, name, value if isinstance(value, str) else json.dumps(value)


def audit(texts: Iterable[tuple[str, str, str]], truth: TruthMatcher | None) -> tuple[list[Leak], int]:
    """The leaks in the texts, and how many texts were read."""
    leaks: list[Leak] = []
    read = 0
    for where, field, text in texts:
        read += 1
        found = set(find_shapes(text))
        if truth is not None:
            found |= set(truth.find(text))
        leaks += [Leak(kind, where, field, mask(value)) for kind, value in sorted(found)]
    return leaks, read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--truth", action="append", default=[], help="JSON list of {kind, value} (repeatable)")
    parser.add_argument("--no-store", action="store_true", help="skip the vector store (artifacts only)")
    args = parser.parse_args(argv)

    settings = get_settings()
    truth = None
    if args.truth:
        truth = TruthMatcher(item for path in args.truth for item in json.loads(open(path).read()))
    leaks, read = audit(downstream_texts(settings, include_store=not args.no_store), truth)
    checked = f"{read} texts downstream of enrichment" + (f" for {len(truth)} labelled values" if truth else "")
    if not leaks:
        print(f"No PII found in {checked} (and by shape: email, phone, SSN, card).")
        return 0
    by_kind = Counter(leak.kind for leak in leaks)
    print(f"PII LEAKS in {checked}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(by_kind.items())))
    for leak in leaks:
        print(leak.line())
    return 1


if __name__ == "__main__":
    sys.exit(main())
