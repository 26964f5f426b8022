"""What is not PII stays: lines of real, PII-free technical manuals (the precision corpus,
``tools/precision_corpus.py``) that an earlier version of the shape rules redacted, each as the
manual prints it; and the labelled phone formats, which must still be found."""

from __future__ import annotations

import random

import pytest

from include.pii_shapes import find_pii, is_ip_address, isbn_valid
from tests.pii_corpus import PHONE_MAKERS

NOT_PII = [
    # R-data: a data table of five-digit measurements (a row lost four values to one "phone").
    "Status Age V1 V2 V3 V4\nP 23646 45190 50333 55166 56271\nCC 26174 35535 38227 37911 41184",
    "ind X1 P 23646 45190 V1 X2 CC 26174 35535 V1",
    "dist climb time\nGreenmantle 2.5 650 16.083",  # a name and three measurements
    "Springer, ISBN 0-387-95457-0, https://www.stats.ox.ac.uk/",  # ISBN-10
    "New York: Springer, ISBN 978-0-387-75935-7.",  # ISBN-13
    "Age: 20 35 45 55 70\nNo. tested: 50 50 50 50 50",  # R-intro
    "5.28 3.37 3.03 3.03 28.95 3.77 3.40 2.20",
    "1.1 1.2 1.3 1.4 5.0 6 7 8 9 10 11 12 13 14 15 16 17 18",  # version numbers, then a list
    "100.0 25.22 0.2 0.04 \"boot\"\n17.4 4.38 0.7 0.18 \"sapply\"",  # R-exts: profiler output
    "samples % symbol name\n1623 75.5939 anonymous symbol\n54670 8.6198 Rf_findVarInFrame3",
    "step factor 0.000488281 reduced below 'minFactor' of 0.000976563",
    "TSXP g0c1 [NAM(2)] (len=2, tl=1) -2147483648,-3",
    "M_LN10 ln(10) 2.3025851\nM_SQRT_32 sqrt(32) 5.6568542",
    "Penguin population in Antarctica since 1965\n1965 103\n1970 55\n1975 34\n1980 24\n1985 10",  # gnuplot
    "set ytics(12345) # \"+12345.000 \"",
    "0 0 5 0 30 1\n0 0 5 30 70 2\n0 0 5 70 120 3",
    "value=\"1 2 840 10040 4 3\" , len=1",  # libtasn1: an object identifier
    "00000020 00 05 64 69 66 66 09 0a 3e 30 3d 00 0a",  # shared-mime-info: a hex dump
    # References: a bare ISBN-13 that also passes a card's Luhn check, ISBN-10s with an X, a DOI.
    "Springer. ISBN 9780387954578.",
    "ISBN-10: 0-8044-2957-X; ISBN 080442957X",
    "J. Stat. Softw. doi:10.18637/jss.v059.i10 and https://doi.org/10.1007/978-0-387-21706-2_14",
]


@pytest.mark.parametrize("text", NOT_PII)
def test_data_tables_references_code_and_numeric_output_are_not_pii(text):
    assert find_pii(text) == []


@pytest.mark.parametrize("variant", sorted(PHONE_MAKERS))
def test_every_labelled_phone_format_is_still_found_in_prose_a_table_cell_and_after_a_phone_word(variant):
    rng = random.Random(variant)
    for _ in range(25):
        value = PHONE_MAKERS[variant](rng)
        for text in (f"Call the desk on {value} before noon.", f"| Pharmacy | {value} |", f"Tel: {value}",
                     f"on {value}, 14:00"):
            assert [span.kind for span in find_pii(text)] == ["PHONE"], text


@pytest.mark.parametrize(("text", "value", "address"), [
    ("x[::4] and y[1::2]", "::4", False),  # slices
    ("std::vector<int> a; b::c", "b::c", False),  # a C++ scope
    ("the loopback ::1", "::1", False),
    ("see version 1.2.3.4", "1.2.3.4", False),
    ("from 2001:db8::ff00:42:8329 at", "2001:db8::ff00:42:8329", True),
    ("host 192.168.1.20 refused", "192.168.1.20", True),
    ("27 1.2.19.1 OpenMP support . . . 28", "1.2.19.1", False),
    ("plot 'file' matrix every ::3:0:7:4 # submatrix", "::3:0:7:4", False),  # gnuplot, in reserved space
    ("the link-local fe80::1ff:fe23:4567:890a of eth0", "fe80::1ff:fe23:4567:890a", True),
    ("connected to ::1 on port 8080", "::1", True),  # reserved space, but a word says address
    ("an IPv4-mapped ::ffff:192.0.2.1 peer", "::ffff:192.0.2.1", True),  # R-exts' table of contents
    ("queries went to the DNS 8.8.8.8 first", "8.8.8.8", True),
    ("the gateway at 10.0.0.1 dropped it", "10.0.0.1", True),
])
def test_an_ip_address_is_one_only_when_written_as_an_address(text, value, address):
    start = text.index(value)
    assert is_ip_address(text, start, start + len(value)) is address


