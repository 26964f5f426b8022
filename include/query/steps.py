"""The four steps of answering, as Ray Data callable classes over Arrow batches.

Each loads what it needs once in ``__init__`` (a model, a tokenizer, a store client) and
maps a ``pyarrow.Table`` of questions to the same table with its own columns added::

    EmbedQuestions   prompt           -> question_vector
    RetrievePassages question_vector  -> passages (list of structs), no_context
    BuildPrompts     prompt, passages -> messages (list of structs), context_passages, trimmed_passages
    GenerateAnswers  messages         -> answer, cited, model, tokens, cost, finish_reason

Every column has a declared Arrow type: nested results stay Arrow lists and structs, never
pickled Python objects. Each step adds its seconds per question (``<step>_seconds``), so
the answers file says where the time went. A question that cannot be answered (empty, too
long for the model) gets its ``error`` and an empty answer; the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from include.backends.embedders import build_embedder, embedder_info
from include.backends.generators import Generation, build_generator, build_token_counter
from include.backends.vector_stores import Filter, build_vector_store, check_embedder
from include.query.prompts import NO_PASSAGES, QuestionTooLong, build_prompt, cited
from include.retrieval import Passage, Retriever
from include.settings import PipelineSettings

log = logging.getLogger(__name__)

PASSAGE = pa.struct([
    ("rank", pa.int32()), ("chunk_id", pa.string()), ("doc_id", pa.string()), ("source_uri", pa.string()),
    ("page_start", pa.int32()), ("page_end", pa.int32()), ("heading", pa.string()), ("score", pa.float32()),
    ("text", pa.string()),
])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
STEPS = ("embed", "retrieve", "prompt", "generate")

# The answers file's columns beyond those of the questions file (which are all kept).
ANSWER_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt", pa.string()), ("error", pa.string()),
    ("passages", pa.list_(PASSAGE)),
    ("context_passages", pa.int32()), ("trimmed_passages", pa.int32()),
    ("answer", pa.string()), ("cited", pa.list_(pa.int32())), ("model", pa.string()),
    ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
    ("retries", pa.int32()), ("cost_usd", pa.float64()),
    *[(f"{step}_seconds", pa.float64()) for step in STEPS], ("seconds", pa.float64()),
])


def _set(table: pa.Table, name: str, values: list[Any], type_: pa.DataType) -> pa.Table:
    column = pa.array(values, type=type_)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _per_question(table: pa.Table, seconds: float) -> list[float]:
    return [seconds / max(table.num_rows, 1)] * table.num_rows


def question_id(prompt: str) -> str:
    return "q-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]


# What the answers keep of a question refused for its length.
_KEPT_OF_A_LONG_PROMPT = 200


def prepare(table: pa.Table, max_chars: int) -> pa.Table:
    """Normalise a batch of the questions file: an ``id`` for every row, an ``error`` column; a
    question over ``max_chars`` gets an error, and only its start is kept (it is neither embedded
    nor sent to a model)."""
    prompts = [p if isinstance(p, str) else "" for p in table.column("prompt").to_pylist()]
    ids = table.column("id").to_pylist() if "id" in table.column_names else [None] * table.num_rows
    ids = [str(i) if i not in (None, "") else question_id(p) for i, p in zip(ids, prompts)]
    errors = ["" if p.strip() else "empty question" for p in prompts]
    for n, prompt in enumerate(prompts):
        if len(prompt) > max_chars:
            errors[n] = (f"the question is {len(prompt)} characters, over the limit of {max_chars} "
                         "(PIPELINE_QUERY_MAX_PROMPT_CHARS)")
            prompts[n] = prompt[:_KEPT_OF_A_LONG_PROMPT] + "…"
    table = _set(table, "prompt", prompts, pa.string())
    table = _set(table, "id", ids, pa.string())
    return _set(table, "error", errors, pa.string())


class EmbedQuestions:
    def __init__(self, settings: PipelineSettings) -> None:
        self._embedder = build_embedder(settings)
        self._max_chars = settings.query_max_prompt_chars
        # The questions must be embedded as the passages were: checked once, before any work.
        check_embedder(build_vector_store(settings), embedder_info(settings, self._embedder.dimension))

    def __call__(self, table: pa.Table) -> pa.Table:
        clock = time.perf_counter()
        table = prepare(table, self._max_chars)
        # A refused question is not embedded: its (cut) text is not what it asked.
        texts = [prompt if not error else "" for prompt, error in zip(table.column("prompt").to_pylist(),
                                                                      table.column("error").to_pylist())]
        vectors = self._embedder.embed(texts).vectors
        table = _set(table, "question_vector", [v.tolist() for v in vectors], pa.list_(pa.float32()))
        return _set(table, "embed_seconds", _per_question(table, time.perf_counter() - clock), pa.float64())


class RetrievePassages:
    def __init__(self, settings: PipelineSettings, where: Filter | None = None) -> None:
        self._retrieve = Retriever(settings)
        self._where = where

    def __call__(self, table: pa.Table) -> pa.Table:
        clock = time.perf_counter()
        passages = [
            [] if error else [p.as_row() for p in self._retrieve(question, vector, self._where)]
            for question, vector, error in zip(table.column("prompt").to_pylist(),
                                               table.column("question_vector").to_pylist(),
                                               table.column("error").to_pylist())
        ]
        table = table.drop_columns(["question_vector"])  # not worth keeping in the answers
        table = _set(table, "passages", passages, pa.list_(PASSAGE))
        return _set(table, "retrieve_seconds", _per_question(table, time.perf_counter() - clock), pa.float64())


class BuildPrompts:
    def __init__(self, settings: PipelineSettings) -> None:
        self._count = build_token_counter(settings)
        self._context_tokens = settings.generator_context_tokens
        self._max_new_tokens = settings.generator_max_new_tokens
        self._max_passages = settings.prompt_max_passages

    def close(self) -> None:
        getattr(self._count, "close", lambda: None)()

    def __call__(self, table: pa.Table) -> pa.Table:
        clock = time.perf_counter()
        messages, used, trimmed, errors = [], [], [], []
        for prompt, passages, error in zip(table.column("prompt").to_pylist(), table.column("passages").to_pylist(),
                                           table.column("error").to_pylist()):
            built = None
            if not error:
                try:
                    built = build_prompt(prompt, [Passage(**p) for p in passages[: self._max_passages]], self._count,
                                         context_tokens=self._context_tokens, max_new_tokens=self._max_new_tokens)
                except QuestionTooLong as exc:
                    error = str(exc)
                if not passages:
                    built = None  # nothing to ask the model: the answer says so
            messages.append(built.messages if built else [])
            used.append(built.passages if built else 0)
            trimmed.append(built.trimmed if built else 0)
            errors.append(error)
        table = _set(table, "messages", messages, pa.list_(MESSAGE))
        table = _set(table, "context_passages", used, pa.int32())
        table = _set(table, "trimmed_passages", trimmed, pa.int32())
        table = _set(table, "error", errors, pa.string())
        return _set(table, "prompt_seconds", _per_question(table, time.perf_counter() - clock), pa.float64())


class GenerateAnswers:
    """The model's answer to each prompt. On a paid model, each actor keeps to its share of the file's
    budget (``query_max_usd_per_file``): actors share no state, so each is given an equal part.

    Given ``warm_generators`` (actor handles of ``include.query.pipeline.WarmGenerator``, which keep a
    local model loaded between jobs), it loads no model: a batch's prompts go to those actors, each
    to the next free one."""

    def __init__(self, settings: PipelineSettings, warm_generators: list[Any] | None = None) -> None:
        clock = time.perf_counter()
        self._warm = warm_generators
        self._generator = None if warm_generators else build_generator(settings)
        limit = settings.query_max_usd_per_file
        # Unsized (max_actors unset) only in one process, where this is the one generator. Warm
        # generators are local models, which cost nothing: no budget.
        self._budget = None if limit is None or warm_generators else limit / (settings.generate_pool.max_actors or 1)
        self._spent = 0.0
        if self._generator:
            log.info("generator %s ready in %.1fs", self._generator.model, time.perf_counter() - clock)

    def close(self) -> None:
        getattr(self._generator, "close", lambda: None)()

    def _generations(self, table: pa.Table) -> Iterator[Generation]:
        """The warm generators' answers to the batch's askable prompts, in order (all sent at once)."""
        import ray
        from ray.util import ActorPool

        asked = [messages for messages, error in zip(table.column("messages").to_pylist(),
                                                     table.column("error").to_pylist()) if not error and messages]
        try:
            yield from ActorPool(self._warm).map(lambda actor, messages: actor.generate.remote(messages), asked)
        except ray.exceptions.RayActorError as exc:
            # A warm generator died past its restarts. Raised here, its death would reach the job as
            # this step's error; this actor dies with it instead, so Ray Data bounds its restarts and
            # the job names the crash (step, model, signal) as a pool actor's (include.worker_crashes).
            log.error("the warm generator died: %s", exc)
            os._exit(1)

    def __call__(self, table: pa.Table) -> pa.Table:
        # No budget can stop a warm generator (a local model), so its prompts go out together.
        warm = self._generations(table) if self._warm else None
        columns: dict[str, list[Any]] = {name: [] for name in (
            "answer", "cited", "model", "finish_reason", "prompt_tokens", "completion_tokens", "retries",
            "cost_usd", "generate_seconds", "error")}
        for messages, context, error in zip(table.column("messages").to_pylist(),
                                            table.column("context_passages").to_pylist(),
                                            table.column("error").to_pylist()):
            if not error and messages and self._budget is not None and self._spent > 0 and self._spent >= self._budget:
                error = (f"not asked: the budget for this questions file (PIPELINE_QUERY_MAX_USD_PER_FILE, "
                         f"${self._budget:.4f} for each generator actor) is spent; run the file again to answer it")
            if error or not messages:
                # Nothing to ask: an error, or no passage close enough. No model call, no cost.
                row = {"answer": "" if error else NO_PASSAGES, "cited": [], "model": "", "finish_reason": "",
                       "prompt_tokens": 0, "completion_tokens": 0, "retries": 0, "cost_usd": 0.0,
                       "generate_seconds": 0.0, "error": error}
            else:
                generation = next(warm) if warm else self._generator.generate(messages)
                usage = generation.usage
                self._spent += usage.cost_usd
                row = {"answer": generation.text, "cited": cited(generation.text, context),
                       "model": generation.model, "finish_reason": generation.finish_reason,
                       "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                       "retries": usage.retries, "cost_usd": usage.cost_usd, "generate_seconds": generation.seconds,
                       "error": error}
            for name, value in row.items():
                columns[name].append(value)
        table = table.drop_columns(["messages"])
        for name, values in columns.items():
            table = _set(table, name, values, ANSWER_SCHEMA.field(name).type)
        total = [sum(table.column(f"{step}_seconds")[i].as_py() for step in STEPS) for i in range(table.num_rows)]
        return _set(table, "seconds", total, pa.float64())

