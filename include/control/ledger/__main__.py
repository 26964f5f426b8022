"""The ledger from the shell: what is ingested, what failed and why, what each run did.

    python -m include.control.ledger                      # documents per status, the last runs
    python -m include.control.ledger documents --status failed
    python -m include.control.ledger documents --cause quality_gate   # outputs a quality gate stopped
    python -m include.control.ledger show "reports/q3.pdf"  # one document: its row and its history
    python -m include.control.ledger runs | daily
    python -m include.control.ledger conf --status failed   # a DAG conf that reprocesses those documents
    python -m include.control.ledger upgrade               # the schema to this code's revision (deploy step)

Keys are relative to the inbox (or full URIs). Reprocess with the DAG's conf, e.g.
``airflow dags trigger document_ingest -c "$(python -m include.control.ledger conf --status failed)"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from include.control.ledger.schema import Status
from include.control.ledger.store import Entry, Ledger, default_url
from include.control.settings import get_control_settings
from include.documents import key_uris
from include.storage import StorageError, relative_key


def _first_line(text: str | None, width: int = 90) -> str:
    line = (text or "").splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


# ``DocumentOutcome.cause``, and "infrastructure" for a document whose stage's job failed.
CAUSES = ("document", "bad_file", "time_limit", "stale", "quality_gate", "store_check", "infrastructure")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _documents(entries: list[Entry], inbox: str) -> str:
    rows = [[e.status, e.stage_reached, e.pages, e.chunks, e.vectors, e.attempts, e.last_run_id,
             _key(inbox, e.source_uri), e.error_cause, _first_line(e.error)] for e in entries]
    return _table(["status", "stage", "pages", "chunks", "vectors", "tries", "last run", "key", "cause",
                   "last error"], rows)


def _key(inbox: str, uri: str) -> str:
    try:
        return relative_key(inbox, uri)
    except StorageError:
        return uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.control.ledger", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    listing = commands.add_parser("documents", help="one line per document")
    listing.add_argument("--status", choices=[s.value for s in Status])
    listing.add_argument("--cause", choices=CAUSES, help="why they failed (quality_gate: a stage's quality gate)")
    show = commands.add_parser("show", help="one document's row and history")
    show.add_argument("key", help="inbox key or full URI")
    runs = commands.add_parser("runs", help="the last runs' totals")
    runs.add_argument("--limit", type=int, default=20)
    commands.add_parser("daily", help="totals per day")
    conf = commands.add_parser("conf", help="print a DAG conf that reprocesses documents")
    conf.add_argument("--status", choices=[s.value for s in Status], default=Status.FAILED.value)
    conf.add_argument("--cause", choices=CAUSES)
    commands.add_parser("upgrade", help="bring the schema to this code's revision (a deploy step)")
    args = parser.parse_args(argv)

    settings = get_control_settings()
    if args.command == "upgrade":
        ledger = Ledger(default_url(settings))
        print(f"{ledger.location}: revision {ledger.upgrade()}")
        return 0
    ledger = Ledger.open(settings)
    inbox = settings.inbox_uri
    if args.command == "documents":
        print(_documents(list(ledger.entries(status=args.status, cause=args.cause).values()), inbox))
    elif args.command == "show":
        [uri] = key_uris(inbox, [args.key])
        entry = ledger.entries(source_uris=[uri]).get(uri)
        if entry is None:
            print(f"{uri}: not in the ledger", file=sys.stderr)
            return 1
        for name, value in entry.model_dump().items():
            print(f"{name:>22}: {value}")
        print()
        print(_table(["at", "run", "stage", "event", "detail"],
                     [[e.at.isoformat(timespec="seconds"), e.run_id, e.stage, e.event,
                       _first_line(json.dumps(e.detail, sort_keys=True) if e.detail else "", 120)]
                      for e in ledger.history(uri)]))
    elif args.command == "runs":
        print(_runs(ledger.runs(args.limit)))
    elif args.command == "daily":
        days = ledger.daily()
        print(_table(list(days[0]) if days else ["day"], [list(day.values()) for day in days]))
    elif args.command == "conf":
        keys = [_key(inbox, uri) for uri in ledger.entries(under=inbox, status=Status(args.status), cause=args.cause)]
        print(json.dumps({"keys": keys, "reprocess": True}))
    else:
        counts = ledger.counts()
        print(f"Ledger {ledger.location}: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                                          or "no documents yet"))
        print()
        print(_runs(ledger.runs(10)))
    return 0


def _runs(runs: list[dict[str, Any]]) -> str:
    columns = ["run_id", "planned_at", "new", "changed", "stale", "retried", "reprocessed", "unchanged", "deleted",
               "ingested", "failed", "quarantined", "vectors"]
    return _table(columns, [[run[c].isoformat(timespec="seconds") if c == "planned_at" else run[c] for c in columns]
                            for run in runs])


if __name__ == "__main__":
    sys.exit(main())
