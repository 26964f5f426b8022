"""Benchmark: the Markdown view of every page, exported once per document vs. page by page.

Docling's ``export_to_markdown(page_no=n)`` walks the whole document for each page, so
exporting page by page costs pages x document: quadratic. The extract stage exports once,
with page-break markers, and splits (``page_markdown``). Both run here, in the same process,
on the same DoclingDocument (rebuilt from the text layer as the stage does); the script
prints their times and the ratio (baseline / ours), and how long rebuilding the structure took.

    .venv/bin/python -m benchmarks.bench_extract [--pages 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path


def make_pdf(path: Path, pages: int) -> Path:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_font("Helvetica", size=11)
    for page in range(pages):
        pdf.add_page()
        for paragraph in range(6):
            pdf.multi_cell(0, 6, f"Page {page + 1}, paragraph {paragraph + 1}. " + "Lorem ipsum dolor sit amet. " * 12)
            pdf.ln(3)
    pdf.output(str(path))
    return path


def timed(fn, repeat: int) -> tuple[float, int]:
    """Median seconds over ``repeat`` runs, and the peak traced memory of one run."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from include.stages.extract import _converter, page_markdown
    from include.stages.layout import build_document, native_pages

    with tempfile.TemporaryDirectory() as tmp:
        pdf = make_pdf(Path(tmp) / "bench.pdf", args.pages)
        result = _converter(None, 1).convert(pdf)
    clock = time.perf_counter()
    doc = build_document("bench", native_pages(result, 1, args.pages))
    structure = time.perf_counter() - clock

    ours, ours_peak = timed(lambda: page_markdown(doc, args.pages), args.repeat)
    baseline, base_peak = timed(
        lambda: [doc.export_to_markdown(page_no=n) for n in range(1, args.pages + 1)], args.repeat
    )
    print(f"pages: {args.pages}, items: {len(list(doc.iterate_items()))}, structure rebuilt in {structure:.3f} s")
    print(f"baseline  export_to_markdown per page : {baseline:8.3f} s  peak {base_peak / 1e6:7.1f} MB")
    print(f"ours      one pass per document       : {ours:8.3f} s  peak {ours_peak / 1e6:7.1f} MB")
    print(f"speed-up (baseline / ours): {baseline / ours:.1f}x")


if __name__ == "__main__":
    main()
