"""The run report: what a run found in the inbox and what became of every document it touched.

Written by the summary task as ``report.json`` (for machines) and ``report.md`` (for
people) into the run's folder of the artifacts; the summary's XCom names the JSON's URI.
"""

from __future__ import annotations

from typing import Any

from include.contract import SPEND_METRICS
from include.control.batching import RunPlan
from include.control.incremental import tally
from include.storage import Storage, join_uri

# Per-document numbers the report keeps from the stage outcomes.
DOCUMENT_METRICS = ("pages", "chunks", "redactions", "vectors")
# Per-stage columns of the stage table, in order.
STAGE_METRICS = ("pages", "chunks", "redactions", "vectors", "seconds", "reused")
COUNTS = ("new", "changed", "stale", "retried", "reprocessed", "unchanged", "deleted",
          "ingested", "failed", "quarantined", "postponed", "held", "unreadable", "gave_up")


def summarize(dag_id: str, run_id: str, plan: RunPlan, stages: dict[str, dict[str, float]],
              documents: list[dict[str, Any]], found_unchanged: int = 0) -> dict[str, Any]:
    """The report's content. ``documents`` holds one row per document the run processed;
    ``found_unchanged`` counts those its extract job found to hold the bytes already ingested."""
    counts = dict.fromkeys(COUNTS, 0)
    counts.update(tally([row["reason"] for row in documents]))
    for row in documents:
        counts[row["status"]] += 1
    counts.update(unchanged=plan.unchanged + found_unchanged, deleted=len(plan.deleted), held=len(plan.held),
                  unreadable=len(plan.unreadable), gave_up=plan.gave_up)
    failed = [{"doc_id": None, "source_uri": u.source_uri, "stage": "plan", "error": u.error} for u in plan.unreadable]
    failed += [{key: row.get(key) for key in ("doc_id", "source_uri", "stage", "error", "cause")}
               for row in documents if row["status"] not in ("ingested", "postponed")]
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "documents": len(documents) + len(plan.unreadable),
        "batches": len(plan.batches),
        "succeeded": counts["ingested"],
        "failed": failed,
        "counts": counts,
        "cost": cost(stages, counts["ingested"]),
        "stages": stages,
        "touched": documents,
        "deleted": plan.deleted,
        "held": plan.held,
        "still_there": plan.still_there,
        "deletions_held": plan.deletions_held,
        "deletions_held_reason": plan.deletions_held_reason,
        "budget_usd": plan.budget_usd,
        "postponed": [row["source_uri"] for row in documents if row["status"] == "postponed"],
    }


def cost(stages: dict[str, dict[str, float]], ingested: int) -> dict[str, float]:
    """What the run's calls to paid APIs cost (the price table in the settings), in all, per
    ingested document and per 1,000 pages extracted; zero on the local backends."""
    spent = {name: sum(totals.get(name, 0.0) for totals in stages.values()) for name in SPEND_METRICS}
    pages = stages.get("extract", {}).get("pages", 0.0)
    return {
        **{name: round(value, 6) if name == "cost_usd" else int(value) for name, value in spent.items()},
        "by_stage_usd": {stage: round(totals["cost_usd"], 6) for stage, totals in stages.items() if totals.get("cost_usd")},
        "per_document_usd": round(spent["cost_usd"] / ingested, 6) if ingested else 0.0,
        "per_1000_pages_usd": round(spent["cost_usd"] * 1000 / pages, 4) if pages else 0.0,
    }


def for_xcom(summary: dict[str, Any], max_failed: int = 50) -> dict[str, Any]:
    """The summary without per-document rows (those are in the report): numbers, the report's
    URI, and the first failures so the UI shows why a run failed."""
    compact = {key: summary[key] for key in ("report_uri", "documents", "batches", "succeeded", "counts", "cost",
                                             "stages", "quality") if key in summary}
    compact["failed"] = summary["failed"][:max_failed]
    compact["failed_total"] = len(summary["failed"])
    return compact


def write(storage: Storage, folder: str, summary: dict[str, Any]) -> str:
    uri = join_uri(folder, "report.json")
    storage.write_text(join_uri(folder, "report.md"), markdown(summary))
    storage.write_json(uri, {**summary, "report_uri": uri})
    return uri


