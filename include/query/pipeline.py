"""A questions file in, an answers file out: on Ray Data (the job) or in this process (ask, evaluate).

On Ray, one Dataset::

    read_parquet -> EmbedQuestions -> RetrievePassages -> BuildPrompts -> GenerateAnswers
                 [-> score_batch, when the questions carry expectations] -> write_parquet

each step a callable class on ``map_batches`` with its own actor pool (sizes and CPUs in
the settings; the generator's actors ask for ``generator_gpus``). With warm workers on (``generate``
in ``PIPELINE_WARM_STAGES``) a local generator's model stays loaded between jobs in
``WarmGenerator`` actors (``include.stages.warm``), and ``GenerateAnswers`` sends them its prompts. The answers are written
by the dataset into a folder of this job, then published: the ``_answers.json`` marker,
written last in one PUT, names them, and the older jobs' parts are removed
(``include.query.answers``). So a retried or repeated job replaces the answers, it never adds
a second copy of them; a reader never sees a mix of two; and the marker says which version of
the questions file they answer.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset
import ray

from include.backends.generators import Generation, build_generator, generator_model
from include.backends.vector_stores import Filter
from include.query import evaluation
from include.query.answers import MARKER, answers_uri_for, job_folder
from include.query.steps import STEPS, BuildPrompts, EmbedQuestions, GenerateAnswers, RetrievePassages
from include.settings import PipelineSettings
from include.stages import warm
from include.storage import Storage, join_uri
from include.worker_crashes import crashes_named
from include.worker_options import actor_options, task_options, worker_node_cpus

log = logging.getLogger(__name__)


class QuestionsError(ValueError):
    """The questions file cannot be answered as it is (no ``prompt`` column...): retrying cannot help."""

    retryable = False


def check_columns(names: list[str], uri: str) -> None:
    if "prompt" not in names:
        raise QuestionsError(f"{uri} has no 'prompt' column (it has {', '.join(names) or 'none'}): a questions "
                             "file is Parquet with a 'prompt' column and, optionally, 'id'")


def check_size(rows: int, uri: str, settings: PipelineSettings) -> None:
    if rows > settings.query_max_questions:
        raise QuestionsError(f"{uri} holds {rows} questions, over the limit of {settings.query_max_questions} "
                             "(PIPELINE_QUERY_MAX_QUESTIONS): split it into several files")


# --- in this process ----------------------------------------------------------------


class InlineAnswerer:
    """The four steps built once, run one after the other on batches: ask, evaluate, the baseline."""

    def __init__(self, settings: PipelineSettings, where: Filter | None = None) -> None:
        self._settings = settings
        self._steps = [EmbedQuestions(settings), RetrievePassages(settings, where), BuildPrompts(settings),
                       GenerateAnswers(settings)]

    def __enter__(self) -> InlineAnswerer:
        return self

    def __exit__(self, *_exc: object) -> None:
        for step in self._steps:
            getattr(step, "close", lambda: None)()

    def __call__(self, questions: pa.Table) -> pa.Table:
        check_columns(questions.column_names, "the questions")
        check_size(questions.num_rows, "the questions", self._settings)
        batches = []
        for batch in questions.to_batches(max_chunksize=self._settings.query_batch_size):
            table = pa.Table.from_batches([batch])
            for step in self._steps:
                table = step(table)
            if evaluation.has_expectations(table.column_names):
                table = evaluation.score_batch(table)
            batches.append(table)
        return pa.concat_tables(batches) if batches else questions


# --- on Ray Data --------------------------------------------------------------------


class WarmGenerator(warm.KeptWarm):
    """The query side's local model, loaded once and kept between query jobs."""

    def __init__(self, settings: PipelineSettings, threads: int) -> None:
        warm.use_threads(threads)
        self._generator = build_generator(settings)
        warm.KeptWarm.__init__(self, "generate", settings.warm_idle_seconds)

    def generate(self, messages: list[dict[str, str]]) -> Generation:
        with self.working():
            return self._generator.generate(messages)


def warm_generators(settings: PipelineSettings) -> tuple[list[Any] | None, int | None]:
    """The leased warm generators and the model loads they did for this job; ``(None, None)`` when the
    generator is not kept warm (warm workers off, or a paid API, which has no model to keep)."""
    if settings.generator == "openai" or not warm.is_warm("generate", settings):
        return None, None
    name = warm.pool_name("generate", settings, WarmGenerator)
    return warm.leased_pool(WarmGenerator, name, settings.generate_pool, settings, settings)


