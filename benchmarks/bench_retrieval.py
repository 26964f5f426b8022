"""Benchmark: retrieval quality, chunk shape and ingest time, for one or more checkouts, on one corpus.

The corpus is the demo's three sample PDFs plus real manuals installed by Debian's documentation
packages (``tools/manuals.py``): all of them in one store, so every question has distractors.
The question sets are this checkout's (``include/query/questions/*.jsonl``), so an older checkout
(``--project``, e.g. a ``git worktree`` of the commit before a change) is scored on the same
questions. For each checkout, in a child process with that checkout on its path:

- ingest the corpus in one process (``run_stages``, embedded Chroma), timed per stage;
- chunk shape: chunks, chunks per page, and the tokens each chunk puts before the embedder
  (the embedder's own tokenizer; max, p95, mean) and how many pass what it reads in one window;
- retrieval: hit@1, hit@5 and MRR per question set, for every retrieval mode the checkout has
  (dense only before hybrid search existed; dense and hybrid after, and hybrid + rerank when a
  cross-encoder is given with ``--rerank-model``).

    .venv/bin/python -m benchmarks.bench_retrieval                        # this checkout
    .venv/bin/python -m benchmarks.bench_retrieval --project /tmp/before --project .
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "include" / "query" / "questions"
QUESTION_SETS = ("samples", "libtasn1", "bzip2", "nettle")


def make_corpus(folder: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from tools.manuals import write_manuals
    from tools.sample_pdfs import write_samples

    return [*write_samples(folder), *write_manuals(folder)]


# --- child: one checkout -------------------------------------------------------------


def _percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(share * len(ordered)))]) if ordered else 0.0


def _modes(settings_class, rerank_model: str | None) -> list[dict]:
    fields = settings_class.model_fields
    if "retrieval_mode" not in fields:
        return [{"name": "dense"}]
    modes = [{"name": "dense", "retrieval_mode": "dense"}, {"name": "hybrid", "retrieval_mode": "hybrid"}]
    if rerank_model:
        modes.append({"name": "hybrid+rerank", "retrieval_mode": "hybrid", "rerank_model": rerank_model})
    return modes


def run_child(corpus: Path, question_files: list[Path]) -> dict:
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""})
    from include import retrieval
    from include.backends.embedders import build_embedder
    from include.documents import discover
    from include.query.evaluation import expected_rank, load_question_set, retrieval_metrics
    from include.settings import PipelineSettings
    from include.stages import chunk as chunk_stage
    from include.stages.local import run_stages
    from include.storage import Storage

    work = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    places = {"work_dir": work, "inbox_uri": corpus.resolve().as_uri() + "/",
              "artifacts_uri": (work / "artifacts").as_uri() + "/"}
    settings = PipelineSettings(**places)
    storage = Storage(settings)
    clock = time.perf_counter()
    documents, _ = discover(storage, settings.inbox_uri)
    results = run_stages(settings, documents, "load")
    ingest_seconds = time.perf_counter() - clock
    stages = {stage: round((r.finished_at - r.started_at).total_seconds(), 1) for stage, r in results.items()}
    failed = [o.error for r in results.values() for o in r.documents if o.status == "failed"]

    # What the embedder reads of each chunk: its text, with its headings once chunks carry them.
    embedding_text = getattr(chunk_stage, "embedding_text", lambda row: row["text"])
    embedder = build_embedder(settings)
    tokenizer, window = embedder._model.tokenizer, embedder.max_tokens - 2  # [CLS] and [SEP]
    tokens, chars = [], []
    for outcome in results["chunk"].succeeded:
        manifest = storage.read_json(outcome.manifest_uri)
        for line in storage.read_text(manifest["outputs"]["chunks"]).splitlines():
            row = json.loads(line)
            text = embedding_text(row)
            tokens.append(len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]))
            chars.append(len(text))
    pages = sum(o.metrics.get("pages", 0) for o in results["extract"].succeeded)

    sets = {path.stem: load_question_set(path).to_pylist() for path in question_files}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    search_ms: dict[str, float] = {}
    for mode in _modes(PipelineSettings, os.environ.get("BENCH_RERANK_MODEL")):
        mode_settings = PipelineSettings(**places, **{k: v for k, v in mode.items() if k != "name"})
        if hasattr(retrieval, "Searcher"):
            search = retrieval.Searcher(mode_settings)
        else:  # before hybrid search: the question's vector, then the store
            retriever = retrieval.Retriever(mode_settings)

            def search(question, _embed=embedder, _retrieve=retriever):
                return _retrieve(_embed.embed([question]).vectors[0].tolist())

        questions = 0
        clock = time.perf_counter()
        for set_name, rows in sets.items():
            ranks = []
            for row in rows:
                passages = [p.as_row() for p in search(row["prompt"])]
                ranks.append(expected_rank(passages, row["expected_source"], int(row["expected_page"])))
                questions += 1
            metrics = retrieval_metrics(ranks, [None] * len(ranks))
            scores.setdefault(set_name, {})[mode["name"]] = metrics
        search_ms[mode["name"]] = round(1000 * (time.perf_counter() - clock) / max(questions, 1), 1)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "ingest_seconds": round(ingest_seconds, 1), "stages": stages, "failed": failed, "pages": pages,
        "chunks": len(tokens), "chunks_per_page": round(len(tokens) / max(pages, 1), 2),
        "tokens_max": max(tokens, default=0), "tokens_p95": _percentile(tokens, 0.95),
        "tokens_mean": round(statistics.fmean(tokens), 1) if tokens else 0.0,
        "over_window": sum(t > window for t in tokens), "window": window,
        "chars_max": max(chars, default=0), "chars_p95": _percentile(chars, 0.95),
        "scores": scores, "search_ms": search_ms,
    }


# --- parent: every checkout, one table ------------------------------------------------


def measure(project: Path, corpus: Path, question_files: list[Path], rerank_model: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "STACK_"))}
    env["PYTHONPATH"] = str(project)
    if rerank_model:
        env["BENCH_RERANK_MODEL"] = rerank_model
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(corpus), *map(str, question_files)],
        cwd=project, env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{project}: the run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict]) -> str:
    lines = ["| checkout | ingest s | extract | chunk | enrich | embed | load | pages | chunks | chunks/page "
             "| tokens max | p95 | mean | over window | chars max | p95 |", "|" + "---|" * 16]
    for name, r in results.items():
        s = r["stages"]
        lines.append(f"| {name} | {r['ingest_seconds']} | {s.get('extract')} | {s.get('chunk')} | {s.get('enrich')} "
                     f"| {s.get('embed')} | {s.get('load')} | {r['pages']} | {r['chunks']} | {r['chunks_per_page']} "
                     f"| {r['tokens_max']} | {r['tokens_p95']:.0f} | {r['tokens_mean']} "
                     f"| {r['over_window']} (> {r['window']}) | {r['chars_max']} | {r['chars_p95']:.0f} |")
    base_name, base = next(iter(results.items()))
    for name, r in list(results.items())[1:]:
        lines.append(f"\ningest seconds {name} / {base_name}: {r['ingest_seconds'] / base['ingest_seconds']:.2f}; "
                     f"chunks {r['chunks'] / max(base['chunks'], 1):.2f}")
    lines += ["", "| checkout | mode | question set | questions | hit@1 | hit@5 | MRR | ms per question |",
              "|" + "---|" * 8]
    for name, r in results.items():
        for set_name, modes in r["scores"].items():
            for mode, m in modes.items():
                lines.append(f"| {name} | {mode} | {set_name} | {m.get('eval_questions', 0):.0f} | {m.get('hit@1', 0):.2f} "
                             f"| {m.get('hit@5', 0):.2f} | {m.get('mrr', 0):.3f} | {r['search_ms'][mode]} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_child(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, action="append",
                        help="a checkout to measure (repeat for before/after; default: this one)")
    parser.add_argument("--sets", default=",".join(QUESTION_SETS), help="question sets, comma-separated")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument("--rerank-model", help="also measure hybrid search reranked by this cross-encoder "
                        "(a local folder: no package ships one)")
    args = parser.parse_args()
    projects = [p.resolve() for p in (args.project or [ROOT])]
    question_files = [QUESTIONS / f"{name}.jsonl" for name in args.sets.split(",")]
    corpus = Path(tempfile.mkdtemp(prefix="bench-retrieval-corpus-"))
    try:
        paths = make_corpus(corpus)
        print(f"corpus: {len(paths)} PDFs ({', '.join(p.name for p in paths)})", flush=True)
        results = {}
        for project in projects:
            name = project.name if project != ROOT else "this checkout"
            print(f"measuring {name} ...", flush=True)
            results[name] = measure(project, corpus, question_files, args.rerank_model)
            if results[name]["failed"]:
                print(f"  documents that failed: {results[name]['failed']}")
        print(report(results))
        if args.output:
            args.output.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(corpus, ignore_errors=True)


if __name__ == "__main__":
    main()
