"""Stage 1, extract: a PDF becomes Markdown, one unit per page.

Output ``document.md``: for each page a ``<!-- page: N -->`` comment and the page's
Markdown, units separated by a ``<!-- BOUNDARY -->`` line. Every page gets a unit,
even an empty one, so unit *i* is always page *i + 1*.

Two Docling pipelines:
- default, the model-free ``NativePdfPipeline``: it reads the PDF's own text layer
  and gives one text item per line, with its box. ``rebuild_page`` turns those lines
  back into paragraphs, headings (taller lines) and tables (rows of aligned cells);
- when ``PIPELINE_DOCLING_ARTIFACTS_PATH`` points at Docling's layout models, the
  standard pipeline runs instead and its own Markdown is used.
Either way the Markdown is exported once per part, never once per page.

A PDF is converted in parts of ``PIPELINE_EXTRACT_PAGES_PER_PART`` pages (Docling's
``page_range``), so a long file spreads over the extract actors and no actor holds
more than a part's pages at once; the parts are put back in page order.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.settings import PipelineSettings
from include.stages.base import AssembleContext, BadFileError, DocInput, DocumentError, Metrics, Outputs, Part
from include.storage import ObjectNotFound, Storage

if TYPE_CHECKING:
    from docling_core.types.doc import DoclingDocument

log = logging.getLogger(__name__)

BOUNDARY = "<!-- BOUNDARY -->"
PAGE_MARKER = "<!-- page: {} -->"

# Cells of one table row are separated by at least this many points of white space.
_CELL_GAP_PT = 12.0
# Two side-by-side items this long are two text columns, not a table row.
_COLUMN_TEXT_CHARS = 40


@dataclass
class Line:
    """Text items that sit on one visual row of a page, left to right."""

    cells: list[str]
    left: float
    right: float
    top: float
    bottom: float

    @property
    def height(self) -> float:
        return self.top - self.bottom

    @property
    def text(self) -> str:
        return " ".join(self.cells)

    def is_table_row(self) -> bool:
        if len(self.cells) < 2:
            return False
        return not (len(self.cells) == 2 and min(map(len, self.cells)) >= _COLUMN_TEXT_CHARS)


def check_pdf(data: bytes, name: str) -> int:
    """Fail early, with a message naming the file, on what Docling reports only vaguely.

    Through pdfium's C API: pypdfium2's ``PdfDocument`` refuses a PDF of zero pages as
    "failed to load" and takes the cause from pdfium's last error, left over from
    whatever file came before (a zero-page file after an encrypted one read "encrypted").
    """
    import ctypes

    import pypdfium2  # noqa: F401  (initialises pdfium for the raw bindings)
    import pypdfium2.raw as pdfium

    if not data:
        raise BadFileError(f"{name}: the file is empty (0 bytes)")
    if not data.lstrip()[:5] == b"%PDF-":
        raise BadFileError(f"{name}: not a PDF (it starts with {data[:8]!r}, not '%PDF-')")
    buffer = ctypes.create_string_buffer(data, len(data))
    document = pdfium.FPDF_LoadMemDocument64(buffer, len(data), None)
    if not document:
        error = pdfium.FPDF_GetLastError()  # right after the failed load: this file's error
        if error == pdfium.FPDF_ERR_PASSWORD:
            raise BadFileError(
                f"{name}: the PDF is encrypted (password-protected); decrypt it and drop it into the inbox again"
            )
        cause = _PDFIUM_ERRORS.get(error, f"error {error}")
        raise BadFileError(f"{name}: the PDF is corrupt and cannot be opened (PDFium: {cause})")
    try:
        pages = pdfium.FPDF_GetPageCount(document)
    finally:
        pdfium.FPDF_CloseDocument(document)
    if pages == 0:
        raise BadFileError(f"{name}: the PDF has no pages")
    return pages


_PDFIUM_ERRORS = {1: "unknown error", 2: "file not found or unreadable", 3: "data format error",
                  5: "unsupported security scheme", 6: "page not found or content error"}


def _group_lines(items: list[tuple[str, tuple[float, float, float, float]]]) -> list[Line]:
    """Merge consecutive items that overlap vertically into one visual line."""
    lines: list[Line] = []
    for text, (left, top, right, bottom) in items:
        prev = lines[-1] if lines else None
        overlap = prev and min(prev.top, top) - max(prev.bottom, bottom)
        if prev and overlap > 0.5 * min(prev.height, top - bottom) and left >= prev.right - 1:
            if left - prev.right >= _CELL_GAP_PT:
                prev.cells.append(text)
            else:
                prev.cells[-1] = f"{prev.cells[-1]} {text}"
            prev.right = max(prev.right, right)
            prev.top, prev.bottom = max(prev.top, top), min(prev.bottom, bottom)
        else:
            lines.append(Line([text], left, right, top, bottom))
    return lines


def _join_paragraph(lines: list[Line]) -> str:
    text = ""
    for line in lines:
        piece = line.text.strip()
        if text.endswith("-") and piece[:1].islower():
            text = text[:-1] + piece  # re-join a word hyphenated at the line end
        else:
            text = f"{text} {piece}" if text else piece
    return text


def _table(rows: list[Line]) -> str:
    width = max(len(r.cells) for r in rows)
    cells = [[c.replace("|", "\\|") for c in r.cells] + [""] * (width - len(r.cells)) for r in rows]
    out = ["| " + " | ".join(cells[0]) + " |", "|" + " --- |" * width]
    out += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(out)


def rebuild_page(items: list[tuple[str, tuple[float, float, float, float]]]) -> str:
    """Markdown for one page from its text lines (text, (left, top, right, bottom)).

    Boxes use PDF coordinates (origin bottom-left, so top > bottom).
    """
    lines = _group_lines(items)
    if not lines:
        return ""
    body_height = statistics.median(line.height for line in lines)
    # The usual white space between two lines of one paragraph on this page: more
    # than that (by half a line) starts a new paragraph.
    gaps = [a.bottom - b.top for a, b in zip(lines, lines[1:]) if b.top < a.bottom]
    leading = statistics.median(gaps) if gaps else 0.0
    blocks: list[str] = []
    paragraph: list[Line] = []
    table: list[Line] = []
    previous_heading: Line | None = None

    def flush() -> None:
        if paragraph:
            blocks.append(_join_paragraph(paragraph))
            paragraph.clear()
        if len(table) >= 2:
            blocks.append(_table(table))
        elif table:  # a single "row" is just a line with wide spacing
            blocks.append(" ".join(table[0].cells))
        table.clear()

    for line in lines:
        if line.is_table_row():
            if paragraph:
                blocks.append(_join_paragraph(paragraph))
                paragraph.clear()
            table.append(line)
            continue
        if table:
            flush()
        is_heading = line.height > 1.25 * body_height and len(line.text) <= 120
        if is_heading:
            flush()
            if blocks and blocks[-1].startswith("## ") and previous_heading and (
                previous_heading.bottom - line.top <= leading + 0.5 * body_height
            ):
                blocks[-1] += f" {line.text.strip()}"  # a heading wrapped over two lines
            else:
                blocks.append(f"## {line.text.strip()}")
            previous_heading = line
            continue
        previous_heading = None
        if paragraph:
            prev = paragraph[-1]
            gap = prev.bottom - line.top
            if gap > leading + 0.5 * body_height or line.top > prev.top:  # white space, or a new column
                flush()
        paragraph.append(line)
    flush()
    return "\n\n".join(blocks)


def _native_pages(doc: DoclingDocument, first: int, last: int) -> list[str]:
    from docling_core.types.doc import TextItem

    per_page: dict[int, list] = {n: [] for n in range(first, last + 1)}
    for item, _level in doc.iterate_items():
        if isinstance(item, TextItem) and item.prov and item.text.strip():
            box = item.prov[0].bbox
            if item.prov[0].page_no in per_page:
                per_page[item.prov[0].page_no].append((item.text, (box.l, box.t, box.r, box.b)))
    return [rebuild_page(per_page[n]) for n in range(first, last + 1)]


def _standard_pages(doc: DoclingDocument, first: int, last: int) -> list[str]:
    placeholder = "<!-- docling page break -->"
    markdown = doc.export_to_markdown(page_break_placeholder=placeholder)
    # Docling writes a placeholder where consecutive items change page, so the
    # segments belong, in order, to the pages that have items.
    pages_with_items = sorted({item.prov[0].page_no for item, _ in doc.iterate_items() if getattr(item, "prov", None)})
    segments = markdown.split(placeholder)
    per_page = {n: "" for n in range(first, last + 1)}
    for page_no, segment in zip(pages_with_items, segments):
        per_page[page_no] = segment.strip()
    return [per_page[n] for n in range(first, last + 1)]


def _converter(artifacts_path: Path | None, parser_threads: int):
    from docling.datamodel.base_models import InputFormat
    from docling.document_converter import DocumentConverter, NativePdfFormatOption, PdfFormatOption

    if artifacts_path is None:
        from docling.datamodel.pipeline_options import NativePdfPipelineOptions

        option = NativePdfFormatOption(
            pipeline_options=NativePdfPipelineOptions(parser_threads=parser_threads)
        )
    else:
        from docling.datamodel.pipeline_options import PdfPipelineOptions

        option = PdfFormatOption(
            pipeline_options=PdfPipelineOptions(artifacts_path=artifacts_path, do_ocr=False)
        )
    return DocumentConverter(format_options={InputFormat.PDF: option})


def render(pages: list[str]) -> str:
    units = [f"{PAGE_MARKER.format(n)}\n\n{text}".rstrip() for n, text in enumerate(pages, 1)]
    return f"\n\n{BOUNDARY}\n\n".join(units) + "\n"


def read_pdf(doc: DocInput, storage: Storage) -> bytes:
    """The document's bytes, exactly those that were listed (its id is made from their hash)."""
    ref = doc.document
    try:
        data = storage.read_bytes(ref.source_uri)
    except ObjectNotFound as exc:
        raise DocumentError(f"{ref.source_uri}: the file was removed from the inbox after it was listed") from exc
    if hashlib.sha256(data).hexdigest() != ref.content_sha256:
        raise DocumentError(
            f"{ref.source_uri}: the file changed after it was listed; the next run ingests the new version"
        )
    return data


