from __future__ import annotations

import re

import pytest

from include.stages.base import DocumentError, StageManifest
from include.stages.extract import BOUNDARY, check_pdf, rebuild_page
from include.stages.local import run_stages
from include.storage import Storage
from tests.helpers import drop, run_until


def _markdown(settings, manifests) -> str:
    return Storage(settings).read_text(manifests["extract"].outputs["markdown"])


def test_extract_gives_one_unit_per_page_with_paragraphs_headings_and_tables(settings, sample_pdfs, samples_by_name):
    sample = samples_by_name["metformin_trial_protocol.pdf"]
    doc = drop(settings, sample_pdfs[sample.filename])
    manifests = run_until(settings, doc, "extract")
    markdown = _markdown(settings, manifests)

    units = markdown.split(BOUNDARY)
    assert len(units) == len(sample.pages) == manifests["extract"].metrics["pages"]
    assert [int(n) for n in re.findall(r"<!-- page: (\d+) -->", markdown)] == [1, 2]
    # Headings become Markdown headings, a heading wrapped over two lines stays one.
    assert f"## {sample.title}" in units[0]
    assert "## 3. Dosing Schedule" in units[1]
    # The native pipeline gives one item per line: paragraphs are re-joined whole.
    for section in sample.pages[1]:
        for paragraph in section.paragraphs:
            assert paragraph in units[1]
    # The table keeps its rows and cells.
    assert "| Week | Metformin dose | Visit |" in units[1]
    assert "| 4 | 2000 mg | Clinic |" in units[1]
    assert manifests["extract"].metrics["tables"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"Quarterly numbers, not a PDF at all", "not a PDF"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "corrupt"),
    ],
)
def test_bad_bytes_fail_with_a_message_naming_the_file(content, message):
    with pytest.raises(DocumentError, match=rf"report\.pdf: .*{message}"):
        check_pdf(content, "s3://docs/inbox/report.pdf")


def test_an_encrypted_pdf_fails_its_document_and_records_why(settings, tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="1234")
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text="secret")
    path = tmp_path / "locked.pdf"
    pdf.output(str(path))

    doc = drop(settings, path)
    [outcome] = run_stages(settings, [doc], "extract")["extract"].documents
    assert outcome.status == "failed" and outcome.retryable is False
    assert re.search(r"locked\.pdf: the PDF is encrypted", outcome.error)
    failed = StageManifest.model_validate(Storage(settings).read_json(outcome.manifest_uri))
    assert failed.status == "failed" and failed.retryable is False
    assert "encrypted" in failed.error


def test_a_pdf_without_a_text_layer_is_reported_not_ingested_empty(settings, tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 50)  # a drawing, no text: what a scan looks like to the native pipeline
    path = tmp_path / "scan.pdf"
    pdf.output(str(path))
    [outcome] = run_stages(settings, [drop(settings, path)], "extract")["extract"].documents
    assert outcome.status == "failed" and re.search(r"scan\.pdf: no text layer", outcome.error)


def test_a_file_replaced_or_removed_after_listing_fails_alone_and_says_so(settings, sample_pdfs):
    storage = Storage(settings)
    replaced = drop(settings, sample_pdfs["metformin_trial_protocol.pdf"], name="replaced.pdf")
    removed = drop(settings, sample_pdfs["metformin_trial_protocol.pdf"], name="removed #1.pdf")
    kept = drop(settings, sample_pdfs["adverse_event_guide.pdf"])
    storage.write_bytes(replaced.source_uri, sample_pdfs["adverse_event_guide.pdf"].read_bytes())
    storage.delete(removed.source_uri)
    outcomes = {o.doc_id: o for o in run_stages(settings, [replaced, removed, kept], "extract")["extract"].documents}
    assert "changed after it was listed" in outcomes[replaced.doc_id].error
    assert "removed from the inbox" in outcomes[removed.doc_id].error
    assert outcomes[kept.doc_id].status == "succeeded"


def test_page_ranges_are_put_back_in_order_and_give_the_same_markdown(settings, tmp_path):
    from benchmarks.bench_extract import make_pdf

    doc = drop(settings, make_pdf(tmp_path / "long.pdf", 7))
    whole = Storage(settings).read_text(run_until(settings, doc, "extract")["extract"].outputs["markdown"])
    by_two = settings.model_copy(update={"extract_pages_per_part": 2})
    # Reuse does not care how a document was split: recompute to convert it again.
    manifests = run_until(by_two, doc, "extract", recompute=True)
    assert manifests["extract"].metrics["pages"] == 7
    assert Storage(settings).read_text(manifests["extract"].outputs["markdown"]) == whole
    assert [int(n) for n in re.findall(r"<!-- page: (\d+) -->", whole)] == list(range(1, 8))
    assert "Page 7, paragraph 6." in whole.split(BOUNDARY)[6]


def test_rebuild_page_joins_lines_splits_on_white_space_and_keeps_hyphenated_words():
    items = [  # (text, (left, top, right, bottom)), body lines 10 pt tall
        ("Big Heading", (50, 800, 300, 780)),  # 20 pt tall: a heading
        ("first line of a para-", (50, 760, 400, 750)),
        ("graph continues here.", (50, 745, 400, 735)),
        ("A second paragraph.", (50, 700, 400, 690)),  # a wide gap above
    ]
    assert rebuild_page(items) == (
        "## Big Heading\n\nfirst line of a paragraph continues here.\n\nA second paragraph."
    )


def test_two_text_columns_side_by_side_are_not_mistaken_for_a_table():
    left = "a long line of body text in the left column of the page"
    right = "and another long line of text in the right-hand column"
    items = [(left, (50, 700, 280, 690)), (right, (310, 700, 540, 690))]
    assert "|" not in rebuild_page(items)


def test_standard_pipeline_markdown_is_split_back_onto_its_pages_even_around_an_empty_page():
    """The layout-model path (not runnable offline) exports once; the split must keep page numbers."""
    from docling_core.types.doc import BoundingBox, DocItemLabel, DoclingDocument, ProvenanceItem, Size

    from include.stages.extract import _standard_pages

    doc = DoclingDocument(name="three-pages")
    for number in (1, 2, 3):
        doc.add_page(page_no=number, size=Size(width=600, height=800))

    def on(page: int) -> ProvenanceItem:
        return ProvenanceItem(page_no=page, bbox=BoundingBox(l=10, t=700, r=500, b=690), charspan=(0, 1))

    doc.add_heading(text="Intro", prov=on(1))
    doc.add_text(label=DocItemLabel.TEXT, text="First page text.", prov=on(1))
    doc.add_text(label=DocItemLabel.TEXT, text="Third page text.", prov=on(3))
    assert _standard_pages(doc, 1, 3) == ["## Intro\n\nFirst page text.", "", "Third page text."]