def test_a_national_number_must_be_a_valid_one_unless_dialled_with_its_country_code_or_named_a_phone():
    # 451 is no area code in use: printed like a phone, it is still not one, until someone says it is.
    assert find_pii("Lot 451-905-0333 passed inspection.") == []
    assert [span.kind for span in find_pii("Tel: 451-905-0333")] == ["PHONE"]
    assert [span.kind for span in find_pii("Lot +1 451-905-0333 passed.")] == ["PHONE"]


@pytest.mark.parametrize(("number", "valid"), [
    ("0-387-95457-0", True), ("978-0-387-75935-7", True), ("0-8044-2957-X", True), ("9780387954578", True),
    ("0-387-95457-1", False), ("212-555-0142", False), ("4111 1111 1111 1111", False),
])
def test_an_isbn_is_told_by_its_check_character(number, valid):
    assert isbn_valid(number) is valid


def test_what_only_looks_like_an_isbn_is_still_looked_at():
    # 16 digits that pass Luhn and are no ISBN: a card, ISBN word or not.
    assert [span.kind for span in find_pii("ISBN 4111111111111111")] == ["CREDIT_CARD"]
    # A phone and a list number read as ISBN-10 groups, with a check digit that holds (2555090983).
    assert [span.kind for span in find_pii("mobile: +61 2 5550 9098 3. Unblinding line")] == ["PHONE"]


def test_a_redaction_marker_is_not_the_word_that_makes_nine_digits_an_ssn():
    text = "Escalation: [REDACTED:SSN] on file.\nS-20260330-9420 326756902 February 12, 2026"
    assert find_pii(text) == []
    assert [span.kind for span in find_pii(text.replace("[REDACTED:SSN]", "the SSN"))] == ["SSN"]


def test_a_column_headed_like_a_phone_names_the_numbers_in_it():
    table = ("| Site | Fax | Lot |\n|---|---|---|\n"
             "| Leeds | 555-0142 | 451-905-0333 |\n| York | 2125550199 | 7 |")
    found = [table[span.start : span.end] for span in find_pii(table)]
    # Seven digits and bare digits count under a "Fax" header; the lot number beside them does not.
    assert found == ["555-0142", "2125550199"]
    assert find_pii(table.replace("Fax", "Dose")) == []


def test_no_false_redaction_in_the_precision_corpus(tmp_path):
    """The precision corpus (``tools.precision_corpus``: twelve PII-free manuals, six held out from
    tuning) through the enricher's redaction: no PHONE, SSN, card, IBAN or IP address redaction in any
    page, in either split (the goal is under one per 1,000 pages; there are 1,190). The text is the PDFs'
    text layer, page by page; ``benchmarks/bench_pii.py --precision`` runs Docling's text through the
    stages. spaCy reads only the pages where some recognizer's pattern matches: its context can raise a
    match's score, never make one, so no other page can be redacted (and it reads 1,190 pages in 100 s)."""
    import pypdfium2

    from include.backends.enrichers import LocalEnricher
    from include.settings import PipelineSettings
    from tools.precision_corpus import write_corpus

    enricher = LocalEnricher(PipelineSettings())
    wanted = [entity for entity in enricher.entities if entity != "EMAIL_ADDRESS"]  # e-mails are meant to go
    pages: dict[str, int] = {}
    candidates: list[tuple[str, int, str]] = []
    for split, pdfs in write_corpus(tmp_path).items():
        pages[split] = 0
        for pdf in pdfs:
            document = pypdfium2.PdfDocument(pdf)
            for number in range(len(document)):
                text = document[number].get_textpage().get_text_range()
                pages[split] += 1
                if any(recognizer.analyze(text, wanted, None) for recognizer in enricher.recognizers(wanted)):
                    candidates.append((split, f"{pdf.name} p{number + 1}", text))
    assert pages == {"tuning": 770, "held_out": 420}
    false = [(split, page, kind) for (split, page, _), enrichment in zip(
        candidates, enricher.enrich_many([text for _, _, text in candidates]))
        for kind, count in enrichment.redactions.items() if kind != "EMAIL" and count]
    assert false == []
