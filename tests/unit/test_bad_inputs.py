"""Every kind of bad file from ``tests.bad_inputs`` fails extract for its own reason, named with
its key; a good PDF goes through under every tricky key. Extract only, in this process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from include.settings import PipelineSettings
from include.stages.extract import check_pdf
from tests.bad_inputs import (
    OVERSIZE_MARGIN,
    OVERSIZED_KEY,
    BadInput,
    bad_inputs,
    tricky_valid_keys,
)
from tests.helpers import drop, run_until

# Small, so the oversized file is cheap to build; the planner compares against this number.
SIZE_LIMIT = 64 * 1024
GOOD_SAMPLE = "site_operations_handbook.pdf"

# The keys do not depend on the PDF the files are made from, so any PDF names the test cases
# at collection time, before the sample PDFs exist.
_KEYS = [bad.key for bad in bad_inputs(b"%PDF-1.7\n%%EOF\n", size_limit=0)]
FAILING_KEYS = [key for key in _KEYS if key != OVERSIZED_KEY]


@pytest.fixture(scope="module")
def bad_by_key(sample_pdfs: dict[str, Path]) -> dict[str, BadInput]:
    good_pdf = sample_pdfs[GOOD_SAMPLE].read_bytes()
    return {bad.key: bad for bad in bad_inputs(good_pdf, size_limit=SIZE_LIMIT)}


@pytest.mark.parametrize("key", FAILING_KEYS)
def test_a_bad_file_fails_extract_as_a_bad_file_naming_its_key_and_cause(
    key: str, bad_by_key: dict[str, BadInput], settings: PipelineSettings, tmp_path: Path
) -> None:
    bad = bad_by_key[key]
    path = tmp_path / "upload"
    path.write_bytes(bad.data)
    manifest = run_until(settings, drop(settings, path, bad.key), "extract")["extract"]
    assert manifest.status == "failed"
    assert manifest.bad_file is True
    assert re.search(rf"{re.escape(bad.key)}: {bad.cause}", manifest.error), manifest.error


def test_the_oversized_file_is_a_valid_pdf_just_over_the_limit(bad_by_key: dict[str, BadInput]) -> None:
    # Only its size is wrong: the planner, not extract, must be what turns it away.
    oversized = bad_by_key[OVERSIZED_KEY]
    assert len(oversized.data) == SIZE_LIMIT + OVERSIZE_MARGIN
    assert check_pdf(oversized.data, oversized.key) >= 1


@pytest.mark.parametrize("key", tricky_valid_keys())
def test_a_good_pdf_goes_through_extract_under_a_tricky_key(
    key: str, sample_pdfs: dict[str, Path], settings: PipelineSettings
) -> None:
    manifest = run_until(settings, drop(settings, sample_pdfs[GOOD_SAMPLE], key), "extract")["extract"]
    assert manifest.status == "succeeded", manifest.error
    assert manifest.metrics["pages_with_text"] >= 1


def test_the_bad_kinds_are_many_and_distinct(bad_by_key: dict[str, BadInput]) -> None:
    assert len(set(_KEYS)) == len(_KEYS) >= 10
    assert len({bad.data for bad in bad_by_key.values()}) == len(_KEYS)  # no two kinds are the same file
    assert len(set(tricky_valid_keys())) == len(tricky_valid_keys())
