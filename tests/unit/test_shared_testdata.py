"""Extraction on real-world PDFs from Docling's own test suite (../shared/testdata).

Docling's groundtruth comes from its full layout pipeline; the model-free path
differs in headings and tables, so the yardstick is word recall, not equality.
"""

from __future__ import annotations

import re

import pypdfium2
import pytest

from include.stages.extract import BOUNDARY
from include.stages.local import run_stages
from include.storage import Storage
from tests.helpers import drop, manifests_of

pytestmark = pytest.mark.shared_testdata
MIN_WORD_RECALL = 0.9


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]{4,}", text.lower()))


def test_extraction_recalls_the_groundtruth_words_page_by_page(settings, shared_testdata):
    pdfs = [pdf for pdf in sorted((shared_testdata / "pdf").glob("*.pdf")) if not pdf.name.startswith("encrypted")]
    documents = [drop(settings, pdf) for pdf in pdfs]
    results = run_stages(settings, documents, "chunk")  # all of them as one batch
    checked = 0
    for pdf, document in zip(pdfs, documents):
        manifests = manifests_of(settings, results, document.doc_id)
        markdown = Storage(settings).read_text(manifests["extract"].outputs["markdown"])
        pages = len(pypdfium2.PdfDocument(pdf.read_bytes()))
        assert len(markdown.split(BOUNDARY)) == pages == manifests["extract"].metrics["pages"], pdf.name
        assert manifests["chunk"].metrics["chunks"] >= 1
        truth = shared_testdata / "groundtruth" / f"{pdf.stem}.md"
        if truth.exists():
            expected = _words(truth.read_text())
            recall = len(expected & _words(markdown)) / len(expected)
            assert recall >= MIN_WORD_RECALL, f"{pdf.name}: word recall {recall:.2f}"
            checked += 1
    assert checked >= 5


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def test_structure_survives_extraction_headings_and_tables_against_the_groundtruth(settings, shared_testdata):
    """Docling's layout models marked the groundtruth's headings and tables; the model-free path finds
    them from fonts, sizes and alignment. Headings: at least 90% of them, over all the documents.
    Tables: every document whose groundtruth has one has a table with cells (a scientific table whose
    text layer runs columns together is not rebuilt cell by cell: its words are, see the test above)."""
    from docling_core.types.doc import DoclingDocument, SectionHeaderItem, TitleItem

    pdfs = [pdf for pdf in sorted((shared_testdata / "pdf").glob("*.pdf"))
            if (shared_testdata / "groundtruth" / f"{pdf.stem}.md").exists()]
    documents = [drop(settings, pdf) for pdf in pdfs]
    results = run_stages(settings, documents, "extract")
    expected_headings = found_headings = 0
    for pdf, document in zip(pdfs, documents):
        manifest = manifests_of(settings, results, document.doc_id)["extract"]
        extracted = DoclingDocument.model_validate_json(Storage(settings).read_text(manifest.outputs["document"]))
        ours = [_normal(item.text) for item, _ in extracted.iterate_items()
                if isinstance(item, SectionHeaderItem | TitleItem)]
        truth = (shared_testdata / "groundtruth" / f"{pdf.stem}.md").read_text()
        headings = [_normal(line.lstrip("#")) for line in truth.splitlines() if line.startswith("#")]
        expected_headings += len(headings)
        found_headings += sum(any(heading in mine for mine in ours) for heading in headings)
        if re.search(r"^\|.*\|$", truth, re.MULTILINE):
            assert extracted.tables and all(table.data.num_rows >= 2 for table in extracted.tables), pdf.name
        # Every item knows its page.
        assert all(item.prov and item.prov[0].page_no >= 1 for item, _ in extracted.iterate_items()), pdf.name
    assert expected_headings >= 30
    assert found_headings / expected_headings >= 0.9, f"{found_headings} of {expected_headings} headings"


def test_the_encrypted_sample_fails_with_a_message_naming_it(settings, shared_testdata):
    pdf = shared_testdata / "pdf" / "encrypted_2206.01062_pg3.pdf"
    [outcome] = run_stages(settings, [drop(settings, pdf)], "extract")["extract"].documents
    assert outcome.status == "failed" and not outcome.retryable
    assert re.search(r"encrypted_2206\.01062_pg3\.pdf: the PDF is encrypted", outcome.error)