def split(doc: DocInput, settings: PipelineSettings) -> list[Part]:
    """Page ranges of ``extract_pages_per_part`` pages; a bad PDF fails here, named with its cause."""
    pages = check_pdf(read_pdf(doc, Storage(settings)), doc.document.source_uri)
    step = settings.extract_pages_per_part
    return [
        {"first": first, "last": min(first + step - 1, pages), "units": min(step, pages - first + 1)}
        for first in range(1, pages + 1, step)
    ]


class PageConverter:
    """Holds one Docling converter; converts a page range of a PDF to Markdown pages."""

    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings
        self._storage = Storage(settings)
        self._converter = _converter(settings.docling_artifacts_path, settings.docling_parser_threads)
        self._folder = tempfile.TemporaryDirectory(prefix="extract-")
        # The last document's PDF on local disk: its next parts need no new download.
        self._cached: tuple[str, Path] | None = None

    def _local_pdf(self, doc: DocInput) -> Path:
        doc_id = doc.document.doc_id
        if self._cached and self._cached[0] == doc_id:
            return self._cached[1]
        if self._cached:
            self._cached[1].unlink(missing_ok=True)
        path = Path(self._folder.name) / f"{doc_id}.pdf"
        path.write_bytes(read_pdf(doc, self._storage))
        self._cached = (doc_id, path)
        return path

    def __call__(self, doc: DocInput, part: Part) -> dict[str, Any]:
        from docling.datamodel.base_models import ConversionStatus
        from docling_core.types.doc import PictureItem, TableItem

        uri, first, last = doc.document.source_uri, part["first"], part["last"]
        result = self._converter.convert(self._local_pdf(doc), raises_on_error=False, page_range=(first, last))
        if result.status not in (ConversionStatus.SUCCESS, ConversionStatus.PARTIAL_SUCCESS):
            errors = "; ".join(e.error_message for e in result.errors) or str(result.status)
            raise BadFileError(f"{uri}: Docling could not convert pages {first}-{last} ({errors})")
        for error in result.errors:
            log.warning("%s: %s", uri, error.error_message)
        document = result.document
        if self._settings.docling_artifacts_path is None:
            pages = _native_pages(document, first, last)
        else:
            pages = _standard_pages(document, first, last)
        items = [item for item, _ in document.iterate_items()]
        return {
            "pages": pages,
            "pictures": sum(isinstance(i, PictureItem) for i in items),
            "tables": sum(isinstance(i, TableItem) for i in items),
            "page_errors": len(result.errors),
        }


def assemble(ctx: AssembleContext, payloads: list[dict[str, Any]]) -> tuple[Outputs, Metrics]:
    pages = [page for payload in payloads for page in payload["pages"]]
    if not any(page.strip() for page in pages):
        raise BadFileError(
            f"{ctx.document.source_uri}: no text layer on any of its {len(pages)} page(s) "
            "(a scan? OCR needs the standard pipeline: set PIPELINE_DOCLING_ARTIFACTS_PATH)"
        )
    uri = ctx.write_text("document.md", render(pages))
    markdown_tables = sum(line.startswith("| --- |") for page in pages for line in page.splitlines())
    return {"markdown": uri}, {
        "pages": len(pages),
        "pages_with_text": sum(1 for page in pages if page.strip()),
        "pictures": sum(p["pictures"] for p in payloads),
        "tables": sum(p["tables"] for p in payloads) + markdown_tables,
        "characters": sum(len(page) for page in pages),
        "page_errors": sum(p["page_errors"] for p in payloads),
    }
