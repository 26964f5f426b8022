"""Answers and their figures as text, for people: the ask command, the evaluation, the demo, the DAG's log."""

from __future__ import annotations

import textwrap
from typing import Any

from include.storage import object_name


def format_answer(row: dict[str, Any], width: int = 100) -> str:
    """A row of an answers file: the question, the answer, the passages the prompt held (* = cited)."""
    lines = [f"Q: {row['prompt']}"]
    if row["error"]:
        lines.append(f"   not answered: {row['error']}")
        return "\n".join(lines)
    lines.extend(textwrap.wrap(row["answer"], width, initial_indent="A: ", subsequent_indent="   ") or ["A:"])
    if row["passages"]:
        lines.append("   Sources:")
    for passage in row["passages"][: row["context_passages"] or len(row["passages"])]:
        mark = "*" if passage["rank"] in row["cited"] else " "
        pages = (f"page {passage['page_start']}" if passage["page_start"] == passage["page_end"]
                 else f"pages {passage['page_start']}-{passage['page_end']}")
        source = object_name(passage["source_uri"])
        heading = f", {passage['heading']}" if passage["heading"] else ""
        excerpt = " ".join(passage["text"].split())
        lines.append(f"  {mark}[{passage['rank']}] {source}, {pages}{heading} (score {passage['score']:.2f})")
        lines.append(f"       \"{excerpt[:width - 10]}{'…' if len(excerpt) > width - 10 else ''}\"")
    if row["model"]:
        lines.append(f"   ({row['model']}: {row['prompt_tokens']} prompt + {row['completion_tokens']} answer "
                     f"tokens, {row['seconds']:.1f}s; * = cited)")
    return "\n".join(lines)


def format_metrics(metrics: dict[str, float]) -> str:
    """The headline figures of an answered question set, one line each."""
    lines = []
    if "eval_questions" in metrics:
        lines.append(f"retrieval over {metrics['eval_questions']:.0f} questions: hit@1 {metrics['hit@1']:.2f}, "
                     f"hit@5 {metrics['hit@5']:.2f}, MRR {metrics['mrr']:.2f}")
    if "answers_with_phrase" in metrics:
        lines.append(f"answers containing the expected phrase: {metrics['answers_with_phrase']:.0%}")
    lines.append(f"{metrics['questions']:.0f} question(s) in {metrics['seconds']:.1f}s "
                 f"({metrics['questions_per_second']:.2f}/s); generation {metrics.get('generated_tokens_per_second', 0):.1f} "
                 f"tokens/s; {metrics['prompt_tokens']:.0f} prompt + {metrics['completion_tokens']:.0f} answer tokens, "
                 f"${metrics['cost_usd']:.4f}")
    if "model_loads" in metrics:  # a warm generator (include.query.pipeline.WarmGenerator)
        loads = metrics["model_loads"]
        lines.append(f"warm generator: {f'{loads:.0f} model load(s)' if loads else 'already loaded, no model load'}")
    return "\n".join(lines)
