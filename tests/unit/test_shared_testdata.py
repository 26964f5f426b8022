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


def test_the_encrypted_sample_fails_with_a_message_naming_it(settings, shared_testdata):
    pdf = shared_testdata / "pdf" / "encrypted_2206.01062_pg3.pdf"
    [outcome] = run_stages(settings, [drop(settings, pdf)], "extract")["extract"].documents
    assert outcome.status == "failed" and not outcome.retryable
    assert re.search(r"encrypted_2206\.01062_pg3\.pdf: the PDF is encrypted", outcome.error)
