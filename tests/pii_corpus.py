"""A labelled corpus of clinical site reports full of fake PII, made on the spot with fpdf2.

Each document comes with its truth: every PII value it prints (kind EMAIL, PHONE, SSN or
CREDIT_CARD) and every non-PII number that redaction must leave alone (kind KEEP: dates,
doses, protocol and sample ids, page numbers...), with where on the page it stands and in
which format. It measures the enrich stage's recall (no PII value may reach the vector
store) and precision (the KEEP values must survive).

The values vary the way real site reports do: US and international phone formats with
extensions, SSNs with dashes, spaces, dots or none (Presidio rejects some published
samples, which is the point), Luhn-valid card numbers of several networks and groupings,
e-mail addresses with tags, subdomains, capitals and digits. They stand in running prose,
table cells, page headers and footers, bulleted lists, wrapped over two lines, broken at a
hyphen at the line end, two side by side, and right next to another value that will
become a redaction marker.

All of it is fake: e-mail domains are example.com/.org/.net, US numbers are 555-01xx,
UK numbers come from Ofcom's drama range (020 7946 0xxx, 07700 900xxx), French and
Australian ones from the ranges their regulators keep for fiction, card numbers use test
prefixes. SSNs are the published samples or random shape-valid numbers.

Two rules keep the truth checkable. Within a document no labelled value is a substring of
another, so finding a value in a text means finding that one. And a value broken over two
lines is always broken at the separator nearest its middle, so ``pieces`` can tell where
the line break falls from the value alone.

Run ``python -m tests.pii_corpus <folder>`` to write the corpus out.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from include.pii_shapes import luhn_valid

KEEP = "KEEP"
PLACEMENTS = (
    "prose", "table", "header", "footer", "list", "wrapped", "hyphenated", "side_by_side", "next_to_marker",
)
# Placements whose value is printed over two lines: ``pieces`` gives the two parts.
BROKEN_PLACEMENTS = ("wrapped", "hyphenated")


@dataclass(frozen=True)
class Labelled:
    kind: str  # "EMAIL" | "PHONE" | "SSN" | "CREDIT_CARD" for PII; "KEEP" for non-PII that must survive
    value: str  # exactly as printed in the PDF (before any line wrapping)
    # One of PLACEMENTS. A KEEP value takes the placement of the text it stands in, but
    # "prose" beside a wrapped, hyphenated or side-by-side value.
    placement: str
    variant: str  # the format, e.g. "uk_plus_trunk_zero", "card_amex_spaces", "date_iso", "dose"


@dataclass(frozen=True)
class CorpusDocument:
    filename: str
    pdf: bytes
    truth: list[Labelled]


def pieces(label: Labelled) -> tuple[str, ...]:
    """The value as it stands on the page: for a wrapped value the two lines either side of
    the space nearest its middle, for a hyphenated one the two lines either side of the
    break after the hyphen nearest its middle (the hyphen stays on the first line); for any
    other placement the whole value."""
    if label.placement not in BROKEN_PLACEMENTS:
        return (label.value,)
    separator = " " if label.placement == "wrapped" else "-"
    cut = _break_index(label.value, separator)
    if separator == " ":
        return label.value[:cut], label.value[cut + 1:]
    return label.value[: cut + 1], label.value[cut + 1:]


def _break_index(value: str, separator: str) -> int:
    inner = [i for i, char in enumerate(value) if char == separator and 0 < i < len(value) - 1]
    if not inner:
        raise ValueError(f"{value!r} has no {separator!r} to break at")
    return min(inner, key=lambda i: abs(i - len(value) / 2))


# --- value makers: variant -> function of the random source --------------------------

Maker = Callable[[random.Random], str]

_US_AREA_CODES = ("212", "415", "617", "312", "206", "713", "305", "404", "303", "646", "718", "503")


def _us(rng: random.Random, layout: str) -> str:
    # 555-0100 to 555-0199 are the numbers set aside for fiction.
    return layout.format(a=rng.choice(_US_AREA_CODES), line=f"01{rng.randrange(100):02d}")


def _digits(rng: random.Random, count: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(count))


PHONE_MAKERS: dict[str, Maker] = {
    "us_parens": lambda r: _us(r, "({a}) 555-{line}"),
    "us_dashes": lambda r: _us(r, "{a}-555-{line}"),
    "us_dots": lambda r: _us(r, "{a}.555.{line}"),
    "us_spaces": lambda r: _us(r, "{a} 555 {line}"),
    "us_plus1_spaces": lambda r: _us(r, "+1 {a} 555 {line}"),
    "us_plus1_dashes": lambda r: _us(r, "+1-{a}-555-{line}"),
    "us_plus1_dots": lambda r: _us(r, "+1.{a}.555.{line}"),
    "us_ext": lambda r: _us(r, "{a}-555-{line} ext. ") + str(r.randrange(2, 400)),
    "us_x_ext": lambda r: _us(r, "({a}) 555-{line} x") + _digits(r, 4),
    # Ofcom's drama ranges: 020 7946 0000-0999 and 07700 900000-900999.
    "uk_plus_spaces": lambda r: f"+44 20 7946 0{_digits(r, 3)}",
    "uk_plus_trunk_zero": lambda r: f"+44 (0)20 7946 0{_digits(r, 3)}",
    "uk_0044": lambda r: f"0044 20 7946 0{_digits(r, 3)}",
    "uk_national": lambda r: f"020 7946 0{_digits(r, 3)}",
    "uk_mobile": lambda r: f"+44 7700 900{_digits(r, 3)}",
    "de_plus": lambda r: f"+49 30 {r.randrange(2, 10)}{_digits(r, 6)}",
    "de_plus_trunk_zero": lambda r: f"+49 (0)30 {r.randrange(2, 10)}{_digits(r, 6)}",
    # ARCEP keeps 01 99 00 xx xx for fiction.
    "fr_plus": lambda r: f"+33 1 99 00 {_digits(r, 2)} {_digits(r, 2)}",
    "fr_national": lambda r: f"01 99 00 {_digits(r, 2)} {_digits(r, 2)}",
    "in_plus": lambda r: f"+91 9{_digits(r, 4)} {_digits(r, 5)}",
    # ACMA keeps 02 5550 xxxx and 03 7010 xxxx for fiction.
    "au_plus": lambda r: f"+61 2 5550 {_digits(r, 4)}",
    "au_plus_melbourne": lambda r: f"+61 3 7010 {_digits(r, 4)}",
}

# Published sample SSNs (an SSA leaflet, the Woolworth wallet card, the textbook one):
# Presidio's own recognizer rejects the last two as invalid whatever their separators.
_PUBLISHED_SSNS = ("219-09-9999", "078-05-1120", "123-45-6789")


def _ssn_digits(rng: random.Random) -> tuple[str, str, str]:
    """A shape-valid SSN: area 001-899 but not 666, group 01-99, serial 0001-9999."""
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}", f"{rng.randrange(1, 100):02d}", f"{rng.randrange(1, 10000):04d}"


SSN_MAKERS: dict[str, Maker] = {
    "ssn_dashes": lambda r: "-".join(_ssn_digits(r)),
    "ssn_spaces": lambda r: " ".join(_ssn_digits(r)),
    "ssn_dots": lambda r: ".".join(_ssn_digits(r)),
    "ssn_plain": lambda r: "".join(_ssn_digits(r)),
    "ssn_published_sample": lambda r: r.choice(_PUBLISHED_SSNS),
    "ssn_published_sample_spaces": lambda r: r.choice(_PUBLISHED_SSNS).replace("-", " "),
}


def _card_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("one of ten check digits always passes")


def _grouped(number: str, sizes: tuple[int, ...], separator: str) -> str:
    groups, start = [], 0
    for size in sizes:
        groups.append(number[start: start + size])
        start += size
    return separator.join(groups)


CARD_MAKERS: dict[str, Maker] = {
    "card_spaces": lambda r: _grouped(_card_number(r, "4111", 16), (4, 4, 4, 4), " "),
    "card_dashes": lambda r: _grouped(_card_number(r, "4111", 16), (4, 4, 4, 4), "-"),
    "card_plain": lambda r: _card_number(r, "4111", 16),
    "card_mastercard_spaces": lambda r: _grouped(_card_number(r, "5500", 16), (4, 4, 4, 4), " "),
    "card_discover_dashes": lambda r: _grouped(_card_number(r, "6011", 16), (4, 4, 4, 4), "-"),
    "card_amex_spaces": lambda r: _grouped(_card_number(r, r.choice(("34", "37")), 15), (4, 6, 5), " "),
    "card_amex_plain": lambda r: _card_number(r, r.choice(("34", "37")), 15),
}

_FIRST_NAMES = (
    "Maria", "James", "Priya", "Kenji", "Amara", "Lukas", "Sofia", "Daniel", "Aisha", "Tomas",
    "Elena", "Omar", "Hannah", "Rahul", "Chloe", "Mateo", "Ingrid", "Samuel", "Leila", "Victor",
)
_LAST_NAMES = (
    "Alvarez", "Okafor", "Raghunathan", "Tanaka", "Lindqvist", "Braun", "Morel", "Castillo", "Haddad",
    "Novak", "Petrova", "Farouk", "Whitfield", "Iyer", "Dubois", "Serrano", "Halvorsen", "Mensah",
    "Karimi", "Moreau",
)
_ROLE_MAILBOXES = ("pharmacy.desk", "safety-desk", "unblinding", "studyteam", "irb.office", "lab.shipping")
_ORGANISATIONS = ("northwind", "lakeside-med", "cedar-park", "bayfront", "hillcrest")


def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)


def _email_maker(layout: Callable[[random.Random, str, str], str]) -> Maker:
    """An e-mail maker from a layout of (random source, first name, last name), in lower case."""

    def make(rng: random.Random) -> str:
        first, last = _person(rng)
        return layout(rng, first.lower(), last.lower())

    return make


EMAIL_MAKERS: dict[str, Maker] = {
    "email_plain": _email_maker(
        lambda r, first, last: f"{first}.{last}@{r.choice(('example.com', 'example.org', 'example.net'))}"
    ),
    "email_plus_tag": _email_maker(
        lambda r, first, last: f"{first}.{last}+{r.choice(('trial', 'met204', 'site12', 'sae'))}"
        f"@{r.choice(('sub', 'trials', 'sites', 'research'))}.example.org"
    ),
    "email_upper": _email_maker(
        lambda r, first, last: f"{first[0]}.{last}@{r.choice(('example.net', 'example.com'))}".upper()
    ),
    "email_hyphen_digits": _email_maker(
        lambda r, first, last: f"{first}-{last}{r.randrange(2, 99)}@site-{r.randrange(10, 99)}.example.net"
    ),
    "email_underscore": _email_maker(
        lambda r, first, last: f"{first[0]}_{last}{r.randrange(1, 9)}@example.org"
    ),
    "email_role": lambda r: f"{r.choice(_ROLE_MAILBOXES)}@{r.choice(_ORGANISATIONS)}.example.com",
}

PII_MAKERS: dict[str, dict[str, Maker]] = {
    "EMAIL": EMAIL_MAKERS, "PHONE": PHONE_MAKERS, "SSN": SSN_MAKERS, "CREDIT_CARD": CARD_MAKERS,
}


def _a_date(rng: random.Random) -> date:
    return date(2025, 9, 1) + timedelta(days=rng.randrange(240))


def _long_date(day: date) -> str:
    return f"{day:%B} {day.day}, {day.year}"


KEEP_MAKERS: dict[str, Maker] = {
    "date_iso": lambda r: _a_date(r).isoformat(),
    "date_dmy": lambda r: _a_date(r).strftime("%d/%m/%Y"),
    "date_long": lambda r: _long_date(_a_date(r)),
    "date_dd_mon": lambda r: _a_date(r).strftime("%d-%b-%Y"),
    "dose": lambda r: r.choice((
        f"{r.choice((250, 500, 850, 1000, 1500, 2000))} mg",
        f"{r.choice((1000, 1500, 2000, 2550))} mg/day",
        f"{r.choice(('0.5', '1.0', '2.5', '0.25'))} mL",
        f"{r.choice((2, 5, 10, 20, 40, 80))} mg/kg",
        f"{r.choice((75, 100, 135))} mg/m²",
        f"{r.choice((10, 12, 24, 36))} units",
        f"{r.choice((50, 125, 400))} µg",
    )),
    "protocol": lambda r: f"{r.choice(('MET', 'CARD', 'ONC', 'RESP', 'NEPH'))}-{r.randrange(100, 999)}",
    "nct_number": lambda r: f"NCT0{_digits(r, 7)}",
    "lot": lambda r: f"L{r.randrange(2024, 2027)}-{r.randrange(100, 9999):04d}{r.choice('ABC')}",
    "sample_id": lambda r: f"S-{_a_date(r):%Y%m%d}-{r.randrange(1, 9999):04d}",
    "kit_number": lambda r: f"KIT-{r.randrange(100000, 999999)}",
    # Bare 8-10 digit numbers: the lab's accession numbers look like that.
    "accession_number": lambda r: str(r.randrange(10_000_000, 9_999_999_999)),
    "subject_id": lambda r: f"{r.randrange(100, 999)}-{r.randrange(1, 9999):04d}",
    "visit_week": lambda r: r.choice((f"Week {r.randrange(1, 53)}", f"Day {r.randrange(1, 366)}")),
    "percentage": lambda r: f"{r.randrange(50, 1000) / 10:.1f}%",
    "lab_value": lambda r: r.choice((
        f"HbA1c {r.randrange(55, 110) / 10:.1f}%",
        f"eGFR {r.randrange(30, 110)} mL/min/1.73 m²",
        f"LDL-C {r.randrange(14, 60) / 10:.1f} mmol/L",
        f"ALT {r.randrange(8, 90)} U/L",
    )),
    "zip": lambda r: f"{r.randrange(1000, 99999):05d}",
    "zip_plus4": lambda r: f"{r.randrange(1000, 99999):05d}-{r.randrange(1, 9999):04d}",
    "time": lambda r: f"{r.randrange(7, 19):02d}:{r.choice(('00', '15', '30', '45'))}",
    "version": lambda r: f"v{r.randrange(1, 6)}.{r.randrange(0, 10)}",
    "temperature": lambda r: r.choice(
        ("2-8 °C", "-80 °C", "15-25 °C", "-20 °C", "-70 °C", "+4 °C", "2 to 8 °C", "below 30 °C", "-196 °C")
    ),
    "blood_pressure": lambda r: f"{r.randrange(105, 165)}/{r.randrange(60, 100)} mmHg",
    "weight": lambda r: f"{r.randrange(480, 1200) / 10:.1f} kg",
    "amount": lambda r: f"{r.choice(('USD', 'EUR', 'GBP'))} {r.randrange(20, 250)}.{r.choice(('00', '50'))}",
}
# A template's {date} slot takes any of the date formats.
_DATE_VARIANTS = ("date_iso", "date_dmy", "date_long", "date_dd_mon")

# One sample of each PII variant: the formats are fixed, so one tells which placements fit.
_SHAPES = {
    (kind, variant): make(random.Random(0))
    for kind, makers in PII_MAKERS.items()
    for variant, make in makers.items()
}


def _fits(placement: str, kind: str, shape: str) -> bool:
    if placement == "wrapped":
        return " " in shape.strip()
    if placement == "hyphenated":
        # Extraction re-joins a word hyphenated at a line end when the next line starts in
        # lower case, so a hyphenated e-mail comes out without its hyphen: never generated.
        return kind != "EMAIL" and "-" in shape[1:-1]
    return True


# --- the text around the values -------------------------------------------------------
#
# Slots: {PHONE} {EMAIL} {SSN} {CARD} take a PII value, lower-case slots a KEEP value
# (KEEP_MAKERS' names, or {date}), and a few others the document's own people and places.

_PROSE = (
    ("The monitoring visit to Site {site} in {city} took place on {date} from {time}. {coordinator}, the "
     "study coordinator, can be reached at {EMAIL} or on {PHONE}; the principal investigator, {pi}, "
     "prefers {PHONE} for anything urgent."),
    ("Source data verification covered {percentage} of the consent forms signed since {date}. One "
     "enrolment log still showed a full social security number, {SSN}, next to subject {subject_id}; "
     "the coordinator masked it during the visit and the finding was logged as a protocol deviation."),
    ("Dispensing records for {drug} were complete. Lot {lot} was released on {date} and the pharmacy "
     "confirmed that the {dose} packs are stored at {temperature}. Temperature excursions are phoned "
     "in to {PHONE} and confirmed in writing to {EMAIL} the same day."),
    ("One serious adverse event was reported since the last visit: a hospital admission for dehydration "
     "on {date}. The event was entered within 24 hours and the narrative was sent to {EMAIL}. The "
     "sponsor's safety physician asked for a call back on {PHONE} before {time}."),
    ("A participant paid the taxi fare for {visit_week} with a personal card, {CARD}, and the receipt "
     "was filed in the shadow chart by mistake. The receipt was removed; the reimbursement of {amount} "
     "goes through the site's petty cash from now on."),
    ("Central laboratory results were reviewed with {pi}. The mean {lab_value} at {visit_week} is close "
     "to baseline; sample {sample_id} was haemolysed and re-drawn on {date}. Questions about shipping go "
     "to {EMAIL}, fax {PHONE}."),
    ("Blood pressure at screening was {blood_pressure} and body weight {weight}; the dose was adjusted "
     "to {dose} in line with the protocol amendment {version}. The dietitian, {EMAIL} or {PHONE}, will see "
     "the participant again at {visit_week}."),
    ("The courier collected {kit_number} on {date} at {time}. The airway bill lists the laboratory's "
     "receiving desk, {PHONE}, and the sender's mobile, {PHONE}. Accession number {accession_number} was "
     "confirmed by e-mail from {EMAIL}."),
    ("Participant stipends need a tax identifier. For subject {subject_id} the W-9 form lists {SSN}; the "
     "stipend card issued to the same participant is {CARD}. Both forms are now kept in the locked "
     "cabinet of the coordinators' office."),
    ("The remote monitor, {monitor}, will review the updated delegation log before {date}. Send the "
     "scanned pages to {EMAIL} rather than to {EMAIL}, which is no longer read, and phone {PHONE} "
     "if the upload portal is down."),
    ("Drug accountability: {dose} was dispensed to subject {subject_id} on {date}, and compliance "
     "of {percentage} was calculated from the returned tablets. The pharmacist, on {PHONE}, reconciled "
     "lot {lot} against the shipment record of {date}."),
    ("The emergency contact card of subject {subject_id} lists {PHONE} as the home number and {PHONE} for "
     "a relative abroad. It had been photocopied together with the participant's credit card, {CARD}, "
     "and the copy was shredded on {date}."),
    ("The trial is registered as {nct_number}. Recruitment stands at {percentage} of the site's target; "
     "{pi} expects the last participant in by {date} and asks that referrals be sent to {EMAIL} "
     "or faxed to {PHONE}."),
    ("The screening log for ZIP code {zip} shows two referrals from the community clinic. Its nurse, "
     "reachable on {PHONE}, will send the records by {date}; the clinic's postal address ends in "
     "{zip_plus4}."),
)

_LIST_ITEMS = (
    "Pharmacy after hours: {PHONE} (from {time})",
    "Safety desk: {EMAIL}, fax {PHONE}",
    "Unblinding line, 24/7: {PHONE}",
    "Shipping queries: {EMAIL}, quoting sample {sample_id}",
    "Subject {subject_id}: SSN {SSN} on the payment form, consented {date}",
    "Petty cash card on file: {CARD} (limit {amount})",
    "Interpreter service: {PHONE}; bookings by e-mail to {EMAIL}",
    "Ethics committee office: {EMAIL}, amendment {version} approved on {date}",
    "Back-up coordinator mobile: {PHONE}",
    "Radiology scheduling: {PHONE}, slots at {time}",
)

_SIDE_BY_SIDE = (
    "For urgent matters call {PHONE}/{PHONE} between {time} and 17:00.",
    "The two night nurses on the delegation log ({PHONE};{PHONE}) cover the weekend infusions.",
    "Copy both monitors ({EMAIL},{EMAIL}) on every deviation report.",
    "The duplicate stipend cards {CARD} / {CARD} were both cancelled on {date}.",
    "The SSNs {SSN}/{SSN} had been swapped on two payment forms and were corrected.",
    "Switchboard numbers {PHONE}, {PHONE} both reach the research pharmacy.",
)

# Each value stands right against another, the way it will stand against a redaction marker.
_NEXT_TO_MARKER = (
    "Reach the coordinator at {EMAIL} {PHONE} {time}-17:00 on weekdays.",
    "Sender: {EMAIL}/{PHONE} on {date}, regarding {kit_number}.",
    "Escalation: {EMAIL},{PHONE};{PHONE}",
    "Payment line copied from the ledger: {subject_id} {SSN} {CARD} {amount}",
    "The fax header read {PHONE} {date} {time} and page 1 carried {EMAIL}{PHONE}.",
    "Pharmacy: {PHONE} {dose} {lot}",
)

# (the kind of {VALUE}, the sentence)
_HYPHENATED = (
    ("PHONE", ("Out-of-hours questions about dosing go to the on-call pharmacist, whose direct line is "
               "{VALUE}, and not to the general switchboard.")),
    ("SSN", ("The consent form of subject {subject_id} carried the participant's social security number "
             "{VALUE} in the margin; it was blacked out on {date}.")),
    ("CREDIT_CARD", ("The hotel booked for the travelling participant was paid with the site's purchasing "
                     "card {VALUE}, and the invoice is filed with the visit records.")),
    ("PHONE", "The sponsor's medical monitor can be paged through {VALUE} during the dose-escalation weeks."),
)

# (the kind of {VALUE}, the note)
_CALLOUTS = (
    ("PHONE", "Unblinding hotline, 24/7: {VALUE}. Quote the subject number."),
    ("PHONE", "Study pharmacist, emergencies only: {VALUE}"),
    ("CREDIT_CARD", "Reimbursement card on file: {VALUE}"),
    ("SSN", "SSN for the stipend form: {VALUE}"),
    ("PHONE", "Courier pick-up desk: {VALUE} before {time}"),
)

_PROTOCOLS = (
    ("MET-204", "extended-release metformin"),
    ("CARD-317", "bempedoic acid"),
    ("ONC-1182", "adjuvant pembrolizumab"),
    ("RESP-045", "tiotropium"),
    ("NEPH-220", "dapagliflozin"),
    ("DERM-611", "dupilumab"),
)
_CITIES = (
    "Boston", "Chicago", "Seattle", "Houston", "London", "Berlin", "Paris", "Mumbai", "Sydney", "Denver",
)
_ROLES = ("Principal investigator", "Study coordinator", "Research pharmacist", "Sub-investigator",
          "Data manager", "Regulatory officer", "Laboratory manager")


class _SiteReportPdf(FPDF):
    """An A4 report whose every page carries the document's header and footer lines."""

    def __init__(self, header_cells: tuple[str, str], footer_text: str, body_font: str) -> None:
        super().__init__(format="A4")
        self.header_cells = header_cells
        self.footer_text = footer_text
        self.body_font = body_font
        # A fixed date keeps the bytes, and so the document id, the same on every run.
        self.set_creation_date(datetime(2026, 1, 1, tzinfo=UTC))
        self.set_auto_page_break(auto=True, margin=20)

    def header(self) -> None:
        self.set_font("Helvetica", "", 8)
        left, right = self.header_cells
        if right:  # two cells far apart on one line
            self.cell(0, 5, left)
            self.set_x(self.l_margin)
            self.cell(0, 5, right, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        else:
            self.cell(0, 5, left, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(5)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("Helvetica", "", 8)
        # {nb} is fpdf2's alias for the page count, filled in when the file is written.
        self.cell(0, 5, f"{self.footer_text} · Page {self.page_no()} of {{nb}}", align="C")


class _DocumentBuilder:
    """Writes one report and records every labelled value it prints."""

    def __init__(self, rng: random.Random, variant_use: Counter, index: int) -> None:
        self.rng = rng
        self.variant_use = variant_use
        self.index = index
        self.labels: list[Labelled] = []
        protocol, drug = rng.choice(_PROTOCOLS)
        self.city = _CITIES[index % len(_CITIES)]
        self.filename = f"site_report_{index + 1:02d}_{self.city.lower()}.pdf"
        self.context = {
            "site": str(rng.randrange(10, 99)), "city": self.city, "drug": drug,
            "pi": "Dr. {} {}".format(*_person(rng)), "coordinator": "{} {}".format(*_person(rng)),
            "monitor": "{} {}".format(*_person(rng)),
        }
        self.sections = 0
        header_protocol = self._keep("protocol", "header", value=protocol)
        header_version = self._keep("version", "header")
        hotline = self.pii("PHONE", "header")
        site_line = f"{header_protocol} · Site {self.context['site']} {self.city} · Monitoring report"
        site_line += f" {header_version}"
        if rng.random() < 0.5:  # the hotline right-aligned, far from the rest
            header_cells = (site_line, f"Site hotline {hotline}")
        else:
            header_cells = (f"{site_line} · Site hotline {hotline}", "")
        if rng.random() < 0.5:
            footer_text = f"Confidential · Safety desk {self.pii('PHONE', 'footer')}"
        else:
            contact = self.pii("EMAIL", "footer")
            footer_text = f"Questions: {contact} · Printed {self._keep('date_iso', 'footer')}"
        self.pdf = _SiteReportPdf(header_cells, footer_text, rng.choice(("Helvetica", "Times")))
        self.title = f"Site Monitoring Visit Report: {protocol}, {drug}"

    # -- values --

    def _claim(self, make: Callable[[], str]) -> str:
        """A fresh value: no labelled value of this document contains it or is contained in it."""
        for _ in range(200):
            value = make()
            if not any(value in label.value or label.value in value for label in self.labels):
                return value
        raise RuntimeError("could not draw a value that is not part of another: widen the makers")

    def _pick_variant(self, kind: str, placement: str) -> str:
        """The least used variant (over the whole corpus) that can stand in this placement."""
        fitting = [v for v in PII_MAKERS[kind] if _fits(placement, kind, _SHAPES[kind, v])]
        return min(fitting, key=lambda v: (self.variant_use[kind, v], self.rng.random()))

    def pii(self, kind: str, placement: str) -> str:
        variant = self._pick_variant(kind, placement)
        self.variant_use[kind, variant] += 1
        value = self._claim(lambda: PII_MAKERS[kind][variant](self.rng))
        self.labels.append(Labelled(kind, value, placement, variant))
        return value

    def _keep(self, variant: str, placement: str, value: str | None = None) -> str:
        if variant == "date":
            variant = self.rng.choice(_DATE_VARIANTS)
        value = value or self._claim(lambda: KEEP_MAKERS[variant](self.rng))
        self.labels.append(Labelled(KEEP, value, placement, variant))
        return value

    def fill(self, template: str, placement: str, keep_placement: str | None = None) -> str:
        """The template with its slots filled; KEEP values get ``keep_placement`` if given."""
        kinds = {"PHONE": "PHONE", "EMAIL": "EMAIL", "SSN": "SSN", "CARD": "CREDIT_CARD"}

        def slot(match: re.Match) -> str:
            name = match.group(1)
            if name in kinds:
                return self.pii(kinds[name], placement)
            if name in self.context:
                return self.context[name]
            return self._keep(name, keep_placement or placement)

        return re.sub(r"\{(\w+)\}", slot, template)

    # -- layout --

    def heading(self, text: str) -> None:
        self.sections += 1
        self.pdf.ln(2)
        self.pdf.set_font(self.pdf.body_font, "B", 13)
        self.pdf.multi_cell(0, 7, f"{self.sections}. {text}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.pdf.ln(1)

    def paragraph(self, text: str, width: float = 0, border: int = 0) -> None:
        self.write_lines(text, width, border)
        self.pdf.ln(3)

    def write_lines(self, text: str, width: float = 0, border: int = 0) -> None:
        """Body text, ragged right: justified lines stretch their spaces past extraction's
        cell gap, and a stretched value comes out split into table cells."""
        self.pdf.set_font(self.pdf.body_font, "", 10.5)
        self.pdf.multi_cell(
            width, 5.5, text, border=border, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
        )

    def table(self, rows: list[tuple[str, ...]]) -> None:
        """A table sized to its text. Mostly roomy, so that extraction, which splits a line
        into cells at gaps of 12 pt, keeps the cells apart; sometimes compact (and always
        when the page is too narrow for room), where neighbouring cells merge into one."""
        pdf = self.pdf
        padding = 1.2
        widths = []
        for column in range(len(rows[0])):
            widest = 0.0
            for number, row in enumerate(rows):
                pdf.set_font("Helvetica", "B" if number == 0 else "", 9)
                widest = max(widest, *(pdf.get_string_width(line) for line in row[column].split("\n")))
            widths.append(widest + 2 * padding + 0.5)
        # Text to text, neighbouring cells are 2 * padding + 0.5 mm (8 pt) apart, plus the slack.
        room = max(0.0, (pdf.epw - sum(widths)) / len(widths) - 0.01)
        slack = min(7.0, room) if self.rng.random() < 0.75 else 0.0
        widths = [w + slack for w in widths]
        pdf.set_font("Helvetica", "", 9)
        with pdf.table(col_widths=widths, width=sum(widths), align="LEFT", v_align="TOP", padding=padding,
                       line_height=5, first_row_as_headings=True) as table:
            for cells in rows:
                row = table.row()
                for cell in cells:
                    row.cell(cell)
        pdf.ln(4)

    # -- sections --

    def summary(self) -> None:
        self.heading("Visit summary")
        for template in self.rng.sample(_PROSE, 2):
            self.paragraph(self.fill(template, "prose"))

    def contacts(self) -> None:
        """Role | Name | E-mail | Phone | From: the phone right next to the e-mail. One phone
        may be wrapped inside its cell, as a narrow column does."""
        self.heading("Site contacts")
        rows = [("Role", "Name", "E-mail", "Phone", "From")]
        wrapped_row = self.rng.randrange(1, 5) if self.rng.random() < 0.6 else None
        for number, role in enumerate(self.rng.sample(_ROLES, 4), 1):
            email = self.pii("EMAIL", "table")
            if number == wrapped_row:
                self.pii("PHONE", "wrapped")
                first, second = pieces(self.labels[-1])
                phone = f"{first}\n{second}"
            else:
                phone = self.pii("PHONE", "table")
            rows.append((role, "{} {}".format(*_person(self.rng)), email, phone, self._keep("time", "table")))
        self.table(rows)

    def routing(self) -> None:
        self.heading("Contact routing")
        bullet = self.rng.choice(("-", "·", "*", "1."))
        for number, template in enumerate(self.rng.sample(_LIST_ITEMS, 5), 1):
            mark = f"{number}." if bullet == "1." else bullet
            self.write_lines(f"{mark} {self.fill(template, 'list')}")
        self.pdf.ln(3)

    def enrolment(self) -> None:
        self.heading("Enrolment and consent")
        self.paragraph("Subjects whose payment forms were checked during the visit:")
        rows = [("Subject", "SSN", "Consented", "Visit", "Dose")]
        for _ in range(4):
            rows.append((
                self._keep("subject_id", "table"), self.pii("SSN", "table"), self._keep("date", "table"),
                self._keep("visit_week", "table"), self._keep("dose", "table"),
            ))
        self.table(rows)

    def accountability(self) -> None:
        self.heading("Investigational product")
        self.paragraph(self.fill(self.rng.choice(_PROSE[2:3] + _PROSE[10:11]), "prose"))
        # In turn, so that phones, SSNs and cards are all hyphenated somewhere in the corpus.
        self.hyphenated(*_HYPHENATED[self.index % len(_HYPHENATED)])

    def hyphenated(self, kind: str, template: str) -> None:
        """The value broken after a hyphen at a line end, as a typesetter that breaks at hyphens would."""
        self.pii(kind, "hyphenated")
        first, second = pieces(self.labels[-1])
        before, after = template.split("{VALUE}")
        self.paragraph(f"{self.fill(before, 'prose')}{first}\n{second}{self.fill(after, 'prose')}")

    def reimbursement(self) -> None:
        self.heading("Participant reimbursement")
        rows = [("Subject", "Stipend card", "Amount", "Issued")]
        for _ in range(3):
            rows.append((self._keep("subject_id", "table"), self.pii("CREDIT_CARD", "table"),
                         self._keep("amount", "table"), self._keep("date", "table")))
        self.table(rows)

    def callouts(self) -> None:
        """Narrow boxed notes whose width is chosen so the value wraps at its middle space."""
        self.heading("Notes for the site file")
        for kind, template in self.rng.sample(_CALLOUTS, 2):
            value = self.pii(kind, "wrapped")
            first, second = pieces(self.labels[-1])
            before, after = template.split("{VALUE}")
            text = f"{before}{value}{self.fill(after, 'prose')}"
            self.paragraph(text, width=self._width_breaking(text, first, second), border=1)

    def _width_breaking(self, text: str, first: str, second: str) -> float:
        """The narrowest box width at which fpdf2 ends a line with ``first`` and starts the
        next with ``second``, breaking lines only at spaces (too narrow a box splits words)."""
        self.pdf.set_font(self.pdf.body_font, "", 10.5)
        for tenth_mm in range(250, 1400, 5):
            lines = self.pdf.multi_cell(tenth_mm / 10, 5.5, text, align="L", dry_run=True, output="LINES")
            at_spaces = " ".join(line.strip() for line in lines) == text
            breaks_there = any(
                above.rstrip().endswith(first) and below.startswith(second)
                for above, below in pairwise(lines)
            )
            if at_spaces and breaks_there:
                return tenth_mm / 10
        raise RuntimeError(f"no box width breaks {text!r} between {first!r} and {second!r}")

    def follow_up(self) -> None:
        self.heading("Follow-up actions")
        for template in self.rng.sample(_SIDE_BY_SIDE, 2):
            self.paragraph(self.fill(template, "side_by_side", keep_placement="prose"))
        for template in self.rng.sample(_NEXT_TO_MARKER, 2):
            self.paragraph(self.fill(template, "next_to_marker"))

    def safety(self) -> None:
        self.heading("Safety and laboratory")
        for template in self.rng.sample(_PROSE[3:8], 2):
            self.paragraph(self.fill(template, "prose"))

    def visit_schedule(self) -> None:
        self.heading("Upcoming visits")
        rows = [("Visit", "Date", "Time", "Dose", "Kit", "Last result")]
        for _ in range(4):
            rows.append((
                self._keep("visit_week", "table"), self._keep("date", "table"), self._keep("time", "table"),
                self._keep("dose", "table"), self._keep("kit_number", "table"),
                self._keep("lab_value", "table"),
            ))
        self.table(rows)

    def shipments(self) -> None:
        """Sample and accession numbers, ZIP codes: digit runs a phone recognizer may take."""
        self.heading("Laboratory shipments")
        rows = [("Sample", "Accession", "Shipped", "ZIP", "Storage", "Courier")]
        for _ in range(3):
            rows.append((
                self._keep("sample_id", "table"), self._keep("accession_number", "table"),
                self._keep("date", "table"), self._keep(self.rng.choice(("zip", "zip_plus4")), "table"),
                self._keep("temperature", "table"), self.pii("PHONE", "table"),
            ))
        self.table(rows)

    # -- the document --

    def build(self, pages: int) -> CorpusDocument:
        # Sections per page. Every plan has every placement; longer reports add tables
        # of SSNs, cards, visits and shipments.
        first_page = [self.summary, self.contacts, self.routing]
        middle_page = [self.enrolment, self.accountability, self.callouts]
        plans = {
            2: [[self.summary, self.contacts],
                [self.routing, self.accountability, self.callouts, self.follow_up]],
            3: [first_page, middle_page, [self.reimbursement, self.follow_up, self.shipments]],
            4: [first_page, middle_page, [self.reimbursement, self.follow_up],
                [self.safety, self.visit_schedule, self.shipments]],
        }
        for number, sections in enumerate(plans[pages]):
            self.pdf.add_page()
            if number == 0:
                self.pdf.set_font(self.pdf.body_font, "B", 16)
                self.pdf.multi_cell(0, 8, self.title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                self.pdf.ln(3)
            for section in sections:
                section()
        total = self.pdf.page_no()
        self.labels += [
            Labelled(KEEP, f"Page {number} of {total}", "footer", "page_number")
            for number in range(1, total + 1)
        ]
        return CorpusDocument(self.filename, bytes(self.pdf.output()), list(self.labels))


def generate_corpus(seed: int = 7, documents: int = 12) -> list[CorpusDocument]:
    """``documents`` site reports of 2 to 4 pages, the same bytes and truth for the same seed."""
    rng = random.Random(seed)
    # Formats are handed out least-used first across the corpus, so every one appears evenly.
    variant_use: Counter = Counter()
    return [
        _DocumentBuilder(rng, variant_use, index).build(pages=2 + index % 3) for index in range(documents)
    ]


def write_corpus(folder: Path, **kwargs) -> list[Path]:
    """Write ``<name>.pdf`` and ``<name>.truth.json`` per document; the PDFs' paths.
    ``kwargs`` go to ``generate_corpus``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for document in generate_corpus(**kwargs):
        path = folder / document.filename
        path.write_bytes(document.pdf)
        # ASCII JSON (° and ² escaped): readable whatever encoding the reader assumes.
        truth = json.dumps([asdict(label) for label in document.truth], indent=1)
        path.with_suffix(".truth.json").write_text(truth + "\n", encoding="ascii")
        written.append(path)
    return written


def read_truth(pdf_path: Path) -> list[Labelled]:
    """The truth written next to a corpus PDF by ``write_corpus``."""
    truth = json.loads(pdf_path.with_suffix(".truth.json").read_text(encoding="utf-8"))
    return [Labelled(**item) for item in truth]


if __name__ == "__main__":
    import sys

    for written in write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "pii_corpus")):
        print(written)