def run_totals(summary: dict[str, Any]) -> dict[str, Any]:
    """The ledger's row of the run: what it found, as its jobs settled it (a document the extract job
    found unchanged counts there, not as changed), and what it did."""
    counts = summary["counts"]
    totals = {name: counts[name] for name in ("new", "changed", "stale", "retried", "reprocessed", "unchanged",
                                              "ingested", "failed", "quarantined")}
    for name in ("pages", "chunks", "vectors"):
        totals[name] = sum(int(row.get(name, 0)) for row in summary["touched"])
    totals["seconds"] = {stage: round(t.get("seconds", 0.0), 1) for stage, t in summary["stages"].items()}
    totals["report_uri"] = summary.get("report_uri")
    return totals


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def markdown(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    lines = [f"# {summary['dag_id']} run {summary['run_id']}", ""]
    found = ", ".join(f"{counts[name]} {name}" for name in COUNTS if counts[name]) or "nothing"
    lines += [f"{summary['succeeded']} of {summary['documents']} document(s) ingested in "
              f"{summary['batches']} batch(es). In all: {found}.", ""]
    if any(t.get("batches") for t in summary["stages"].values()):
        header = ["stage", "batches", "docs", "failed", *STAGE_METRICS]
        rows = []
        for stage, totals in summary["stages"].items():
            rows.append([stage, *(int(totals.get(m, 0)) for m in ("batches", "documents", "failed")),
                         *(round(totals[m], 1) if m == "seconds" and m in totals
                           else int(totals[m]) if m in totals else None for m in STAGE_METRICS)])
        lines += ["## Stages", "", *_table(header, rows), ""]
        by_kind = {name.removeprefix("redactions_"): int(n) for name, n in summary["stages"].get("enrich", {}).items()
                   if name.startswith("redactions_")}
        if by_kind:
            lines += ["Redactions by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items())), ""]
    spent = summary["cost"]
    if spent["requests"]:
        by_stage = ", ".join(f"{stage} ${usd:.4f}" for stage, usd in spent["by_stage_usd"].items())
        lines += [f"Cost: ${spent['cost_usd']:.4f} ({by_stage}): ${spent['per_document_usd']:.4f} per document, "
                  f"${spent['per_1000_pages_usd']:.2f} per 1,000 pages; {spent['requests']} requests "
                  f"({spent['retries']} retried), {spent['prompt_tokens']} tokens in, "
                  f"{spent['completion_tokens']} out.", ""]
    if summary["touched"]:
        header = ["document", "why", "status", "pages", "chunks", "vectors", "cost $", "stopped at", "cause"]
        rows = [[row["source_uri"], row["reason"], row["status"], *(row.get(m) for m in ("pages", "chunks", "vectors")),
                 f"{row.get('cost_usd', 0.0):.4f}", row["stage"], row["error"]] for row in summary["touched"]]
        lines += ["## Documents", "", *_table(header, rows), ""]
    if summary.get("postponed"):
        lines += ["## Postponed: the budget for paid calls is spent", "",
                  f"The run may spend ${summary['budget_usd']:.2f} (PIPELINE_MAX_USD_PER_RUN), shared among its batches "
                  f"by bytes; {len(summary['postponed'])} document(s) were not worked on once their batch's share was "
                  "spent. The next run takes them; this run is not counted among their attempts.", "",
                  *(f"- {uri}" for uri in summary["postponed"]), ""]
    if summary.get("deletions_held_reason"):
        lines += ["## Deletions held back", "", summary["deletions_held_reason"], ""]
    for title, items in (("Deleted from the inbox (vectors removed)", summary["deleted"]),
                         ("Deletions held back (their vectors stay)", summary.get("deletions_held", [])),
                         ("Missing from the listing, still in the inbox (not deleted)", summary.get("still_there", [])),
                         ("Held by another run", [f"{uri} (run {run})" for uri, run in summary["held"].items()])):
        if items:
            lines += [f"## {title}", "", *(f"- {item}" for item in items), ""]
    lines += _quality(summary.get("quality"))
    for item in summary["failed"]:
        # Errors name their document already; older ones may not.
        cause = item["error"] if item["error"].startswith(item["source_uri"]) else f"{item['source_uri']}: {item['error']}"
        lines.append(f"FAILED at {item['stage']}" + (f" ({item['cause']})" if item.get("cause") else "") + f": {cause}")
    return "\n".join(lines).rstrip() + "\n"


def _quality(quality: dict[str, Any] | None) -> list[str]:
    """The quality gates' section: what they checked, what failed, where the Data Docs are."""
    if not quality or not (quality["validations"] or quality["run_failures"]):
        return []
    lines = ["## Quality gates", "",
             f"{quality['validations']} document validation(s) by the stage gates: {quality['failed']} failed the "
             f"document, {quality['warned']} only warned (PIPELINE_QUALITY__<STAGE>=warn)."]
    if quality["run_mode"] != "off":
        verdict = "passed" if not quality["run_failures"] else (
            "FAILED" if quality["run_mode"] == "fail" else "failed (warn only)")
        lines.append(f"The run's own checks (vectors = chunks per ingested document, every document settled and "
                     f"released): {verdict}.")
        lines += [f"- {failure}" for failure in quality["run_failures"]]
    if "data_docs_uri" in quality:
        omitted = quality["passed_not_rendered"]
        lines.append(f"Data Docs: {quality['data_docs_uri']} ({quality['rendered']} validation page(s)"
                     + (f"; {omitted} passed one(s) not rendered, PIPELINE_QUALITY__DATA_DOCS_MAX_PASSED)" if omitted
                        else ")"))
    if "data_docs_error" in quality:
        lines.append(f"Data Docs not rendered: {quality['data_docs_error']}")
    return [*lines, ""]

