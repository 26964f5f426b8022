"""Benchmark of redaction quality: recall and precision of the enrich stage on the labelled PII corpus.

The corpus (``tests/pii_corpus.py``) is generated into a scratch folder: PDFs of clinical
site reports, each with a truth file of every PII value it holds and of the numbers that
must survive (dates, doses, protocol and sample ids, page numbers...). The documents go
through extract, chunk and enrich in one process, with the enricher of this checkout or
of another one (``--project``, a ``git worktree`` of an older commit: the before of a
before/after comparison). Then, per PII kind, placement and format:

- **recall**: the share of labelled PII values found nowhere downstream of enrichment
  (chunk text, heading, entities, key phrases), matched as the leak audit matches them;
- **kept**: the share of non-PII numbers that survive redaction verbatim (a redactor that
  blanks every number would score 0 here);
- **redactions**: markers written per kind, against the values there are.

Then, with ``--precision``, the other side on real documents: the precision corpus
(``tools/precision_corpus.py``, PII-free technical manuals from Debian's packages, tuning and
held-out reported apart) through the same stages, and every redaction but an e-mail's counted as
false: per kind, per 1,000 pages, and the Markdown table rows it damaged, with examples.

    .venv/bin/python -m benchmarks.bench_pii [--documents 12] [--project DIR] [--precision]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MARKER = re.compile(r"\[REDACTED:([A-Z_]+)\]")


def enrich_child(corpus: Path, out: Path) -> None:
    """Runs in the project under test: every PDF through extract, chunk and enrich; the
    enriched rows of each document to ``out/<pdf name>.jsonl``."""
    from include.documents import discover
    from include.settings import PipelineSettings
    from include.stages.local import run_stages
    from include.storage import Storage

    work = Path(tempfile.mkdtemp(prefix="bench-pii-"))
    settings = PipelineSettings(work_dir=work, inbox_uri=corpus.as_uri() + "/",
                                artifacts_uri=(work / "artifacts").as_uri() + "/")
    storage = Storage(settings)
    documents, _ = discover(storage, settings.inbox_uri)
    documents = [d for d in documents if d.source_uri.endswith(".pdf")]
    clock = time.perf_counter()
    results = run_stages(settings, documents, "enrich")
    seconds = time.perf_counter() - clock
    names = {d.doc_id: d.name for d in documents}
    pages = {names[o.doc_id]: int(o.metrics.get("pages", 0)) for o in results["extract"].succeeded}
    for outcome in results["enrich"].documents:
        if outcome.status != "succeeded":
            raise RuntimeError(f"{outcome.source_uri}: {outcome.error}")
        manifest = storage.read_json(outcome.manifest_uri)
        rows = storage.read_jsonl(manifest["outputs"]["chunks"])
        (out / f"{names[outcome.doc_id]}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps({"seconds": seconds, "documents": len(documents), "pages": pages}))


def _texts(row: dict) -> list[str]:
    return [row.get("text") or "", row.get("heading") or "", json.dumps(row.get("entities") or {}),
            json.dumps(row.get("key_phrases") or [])]


def evaluate(corpus: Path, enriched: Path) -> dict:
    from include.audit import TruthMatcher

    pii: dict[tuple[str, str, str], list[bool]] = defaultdict(list)  # (kind, placement, variant) -> caught?
    kept: dict[str, list[bool]] = defaultdict(list)  # variant -> survived?
    markers: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    for truth_path in sorted(corpus.glob("*.truth.json")):
        truth = json.loads(truth_path.read_text())
        rows = [json.loads(line) for line in (enriched / f"{truth_path.name.removesuffix('.truth.json')}.pdf.jsonl")
                .read_text().splitlines()]
        texts = [text for row in rows for text in _texts(row)]
        flat = " ".join(" ".join(text.split()) for text in texts)
        for row in rows:
            markers.update(_MARKER.findall(row["text"]))
        for item in truth:
            if item["kind"] == "KEEP":
                kept[item["variant"]].append(" ".join(item["value"].split()) in flat)
                continue
            labelled[item["kind"]] += 1
            matcher = TruthMatcher([item])
            leaked = any(True for text in texts for _ in matcher.find(text))
            pii[(item["kind"], item["placement"], item["variant"])].append(not leaked)
    return {"pii": pii, "kept": kept, "markers": markers, "labelled": labelled}


def _share(values: list[bool]) -> str:
    return f"{sum(values)}/{len(values)} ({sum(values) / len(values):.1%})" if values else "-"


def report(name: str, result: dict) -> None:
    pii, kept = result["pii"], result["kept"]
    print(f"\n==> {name}")
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_placement: dict[str, list[bool]] = defaultdict(list)
    for (kind, placement, _variant), caught in pii.items():
        by_kind[kind] += caught
        by_placement[placement] += caught
    print("recall by kind:      " + "; ".join(f"{k} {_share(v)}" for k, v in sorted(by_kind.items())))
    print("recall by placement: " + "; ".join(f"{k} {_share(v)}" for k, v in sorted(by_placement.items())))
    missed = sorted((k, p, v, len(c) - sum(c)) for (k, p, v), c in pii.items() if not all(c))
    for kind, placement, variant, count in missed:
        print(f"  missed {count} x {kind} {variant} in {placement}")
    all_kept = [value for values in kept.values() for value in values]
    print(f"non-PII numbers kept: {_share(all_kept)}")
    for variant, values in sorted(kept.items()):
        if not all(values):
            print(f"  lost {len(values) - sum(values)} of {len(values)} {variant}")
    # Marker names are the kinds' names ([REDACTED:PHONE]...).
    print("markers / labelled values: " + "; ".join(
        f"{kind} {result['markers'].get(kind, 0)}/{n}" for kind, n in sorted(result["labelled"].items())))


# In the precision corpus every redaction but an e-mail address's is a false one.
_TRUE_IN_PRECISION_CORPUS = {"EMAIL"}
_TABLE_ROW = re.compile(r"^\|.*\|$", re.MULTILINE)


def precision(enriched: Path, pages: dict[str, int]) -> dict:
    """Redactions made in PII-free manuals, by kind (all false but e-mail addresses), per 1,000 pages;
    the table rows a false one damaged; examples of each kind, with what stands around them."""
    markers: Counter[str] = Counter()
    rows_damaged, rows = 0, 0
    examples: dict[str, list[str]] = defaultdict(list)
    for path in sorted(enriched.glob("*.jsonl")):
        for row in (json.loads(line) for line in path.read_text().splitlines()):
            for match in _MARKER.finditer(row["text"]):
                markers[match.group(1)] += 1
                context = " ".join(row["text"][max(0, match.start() - 50): match.end() + 30].split())
                examples[match.group(1)].append(f"{path.name.removesuffix('.pdf.jsonl')}: …{context}…")
            for table_row in _TABLE_ROW.findall(row["text"]):
                rows += 1
                rows_damaged += any(kind not in _TRUE_IN_PRECISION_CORPUS for kind in _MARKER.findall(table_row))
    total_pages = sum(pages.values())
    false = sum(n for kind, n in markers.items() if kind not in _TRUE_IN_PRECISION_CORPUS)
    return {"pages": total_pages, "markers": markers, "false": false,
            "false_per_1000_pages": 1000 * false / total_pages if total_pages else 0.0,
            "table_rows": rows, "table_rows_damaged": rows_damaged, "examples": examples}


def report_precision(name: str, result: dict, shown: int) -> None:
    print(f"\n==> {name}: {result['pages']} pages")
    print(f"false redactions: {result['false']} ({result['false_per_1000_pages']:.1f} per 1,000 pages); by kind: "
          + ", ".join(f"{kind} {n}" for kind, n in sorted(result["markers"].items())))
    print(f"table rows damaged by a false redaction: {result['table_rows_damaged']} of {result['table_rows']}")
    for kind, found in sorted(result["examples"].items()):
        if kind in _TRUE_IN_PRECISION_CORPUS:
            continue
        for example in found[:shown]:
            print(f"  {kind}: {example}")


def run_project(project: Path, corpus: Path) -> tuple[dict, dict]:
    timing, out = enrich_corpus(project, corpus)
    return timing, evaluate(corpus, out)


def enrich_corpus(project: Path, corpus: Path) -> tuple[dict, Path]:
    """Every PDF of ``corpus`` through extract, chunk and enrich with ``project``'s code, in a child
    process; its timing and pages, and the folder of the enriched rows."""
    out = Path(tempfile.mkdtemp(prefix="bench-pii-out-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "STACK_"))}
    env.update(TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # Run as a script with the project first on the path: its ``include`` package is the one measured.
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--enrich-child", str(corpus), str(out)],
                          cwd=project, env={**env, "PYTHONPATH": str(project)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"enriching the corpus with {project} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pii", description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--project", type=Path, action="append", default=[],
                        help="also measure this checkout's enricher (repeatable); this one is always measured")
    parser.add_argument("--precision", action="store_true",
                        help="also the precision corpus (tools/precision_corpus.py: real PII-free manuals, "
                        "tuning and held-out apart): false redactions per 1,000 pages, table rows damaged")
    parser.add_argument("--examples", type=int, default=10, help="false redactions shown per kind")
    parser.add_argument("--enrich-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.enrich_child:
        enrich_child(*args.enrich_child)
        return 0

    from tests.pii_corpus import write_corpus

    corpus = Path(tempfile.mkdtemp(prefix="bench-pii-corpus-"))
    write_corpus(corpus, seed=args.seed, documents=args.documents)
    print(f"corpus: {len(list(corpus.glob('*.pdf')))} PDFs in {corpus}")
    for project in [*args.project, ROOT]:
        timing, result = run_project(project.resolve(), corpus)
        report(f"{project.resolve()} ({timing['seconds']:.1f}s to extract, chunk and enrich)", result)
    if args.precision:
        from tools.precision_corpus import write_corpus as write_manuals

        manuals = Path(tempfile.mkdtemp(prefix="bench-pii-precision-"))
        splits = write_manuals(manuals)
        for project in [*args.project, ROOT]:
            for split in splits:
                timing, out = enrich_corpus(project.resolve(), manuals / split)
                report_precision(f"{project.resolve()}, precision corpus, {split} "
                                 f"({', '.join(p.name for p in splits[split])})",
                                 precision(out, timing["pages"]), args.examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
