"""Bad input files, and tricky-but-valid inbox keys, for tests of the pipeline's failure paths.

``bad_inputs`` builds, in memory, one file of each kind a user may drop into the inbox that
must not be ingested: empty, cut off, not a PDF at all, locked, without text, without pages,
corrupt, too big. Each comes with the inbox key to drop it under and a regex that the error
the pipeline records for it must match, so a test can check that a file fails *for its
reason*, not merely that it fails. ``tricky_valid_keys`` lists inbox keys (spaces, non-ASCII,
URL-special characters, folders) under which a good PDF must still go through.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

from fpdf import FPDF
from fpdf.enums import EncryptionMethod

# The messages of ``include.stages.extract`` (check_pdf and assemble) and of the planner.
EMPTY = r"the file is empty \(0 bytes\)"
NOT_A_PDF = r"not a PDF \(it starts with .*, not '%PDF-'\)"
ENCRYPTED = r"the PDF is encrypted \(password-protected\)"
CORRUPT = r"the PDF is corrupt and cannot be opened \(PDFium: data format error\)"
NO_PAGES = r"the PDF has no pages"
NO_TEXT = r"no text layer on any of its 1 page\(s\)"
OVER_THE_LIMIT = r"\d+ bytes is over the limit of \d+ \(PIPELINE_MAX_DOCUMENT_BYTES\)"

OVERSIZED_KEY = "oversized.pdf"
# The oversized file is this much bigger than the limit it is built for.
OVERSIZE_MARGIN = 1024


@dataclass(frozen=True)
class BadInput:
    """A file that must not be ingested, the inbox key to drop it under, and why it fails."""

    key: str
    data: bytes
    cause: str  # a regex the recorded error must match


def bad_inputs(good_pdf: bytes, *, size_limit: int) -> list[BadInput]:
    """One bad file of each kind; ``good_pdf`` is a valid small PDF with a text layer.

    ``size_limit`` is the ``PIPELINE_MAX_DOCUMENT_BYTES`` the oversized file must exceed;
    keep it small in tests, the file is built in memory.
    """
    return [
        BadInput("zero-bytes.pdf", b"", EMPTY),
        BadInput("truncated.pdf", truncated(good_pdf), CORRUPT),
        BadInput("page.html.pdf", html_page(), NOT_A_PDF),
        BadInput("photo.png.pdf", png_image(), NOT_A_PDF),
        BadInput("aes256.pdf", locked_pdf(EncryptionMethod.AES_256), ENCRYPTED),
        BadInput("rc4-locked.pdf", locked_pdf(EncryptionMethod.RC4), ENCRYPTED),
        BadInput("scan-no-text.pdf", pdf_without_text(), NO_TEXT),
        BadInput("zero-pages.pdf", pdf_without_pages(), NO_PAGES),
        BadInput("corrupt.pdf", corrupt_pdf(), CORRUPT),
        BadInput(OVERSIZED_KEY, padded(good_pdf, size_limit + OVERSIZE_MARGIN), OVER_THE_LIMIT),
        BadInput(
            "notes.txt", b"Meeting notes, 3 March\n- budget approved\n- next review in May\n", NOT_A_PDF
        ),
        BadInput("report.docx.pdf", docx_document(), NOT_A_PDF),
    ]


def tricky_valid_keys() -> list[str]:
    """Inbox keys a good PDF must ingest under: they trip up naive URI and path handling."""
    return [
        "Jahresbericht Müller 2026.pdf",
        "SCAN 0042.PDF",
        "site/2026/report (final).pdf",
        "q&a #3 ?50%.pdf",
    ]


def truncated(pdf: bytes) -> bytes:
    """The first 40% of the file: its cross-reference table and trailer are gone."""
    return pdf[: len(pdf) * 40 // 100]


def html_page() -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head><title>Annual report</title></head>\n"
        b"<body><h1>Annual report</h1><p>Saved from the browser as report.pdf.</p></body></html>\n"
    )


def png_image() -> bytes:
    """A valid 2x2 RGB PNG, written chunk by chunk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    width, height = 2, 2
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    row = b"\x00" + b"\xff\x00\x00" * width  # filter type 0, then red pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def locked_pdf(method: EncryptionMethod) -> bytes:
    """A text PDF that needs a user password to open."""
    pdf = FPDF()
    pdf.set_encryption(owner_password="owner-secret", user_password="user-secret", encryption_method=method)
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text="Confidential: salaries 2026")
    return bytes(pdf.output())


def pdf_without_text() -> bytes:
    """One page of drawings and an image, no text: what a scan looks like without OCR."""
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 50)
    pdf.circle(x=60, y=120, radius=30)
    pdf.image(io.BytesIO(png_image()), x=20, y=170, w=40)
    return bytes(pdf.output())


def pdf_without_pages() -> bytes:
    """A well-formed PDF whose page tree is empty, with an exact cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def corrupt_pdf() -> bytes:
    """A PDF header, then objects that are not PDF syntax, and no catalog, xref or trailer."""
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage\n2 0 obj\n\x00\xff\x13 not a dictionary ]]>>\nendobj\n"


def padded(pdf: bytes, size: int) -> bytes:
    """``pdf`` made ``size`` bytes long by comment lines after its ``%%EOF``: still a valid PDF."""
    padding = size - len(pdf)
    if padding < 3:
        raise ValueError(f"a {len(pdf)}-byte PDF cannot be padded to {size} bytes")
    # Lines of 80 bytes, each a comment: cut anywhere, the last line still starts with "%".
    comments = (b"%" + b"x" * 78 + b"\n") * (padding // 80 + 1)
    return pdf + b"\n" + comments[: padding - 2] + b"\n"


def docx_document() -> bytes:
    """A minimal Word document (a ZIP archive) saved under a ``.pdf`` name."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as docx:
        docx.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType='
            '"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
            "</Types>",
        )
        docx.writestr(
            "word/document.xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            "<w:body><w:p><w:r><w:t>Quarterly report</w:t></w:r></w:p></w:body></w:document>",
        )
    return archive.getvalue()
