from __future__ import annotations

import re

import pytest

from include.contract import StageManifest
from include.stages.base import DocumentError
from include.stages.extract import BOUNDARY, check_pdf
from include.stages.local import run_stages
from include.storage import Storage
from tests.helpers import drop, run_until


def _markdown(settings, manifests) -> str:
    return Storage(settings).read_text(manifests["extract"].outputs["markdown"])


def _document(settings, manifests):
    from docling_core.types.doc import DoclingDocument

    return DoclingDocument.model_validate_json(Storage(settings).read_text(manifests["extract"].outputs["document"]))


def _one_space(text: str) -> str:
    return re.sub(r" +", " ", text)


def test_extract_keeps_a_docling_document_with_headings_paragraphs_and_a_table_with_cells(
        settings, sample_pdfs, samples_by_name):
    from docling_core.types.doc import SectionHeaderItem, TableItem, TextItem, TitleItem

    sample = samples_by_name["metformin_trial_protocol.pdf"]
    doc = drop(settings, sample_pdfs[sample.filename])
    manifests = run_until(settings, doc, "extract")
    document = _document(settings, manifests)
    items = [item for item, _ in document.iterate_items()]

    assert isinstance(items[0], TitleItem) and items[0].text == sample.title  # wrapped over two lines, one title
    sections = [section.heading for page in sample.pages for section in page]
    assert [(i.text, i.level) for i in items if isinstance(i, SectionHeaderItem)] == [(h, 1) for h in sections]
    # The native pipeline gives one item per line: paragraphs are re-joined whole.
    paragraphs = [i.text for i in items if type(i) is TextItem]
    assert paragraphs == [p for page in sample.pages for section in page for p in section.paragraphs]
    [table] = [i for i in items if isinstance(i, TableItem)]
    assert [[cell.text for cell in row] for row in table.data.grid] == [list(row) for row in sample.pages[1][0].table]
    # Every item knows its page.
    assert {i.prov[0].page_no for i in items} == {1, 2} and all(i.prov for i in items)
    assert manifests["extract"].metrics["tables"] == 1 and manifests["extract"].metrics["headings"] == 5


def test_the_markdown_view_has_one_unit_per_page(settings, sample_pdfs, samples_by_name):
    sample = samples_by_name["metformin_trial_protocol.pdf"]
    doc = drop(settings, sample_pdfs[sample.filename])
    manifests = run_until(settings, doc, "extract")
    units = _one_space(_markdown(settings, manifests)).split(BOUNDARY)
    assert len(units) == len(sample.pages) == manifests["extract"].metrics["pages"]
    assert [int(n) for n in re.findall(r"<!-- page: (\d+) -->", "".join(units))] == [1, 2]
    assert f"# {sample.title}" in units[0]
    assert "## 3. Dosing Schedule" in units[1]
    assert "| Week | Metformin dose | Visit |" in units[1]
    assert "| 4 | 2000 mg | Clinic |" in units[1]


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


def test_page_ranges_are_put_back_in_order_and_give_the_same_document(settings, tmp_path):
    from benchmarks.bench_extract import make_pdf

    doc = drop(settings, make_pdf(tmp_path / "long.pdf", 7))
    manifests = run_until(settings, doc, "extract")
    whole, whole_document = _markdown(settings, manifests), _document(settings, manifests)
    by_two = settings.model_copy(update={"extract_pages_per_part": 2})
    # Reuse does not care how a document was split: recompute to convert it again.
    parts = run_until(by_two, doc, "extract", recompute=True)
    assert parts["extract"].metrics["pages"] == 7
    assert _markdown(settings, parts) == whole
    assert sorted(_document(settings, parts).pages) == list(range(1, 8))
    assert _document(settings, parts).export_to_dict()["texts"] == whole_document.export_to_dict()["texts"]
    assert [int(n) for n in re.findall(r"<!-- page: (\d+) -->", whole)] == list(range(1, 8))
    assert "Page 7, paragraph 6." in whole.split(BOUNDARY)[6]


def test_the_markdown_is_split_back_onto_its_pages_even_around_an_empty_page():
    """One export for the whole document (the layout-model path's too); the split must keep page numbers."""
    from docling_core.types.doc import BoundingBox, DocItemLabel, DoclingDocument, ProvenanceItem, Size

    from include.stages.extract import page_markdown

    doc = DoclingDocument(name="three-pages")
    for number in (1, 2, 3):
        doc.add_page(page_no=number, size=Size(width=600, height=800))

    def on(page: int) -> ProvenanceItem:
        return ProvenanceItem(page_no=page, bbox=BoundingBox(l=10, t=700, r=500, b=690), charspan=(0, 1))

    doc.add_heading(text="Intro", prov=on(1))
    doc.add_text(label=DocItemLabel.TEXT, text="First page text.", prov=on(1))
    doc.add_text(label=DocItemLabel.TEXT, text="Third page text.", prov=on(3))
    assert page_markdown(doc, 3) == ["## Intro\n\nFirst page text.", "", "Third page text."]


def test_a_pdf_of_20000_blank_pages_is_refused_from_its_page_count_before_any_conversion(settings, tmp_path):
    import pypdfium2

    blank = pypdfium2.PdfDocument.new()
    for _ in range(20_000):
        blank.new_page(612, 792)
    blank.save(str(tmp_path / "blank.pdf"))
    document = drop(settings, tmp_path / "blank.pdf")
    [outcome] = run_stages(settings, [document], "extract")["extract"].documents
    assert outcome.status == "failed" and outcome.bad_file  # quarantined: trying again cannot help
    assert outcome.error.endswith("blank.pdf: 20000 pages is over the limit of 5000 "
                                  "(PIPELINE_MAX_PAGES_PER_DOCUMENT); split the file, or raise the limit, and drop "
                                  "it into the inbox again")
