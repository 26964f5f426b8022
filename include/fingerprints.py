"""What shapes each ingest stage's output, told without importing the stage.

A document's vectors are current when they were made by the same settings, code and
libraries as the pipeline has now. Both tiers compute that fingerprint the same way, and
neither needs the data plane installed to do it:

- **settings**: the values of the settings fields that shape the stage's output, a
  backend's only while it is the chosen one (a new OpenAI base URL re-embeds nothing
  made by MiniLM);
- **code**: the stage's own module and the modules it relies on, read as source files
  and parsed, with docstrings dropped (comments and layout never reach the syntax tree):
  an edit that changes no code reprocesses nothing;
- **libraries**: the versions ``constraints.txt`` pins for the stage's libraries, the
  ones every worker installs. A stage's job checks, before it runs, that its worker has
  exactly those (``check_installed``), so a fingerprint never claims versions a worker
  does not run.

The stages themselves (``include.stages``) are the data plane; this module is what the
Airflow side imports of them.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from include.settings import PROJECT_ROOT, PipelineSettings

PIN_FILES = ("constraints.txt",)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


@dataclass(frozen=True)
class StageSpec:
    """What a stage is called, and what shapes its output."""

    name: str
    # The settings fields whose values shape this stage's output with these settings: a
    # backend's own fields count only while that backend is the one chosen.
    shaped_by: Callable[[PipelineSettings], tuple[str, ...]]
    # The stage's own module, then the project modules whose code also shapes its output.
    code_modules: tuple[str, ...]
    # Installed distributions whose versions shape the output: an upgrade must not reuse
    # what older code made.
    libraries: tuple[str, ...] = ()


def _extract_fields(s: PipelineSettings) -> tuple[str, ...]:
    describer = ("describe_model", "describe_max_tokens", "describe_min_points", "openai_base_url")
    return ("docling_artifacts_path", "describe_pictures", *(describer if s.describe_pictures else ()))


def _embedder_fields(s: PipelineSettings) -> tuple[str, ...]:
    if s.embedder == "minilm":
        return ("embedder", "embed_model")
    return ("embedder", "openai_embed_model", "embed_dimensions", "openai_base_url")


def _tokenizer_field(s: PipelineSettings) -> str:
    """The embedder's model, whose tokenizer bounds the chunks (where it is served does not matter)."""
    return "embed_model" if s.embedder == "minilm" else "openai_embed_model"


def _enrich_fields(s: PipelineSettings) -> tuple[str, ...]:
    # The local redaction runs after the OpenAI enricher too: its fields always count.
    local = ("enricher", "spacy_model", "pii_entities", "pii_score_threshold", "redact_people",
             "key_phrases_per_chunk")
    return (*local, *(("enrich_model", "openai_base_url") if s.enricher == "openai" else ()))


def _store_fields(s: PipelineSettings) -> tuple[str, ...]:
    if s.vector_store == "chroma":
        return ("vector_store", "chroma_url", "chroma_path", "chroma_collection")
    return ("vector_store", "pinecone_index", "pinecone_namespace", "pinecone_host")


SPECS: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("extract", _extract_fields,
                  ("include.stages.extract", "include.stages.layout", "include.backends.describers",
                   "include.backends.openai_api"),
                  ("docling", "docling-core", "docling-parse", "pypdfium2")),
        # The embedder's tokenizer bounds the chunks.
        StageSpec("chunk", lambda s: ("chunk_max_tokens", "embedder", _tokenizer_field(s)),
                  ("include.stages.chunk", "include.backends.embedders"),
                  ("docling-core", "semchunk", "transformers", "tiktoken")),
        StageSpec("enrich", _enrich_fields,
                  ("include.stages.enrich", "include.backends.enrichers", "include.backends.openai_api",
                   "include.pii_shapes"),
                  ("presidio-analyzer", "spacy", "yake", "drug-named-entity-recognition", "phonenumbers")),
        StageSpec("embed", _embedder_fields, ("include.stages.embed", "include.backends.embedders"),
                  ("sentence-transformers", "torch", "openai")),
        StageSpec("load", _store_fields, ("include.stages.load", "include.backends.vector_stores")),
    )
}
STAGE_ORDER = tuple(SPECS)  # extract, chunk, enrich, embed, load


class EnvironmentMismatch(RuntimeError):
    """A worker runs other library versions than the project pins: its outputs would be
    recorded under a fingerprint that does not describe them. Rebuilding the worker fixes it;
    a retry does not."""

    retryable = False


def normalized_name(distribution: str) -> str:
    """PEP 503: ``presidio_analyzer`` and ``Presidio-Analyzer`` are one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


@cache
def library_pins() -> dict[str, str]:
    """Every ``name==version`` of the project's pin files (constraints.txt wins)."""
    pins: dict[str, str] = {}
    for name in reversed(PIN_FILES):
        for line in (PROJECT_ROOT / name).read_text().splitlines():
            if match := _PIN.match(line):
                pins[normalized_name(match.group(1))] = match.group(2)
    return pins


def _pinned(libraries: tuple[str, ...]) -> list[str]:
    pins = library_pins()
    missing = [library for library in libraries if normalized_name(library) not in pins]
    if missing:
        raise RuntimeError(f"no version pinned for {', '.join(missing)} in {' or '.join(PIN_FILES)}")
    return [f"{normalized_name(library)}=={pins[normalized_name(library)]}" for library in libraries]


def _code(module: str) -> str:
    """The module's syntax tree without docstrings: what its code does, not how it reads."""
    tree = ast.parse((PROJECT_ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@cache
def code_fingerprint(spec: StageSpec) -> str:
    digest = hashlib.sha256()
    for module in spec.code_modules:
        digest.update(_code(module).encode())
    for pin in _pinned(spec.libraries):
        digest.update(pin.encode())
    return digest.hexdigest()[:12]


def stage_fingerprint(spec: StageSpec, settings: PipelineSettings) -> str:
    """What shapes this stage's own output: its settings, its code, its libraries."""
    return f"{settings.fingerprint(*spec.shaped_by(settings))}-{code_fingerprint(spec)}"


def pipeline_fingerprint(settings: PipelineSettings) -> str:
    """What a document's vectors depend on: every stage's settings, code and libraries.

    Equal to the ``config_fingerprint`` the last stage's manifest records: a document
    ingested under another fingerprint is stale and goes through the stages again
    (each stage still reuses what its own fingerprint says is current).
    """
    return ".".join(stage_fingerprint(spec, settings) for spec in SPECS.values())


def check_installed(spec: StageSpec) -> dict[str, str]:
    """In the stage's job: the installed versions of its libraries, which must be the pinned ones
    (a local build tag such as torch's ``+cpu`` aside)."""
    from packaging.version import Version

    installed, wrong = {}, []
    for pin in _pinned(spec.libraries):
        name, pinned = pin.split("==")
        installed[name] = importlib.metadata.version(name)
        if Version(installed[name]).public != Version(pinned).public:
            wrong.append(f"{name} {installed[name]} (pinned {pinned})")
    if wrong:
        raise EnvironmentMismatch(f"{spec.name}: this worker runs {', '.join(wrong)}: install the pinned "
                                  "versions (constraints.txt), or pin the new ones, before it makes outputs")
    return installed