QUERY_POOLS = ("query_embed_pool", "retrieve_pool", "prompt_pool", "generate_pool")


def answer_on_ray(settings: PipelineSettings, questions_uri: str, output_uri: str,
                  where: Filter | None = None) -> int | None:
    """Write the answers into ``output_uri``; the model loads of warm generators (None when cold)."""
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the job log gets our lines instead
    # The DataSourceV2 reader lists files in a task that asks for a whole CPU, and starts it
    # only after every actor pool below holds its CPUs: on a 2-CPU cluster it never runs. The
    # V1 reader lists in the driver and reads in tasks of query_io_cpus.
    context.use_datasource_v2 = False
    storage = Storage(settings)
    filesystem, path = storage.arrow_filesystem(questions_uri)
    questions = ray.data.read_parquet(path, filesystem=filesystem, num_cpus=settings.query_io_cpus,
                                      ray_remote_args=task_options(settings))
    names = list(questions.schema().names)
    check_columns(names, questions_uri)
    # From the Parquet footers: no row is read.
    check_size(pyarrow.dataset.dataset(path, filesystem=filesystem, format="parquet").count_rows(), questions_uri,
               settings)

    # Pools sized to the cluster settle their sizes here, so the generator's actors know how many
    # share the file's budget.
    cpus = worker_node_cpus(settings)
    settings = settings.model_copy(update={pool: getattr(settings, pool).sized_for(cpus) for pool in QUERY_POOLS})

    def step(dataset: Any, worker: type, pool: str, **kwargs: Any) -> Any:
        sizes = getattr(settings, pool)
        return dataset.map_batches(
            worker, fn_constructor_kwargs={"settings": settings, **kwargs}, batch_format="pyarrow",
            batch_size=settings.query_batch_size, num_cpus=sizes.actor_cpus,
            compute=ActorPoolStrategy(min_size=sizes.min_actors, max_size=sizes.max_actors),
            **actor_options(settings),
            **({"num_gpus": settings.generator_gpus} if worker is GenerateAnswers and settings.generator_gpus else {}),
        )

    embed_pool, retrieve_pool, prompt_pool, generate_pool = QUERY_POOLS
    answers = step(questions, EmbedQuestions, embed_pool)
    answers = step(answers, RetrievePassages, retrieve_pool, where=where)
    answers = step(answers, BuildPrompts, prompt_pool)
    generators, loads = warm_generators(settings)
    answers = step(answers, GenerateAnswers, generate_pool, warm_generators=generators)
    if evaluation.has_expectations(names):
        answers = answers.map_batches(evaluation.score_batch, batch_format="pyarrow", num_cpus=settings.query_io_cpus,
                                      **task_options(settings))
    out_filesystem, out_path = storage.arrow_filesystem(output_uri)
    with crashes_named(settings, step_models(settings), default_step="reading or writing Parquet"):
        answers.write_parquet(out_path, filesystem=out_filesystem,
                              ray_remote_args={"num_cpus": settings.query_io_cpus, **task_options(settings)})
    return loads


def step_models(settings: PipelineSettings) -> dict[str, tuple[str, str]]:
    """Each step (by its class's name, as Ray names its actors) and what it runs, as a crash report says."""
    backend = {"smollm2": "llama.cpp", "openai": "the OpenAI API", "huggingface": "transformers"}[settings.generator]
    runs = {EmbedQuestions: settings.embedder_model,
            RetrievePassages: f"the {settings.vector_store} client and BM25",
            BuildPrompts: f"the {generator_model(settings)} tokenizer",
            GenerateAnswers: f"{generator_model(settings)} on {backend}"}
    named = {step.__name__: (step.__name__, model) for step, model in runs.items()}
    return {**named, WarmGenerator.__name__: named[GenerateAnswers.__name__]}


# --- results ------------------------------------------------------------------------


_METRIC_COLUMNS = ("error", "answer", "model", "context_passages", "trimmed_passages", "prompt_tokens",
                   "completion_tokens", "retries", "cost_usd", *[f"{s}_seconds" for s in STEPS])


def read_answers(storage: Storage, answers_uri: str, columns: list[str] | None = None) -> pa.Table:
    """The current answers of an answers folder: the parts its marker names, in order."""
    return _read_parts(storage, storage.read_json(join_uri(answers_uri, MARKER))["parts"], columns)


