"""The labelled PII corpus (tests/pii_corpus.py): deterministic, big and varied enough, its
values fake and well-formed, and every labelled value still there after extraction, since
a value extraction loses can never be tested for a leak."""

from __future__ import annotations

import json
import re
from collections import Counter

import pypdfium2
import pytest

from include.pii_shapes import PII_KINDS, luhn_valid
from include.storage import Storage
from tests.helpers import drop, run_until
from tests.pii_corpus import (
    KEEP,
    PLACEMENTS,
    CorpusDocument,
    Labelled,
    generate_corpus,
    pieces,
    read_truth,
    write_corpus,
)

# A 2-, a 3- and a 4-page report, each with a phone wrapped inside a table cell as well as
# one wrapped in a narrow box: together they hold every placement.
EXTRACTED = (0, 4, 8)


@pytest.fixture(scope="module")
def corpus() -> list[CorpusDocument]:
    return generate_corpus()


def _labels(corpus: list[CorpusDocument]) -> list[Labelled]:
    return [label for document in corpus for label in document.truth]


def test_the_same_seed_gives_the_same_files_and_truth(corpus):
    assert generate_corpus() == corpus
    assert [d.truth for d in generate_corpus(seed=8, documents=2)] != [d.truth for d in corpus[:2]]


def test_the_corpus_is_large_and_covers_every_kind_placement_and_phone_format(corpus):
    labels = _labels(corpus)
    kinds = Counter(label.kind for label in labels)
    assert sum(kinds[kind] for kind in PII_KINDS) >= 300
    assert kinds[KEEP] >= 150
    assert set(kinds) == {*PII_KINDS, KEEP}
    assert {label.placement for label in labels if label.kind != KEEP} == set(PLACEMENTS)
    phone_formats = {label.variant for label in labels if label.kind == "PHONE"}
    assert len(phone_formats) >= 12
    assert {"us_parens", "us_dashes", "us_dots", "us_spaces", "us_plus1_spaces", "us_plus1_dashes", "us_ext",
            "us_x_ext", "uk_plus_spaces", "uk_plus_trunk_zero", "uk_0044", "de_plus", "fr_plus", "in_plus",
            "au_plus"} <= phone_formats
    assert {"date_iso", "date_dmy", "date_long", "dose", "protocol", "page_number", "sample_id", "time",
            "version", "lab_value", "zip"} <= {label.variant for label in labels if label.kind == KEEP}
    assert [len(pypdfium2.PdfDocument(document.pdf)) for document in corpus] == [2, 3, 4] * 4


def test_the_pii_is_fake_and_well_formed(corpus):
    labels = _labels(corpus)
    cards = [label.value for label in labels if label.kind == "CREDIT_CARD"]
    assert cards and all(luhn_valid(card) for card in cards)
    emails = [label.value.lower() for label in labels if label.kind == "EMAIL"]
    assert all(re.fullmatch(r"[\w.+-]+@([\w-]+\.)*example\.(com|org|net)", email) for email in emails)
    for label in labels:
        label.value.encode("latin-1")  # fpdf2's core fonts print nothing else
        if label.kind == "PHONE" and label.variant.startswith("us_"):
            assert re.search(r"555\D01\d\d\b", label.value), label
        if label.kind == "PHONE" and label.variant.startswith("uk_"):
            assert re.search(r"7946 0\d{3}$|7700 900\d{3}$", label.value), label
    ssns = {label.value for label in labels if label.kind == "SSN"}
    assert {"219-09-9999", "078-05-1120"} & ssns, "published samples Presidio rejects are part of the test"


def test_luhn_check():
    assert all(map(luhn_valid, ("4111 1111 1111 1111", "3782 822463 10005", "6011000990139424")))
    assert not luhn_valid("4111 1111 1111 1112")
    assert not luhn_valid("1234")


def test_no_labelled_value_is_part_of_another_in_its_document(corpus):
    """Else finding a value in a text would not say which one was found."""
    for document in corpus:
        values = [label.value for label in document.truth]
        clashes = [(a, b) for i, a in enumerate(values) for b in values[i + 1:] if a in b or b in a]
        assert not clashes, document.filename


def test_a_broken_value_splits_at_the_separator_nearest_its_middle():
    assert pieces(Labelled("PHONE", "212-555-0142", "hyphenated", "us_dashes")) == ("212-555-", "0142")
    assert pieces(Labelled("CREDIT_CARD", "4111-1111-1111-1111", "hyphenated", "card_dashes")) == (
        "4111-1111-", "1111-1111")
    assert pieces(Labelled("PHONE", "+44 (0)20 7946 0958", "wrapped", "uk_plus_trunk_zero")) == (
        "+44 (0)20", "7946 0958")
    assert pieces(Labelled("PHONE", "+44 20 7946 0958", "table", "uk_plus_spaces")) == ("+44 20 7946 0958",)


def test_the_extracted_documents_hold_every_placement(corpus):
    assert {label.placement for index in EXTRACTED for label in corpus[index].truth} == set(PLACEMENTS)


@pytest.mark.parametrize("index", EXTRACTED)
def test_every_labelled_value_comes_out_of_extraction(settings, corpus, tmp_path, index):
    document = corpus[index]
    path = tmp_path / document.filename
    path.write_bytes(document.pdf)
    from docling_core.types.doc import ContentLayer, DoclingDocument

    manifests = run_until(settings, drop(settings, path), "extract")
    storage = Storage(settings)
    markdown = storage.read_text(manifests["extract"].outputs["markdown"])
    # Page headers and footers are in the document too, as furniture (out of the Markdown and the chunks).
    extracted = DoclingDocument.model_validate_json(storage.read_text(manifests["extract"].outputs["document"]))
    furniture = " ".join(item.text for item, _ in extracted.iterate_items(
        included_content_layers={ContentLayer.FURNITURE}) if hasattr(item, "text"))
    missing = [(label, piece) for label in document.truth for piece in pieces(label)
               if piece not in (f"{markdown} {furniture}" if label.placement in ("header", "footer") else markdown)]
    assert not missing


def test_write_corpus_writes_each_pdf_with_its_truth(tmp_path):
    written = write_corpus(tmp_path / "corpus", seed=3, documents=2)
    expected = generate_corpus(seed=3, documents=2)
    assert [path.name for path in written] == [document.filename for document in expected]
    for path, document in zip(written, expected):
        assert path.read_bytes() == document.pdf
        raw = json.loads(path.with_suffix(".truth.json").read_text(encoding="utf-8"))
        assert set(raw[0]) == {"kind", "value", "placement", "variant"}
        assert read_truth(path) == document.truth
