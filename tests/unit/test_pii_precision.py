"""What is not PII stays: lines of real, PII-free technical manuals (the precision corpus,
``tools/precision_corpus.py``) that an earlier version of the shape rules redacted, each as the
manual prints it; and the labelled phone formats, which must still be found."""

from __future__ import annotations

import random

import pytest

from include.pii_shapes import find_pii, is_ip_address
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
    ("27 1.2.19.1 OpenMP support . . . 28", "1.2.19.1", False),  # R-exts' table of contents
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