def _read_parts(storage: Storage, part_uris: list[str], columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    filesystem, _ = storage.arrow_filesystem(part_uris[0])
    paths = [storage.arrow_filesystem(uri)[1] for uri in part_uris]
    return pa.concat_tables([pq.read_table(path, filesystem=filesystem, columns=columns) for path in paths])


def answer_metrics(table: pa.Table, wall_seconds: float) -> dict[str, float]:
    """Counts, tokens, cost and speed of one answers table (and retrieval quality, when scored)."""
    rows = table.to_pylist()
    answered = [r for r in rows if not r["error"] and r["model"]]
    metrics: dict[str, float] = {
        "questions": len(rows),
        "answered": len(answered),
        "no_context": sum(1 for r in rows if not r["error"] and not r["model"]),
        "errors": sum(1 for r in rows if r["error"]),
        "trimmed_prompts": sum(1 for r in rows if r["trimmed_passages"]),
        "requests": len(answered),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "retries": sum(r["retries"] for r in rows),
        "cost_usd": round(sum(r["cost_usd"] for r in rows), 6),
        "seconds": round(wall_seconds, 3),
        "questions_per_second": round(len(rows) / wall_seconds, 4) if wall_seconds else 0.0,
    }
    for step in STEPS:
        metrics[f"{step}_seconds"] = round(sum(r[f"{step}_seconds"] for r in rows), 3)
    if metrics["generate_seconds"]:
        metrics["generated_tokens_per_second"] = round(metrics["completion_tokens"] / metrics["generate_seconds"], 2)
    if "expected_rank" in table.column_names:
        metrics.update(evaluation.retrieval_metrics(table.column("expected_rank").to_pylist(),
                                                    table.column("answer_has_phrase").to_pylist()))
    return metrics


def publish(storage: Storage, job_uri: str, answers_uri: str, parts: list[str], marker: dict[str, Any]) -> None:
    """Make the job's parts the current answers: the marker, one PUT, names them; then every other
    object of the answers folder (older jobs' parts, an unfinished job's) is removed."""
    marker_uri = join_uri(answers_uri, MARKER)
    storage.write_json(marker_uri,
                       {**marker, "folder": job_uri, "parts": parts, "published_at": datetime.now(UTC).isoformat()})
    for info in storage.list_objects(answers_uri):
        if not info.uri.startswith(job_uri) and info.uri != marker_uri:
            storage.delete(info.uri)


def run_job(settings: PipelineSettings, questions_uri: str, *, answers_uri: str | None = None,
            where: Filter | None = None, job_id: str) -> dict[str, Any]:
    """The Ray job's work: answer, publish, and return the outputs and metrics for its result."""
    storage = Storage(settings)
    answers_uri = answers_uri or answers_uri_for(settings, questions_uri)
    version = storage.stat(questions_uri).version  # which version of the questions these answers are for
    job_uri = job_folder(answers_uri, job_id)
    clock = time.perf_counter()
    model_loads = answer_on_ray(settings, questions_uri, job_uri, where)
    wall = time.perf_counter() - clock
    # Parts are named in the order the dataset wrote them.
    parts = sorted(info.uri for info in storage.list_objects(job_uri) if info.uri.endswith(".parquet"))
    if not parts:
        raise QuestionsError(f"{questions_uri} holds no questions")
    metrics = answer_metrics(_read_parts(storage, parts, _metric_columns(storage, parts[0])), wall)
    if model_loads is not None:
        metrics["model_loads"] = model_loads  # what the warm generator saved (0: it was loaded)
    publish(storage, job_uri, answers_uri, parts, {"questions_uri": questions_uri, "questions_version": version,
                                                    "job": job_id, "metrics": metrics})
    log.info("answered %d question(s) in %.1fs into %s", metrics["questions"], wall, answers_uri)
    return {"outputs": {"answers": answers_uri, "questions": questions_uri}, "metrics": metrics}


def _metric_columns(storage: Storage, part_uri: str) -> list[str]:
    """The small columns the metrics need (the passages and answers stay in storage)."""
    import pyarrow.parquet as pq

    filesystem, path = storage.arrow_filesystem(part_uri)
    names = pq.read_schema(path, filesystem=filesystem).names
    return [name for name in (*_METRIC_COLUMNS, "expected_rank", "answer_has_phrase") if name in names]
