"""Answer questions from the ingested documents.

    python -m include.query ask "What is the maximum daily dose of metformin?"
    python -m include.query evaluate                      # the sample question set, scored
    python -m include.query evaluate --retrieval-only --questions include/query/questions/bzip2.jsonl
    python -m include.query ask "What does -s do?" --document libtasn1.pdf --pages 9-11
    python -m include.query run --questions s3://documents/queries/q.parquet   # a Ray job's work

``ask`` and ``evaluate`` run the steps in this process; ``run`` is the entrypoint of the
job ``rag_batch_query`` submits, on Ray Data. Its result (outputs and metrics) goes to
``--result`` (default ``$JOB_RESULT_URI``, set by the Airflow operator per job).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import pyarrow as pa

from include.backends.vector_stores import Filter
from include.contract import JobResult, now
from include.query import evaluation
from include.query.pipeline import InlineAnswerer, answer_metrics, run_job
from include.query.report import format_answer, format_metrics
from include.retrieval import Searcher, passage_filter
from include.settings import get_settings
from include.storage import Storage

log = logging.getLogger("include.query")


def _where(args: argparse.Namespace) -> Filter | None:
    """``--where``, narrowed by ``--document`` and ``--pages`` when given."""
    pages = tuple(int(n) for n in args.pages.split("-", 1)) if args.pages else None
    if pages and len(pages) == 1:
        pages = (pages[0], pages[0])
    narrowed = passage_filter(args.document, pages)
    parts = [part for part in (args.where, narrowed) if part]
    return None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}


def _ask(args: argparse.Namespace) -> int:
    with InlineAnswerer(get_settings(), _where(args)) as answerer:
        answers = answerer(pa.table({"prompt": [args.question]}))
    row = answers.to_pylist()[0]
    print(json.dumps(row, indent=2, default=str) if args.json else format_answer(row))
    return 1 if row["error"] else 0


def _evaluate(args: argparse.Namespace) -> int:
    return (_evaluate_retrieval if args.retrieval_only else _evaluate_answers)(args)


def _evaluate_answers(args: argparse.Namespace) -> int:
    questions = evaluation.load_question_set(args.questions)
    clock = time.perf_counter()
    with InlineAnswerer(get_settings(), _where(args)) as answerer:
        answers = answerer(questions)
    metrics = answer_metrics(answers, time.perf_counter() - clock)
    print(f"{'question':<28} {'rank':>4}  phrase  answer")
    for row in answers.to_pylist():
        found = {True: "yes", False: "no", None: "-"}[row["answer_has_phrase"]]
        answer = " ".join(row["answer"].split())
        print(f"{row['id'][:28]:<28} {row['expected_rank'] or '-':>4}  {found:<6}  {answer[:70]}")
    print()
    print(format_metrics(metrics))
    if args.output:
        args.output.write_text(json.dumps(metrics, indent=2))
    return 0


def _evaluate_retrieval(args: argparse.Namespace) -> int:
    """Retrieval alone (no answers generated): seconds for a question set, not minutes."""
    search, where = Searcher(get_settings()), _where(args)
    print(f"{'question':<36} {'rank':>4}  first passage")
    ranks = []
    for row in evaluation.load_question_set(args.questions).to_pylist():
        passages = search(row["prompt"], where)
        ranks.append(evaluation.expected_rank([p.as_row() for p in passages], row["expected_source"],
                                              int(row["expected_page"])))
        print(f"{row['id'][:36]:<36} {ranks[-1] or '-':>4}  {passages[0].citation if passages else '(none)'}")
    metrics = evaluation.retrieval_metrics(ranks, [None] * len(ranks))
    print()
    print(format_metrics(metrics))
    if args.output:
        args.output.write_text(json.dumps(metrics, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    job_id = os.environ.get("JOB_SUBMISSION_ID") or f"local-{now():%Y%m%dT%H%M%S}"
    started = now()
    try:
        import ray

        ray.init(logging_level=logging.WARNING, log_to_driver=True)
        done = run_job(settings, args.questions, answers_uri=args.answers, where=args.where, job_id=job_id)
        result = JobResult(submission_id=job_id, status="succeeded", started_at=started, finished_at=now(), **done)
    except Exception as exc:
        log.error("answering %s failed: %s", args.questions, exc)
        result = JobResult(submission_id=job_id, started_at=started, finished_at=now(),
                           **JobResult.failure_fields(exc))
    if args.result:
        Storage(settings).write_json(args.result, result.model_dump(mode="json"))
    print(f"RESULT: {result.status}: {result.metrics.get('questions', 0):.0f} question(s), "
          f"{result.metrics.get('questions_per_second', 0)} per second", flush=True)
    return 0 if result.status == "succeeded" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.query", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    where = {"type": json.loads, "default": None,
             "help": 'metadata filter, e.g. \'{"doc_id": "..."}\' (the vector store\'s "where" syntax)'}

    narrow = {"--document": {"help": "only passages of this document (its file name)"},
              "--pages": {"help": "only passages that touch these pages, e.g. 3-5 or 7"}}

    ask = commands.add_parser("ask", help="answer one question, with its sources")
    ask.add_argument("question")
    ask.add_argument("--where", **where)
    ask.add_argument("--json", action="store_true", help="print the whole answer row as JSON")
    ask.set_defaults(handler=_ask)

    evaluate = commands.add_parser("evaluate", help="answer a question set and score retrieval and answers")
    evaluate.add_argument("--questions", type=Path, default=evaluation.QUESTION_SETS / "samples.jsonl")
    evaluate.add_argument("--where", **where)
    evaluate.add_argument("--retrieval-only", action="store_true",
                          help="score retrieval (hit@1, hit@5, MRR) without generating answers")
    evaluate.add_argument("--output", type=Path, help="also write the metrics here as JSON")
    for command in (ask, evaluate):
        for flag, options in narrow.items():
            command.add_argument(flag, **options)
    evaluate.set_defaults(handler=_evaluate)

    run = commands.add_parser("run", help="answer a questions Parquet on Ray Data (the DAG's job)")
    run.add_argument("--questions", required=True, help="URI of the questions Parquet")
    run.add_argument("--answers", help="answers folder URI (default: derived from the questions key)")
    run.add_argument("--where", **where)
    run.add_argument("--result", default=os.environ.get("JOB_RESULT_URI"),
                     help="where to write the job's result (default: $JOB_RESULT_URI)")
    run.set_defaults(handler=_run)

    args = parser.parse_args(argv)
    # The job logs its progress; a person at the shell wants the answer, not the steps.
    logging.basicConfig(level=logging.INFO if args.command == "run" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout if args.command == "run" else sys.stderr)
    for noisy in ("httpx", "chromadb", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
