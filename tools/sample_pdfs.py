"""Small, realistic PDFs made on the spot (fpdf2): the demo's inputs and the tests' fixtures.

Every fact the tests check is in ``SAMPLES`` below, so expectations never drift from
the files. The PII in them is fake (example.com addresses, 555-01xx phone numbers,
SSNs from unissued ranges).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Section:
    heading: str
    paragraphs: tuple[str, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class SamplePdf:
    filename: str
    title: str
    pages: tuple[tuple[Section, ...], ...]
    pii: dict[str, str] = field(default_factory=dict)  # kind -> the literal text in the PDF


SAMPLES: tuple[SamplePdf, ...] = (
    SamplePdf(
        filename="metformin_trial_protocol.pdf",
        title="Protocol MET-204: Extended-Release Metformin in Early Type 2 Diabetes",
        pii={"EMAIL": "dr.alvarez@example.com", "PHONE": "(212) 555-0142", "SSN": "219-09-9999"},
        pages=(
            (
                Section(
                    "1. Study Overview",
                    (
                        "This phase II trial compares extended-release metformin with placebo in adults "
                        "diagnosed with type 2 diabetes within the last twelve months. The primary "
                        "endpoint is the change in HbA1c after 24 weeks of treatment.",
                        "Participants are randomised one to one. Neither participants nor site staff "
                        "know the assignment until the database is locked at the end of the study.",
                    ),
                ),
                Section(
                    "2. Contacts",
                    (
                        "The principal investigator is Dr. Maria Alvarez of Northwind Medical Center. "
                        "Questions about eligibility go to dr.alvarez@example.com or to the study "
                        "hotline at (212) 555-0142. The enrolment record of the first screened "
                        "participant lists SSN 219-09-9999 and must be kept in the locked cabinet.",
                    ),
                ),
            ),
            (
                Section(
                    "3. Dosing Schedule",
                    (
                        "Doses are titrated weekly. The maximum daily dose of metformin in this trial "
                        "is 2000 mg, taken with the evening meal. Doses are reduced when the estimated "
                        "glomerular filtration rate falls below 45.",
                    ),
                    table=(
                        ("Week", "Metformin dose", "Visit"),
                        ("1", "500 mg", "Baseline"),
                        ("2", "1000 mg", "Phone check"),
                        ("3", "1500 mg", "Clinic"),
                        ("4", "2000 mg", "Clinic"),
                    ),
                ),
                Section(
                    "4. Safety Monitoring",
                    (
                        "Lactic acidosis is rare but serious. Investigators stop metformin at once "
                        "when a participant shows signs of it, and report the event within 24 hours.",
                    ),
                ),
            ),
        ),
    ),
    SamplePdf(
        filename="site_operations_handbook.pdf",
        title="Site Operations Handbook",
        pii={"EMAIL": "pharmacy.desk@example.com", "PHONE": "+1 415 555 0199"},
        pages=(
            (
                Section(
                    "Sample Handling",
                    (
                        "Blood samples are centrifuged within 30 minutes of collection and stored "
                        "at minus 80 degrees Celsius. Each tube carries a barcode; handwritten labels "
                        "are not accepted by the central laboratory.",
                        "Shipments leave the site on Mondays and Wednesdays only, so that no package "
                        "spends a weekend in transit.",
                    ),
                ),
                Section(
                    "Pharmacy",
                    (
                        "The investigational product is kept in the pharmacy at 20 to 25 degrees. "
                        "Temperature excursions are reported to pharmacy.desk@example.com or by phone "
                        "on +1 415 555 0199 the same day.",
                    ),
                ),
            ),
        ),
    ),
    SamplePdf(
        filename="adverse_event_guide.pdf",
        title="Adverse Event Reporting Guide",
        pages=(
            (
                Section(
                    "What to Report",
                    (
                        "Every adverse event is recorded, whether or not it seems related to the study "
                        "drug. Serious adverse events are those that cause death, are life threatening, "
                        "need hospital admission or cause lasting disability.",
                    ),
                    table=(
                        ("Severity", "Reporting deadline"),
                        ("Serious", "24 hours"),
                        ("Non-serious", "Next monitoring visit"),
                    ),
                ),
                Section(
                    "Follow-up",
                    (
                        "Each event is followed until it resolves or stabilises. The sponsor may ask "
                        "for hospital discharge letters and laboratory results.",
                    ),
                ),
            ),
        ),
    ),
)


def render_pdf(sample: SamplePdf, path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    # A fixed date keeps the bytes, and so the document id, the same on every run.
    pdf.set_creation_date(datetime(2026, 1, 1, tzinfo=UTC))
    pdf.set_auto_page_break(auto=True, margin=20)
    for number, sections in enumerate(sample.pages):
        pdf.add_page()
        if number == 0:
            pdf.set_font("Helvetica", "B", 18)
            pdf.multi_cell(0, 10, sample.title)
            pdf.ln(4)
        for section in sections:
            pdf.set_font("Helvetica", "B", 14)
            pdf.multi_cell(0, 8, section.heading)
            pdf.ln(2)
            pdf.set_font("Helvetica", "", 11)
            for paragraph in section.paragraphs:
                pdf.multi_cell(0, 6, paragraph)
                pdf.ln(4)
            if section.table:
                with pdf.table(first_row_as_headings=True) as table:
                    for cells in section.table:
                        row = table.row()
                        for cell in cells:
                            row.cell(cell)
                pdf.ln(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


def write_samples(folder: Path) -> list[Path]:
    return [render_pdf(sample, folder / sample.filename) for sample in SAMPLES]


if __name__ == "__main__":
    import sys

    for written in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "samples")):
        print(written)
