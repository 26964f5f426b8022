"""The fake OpenAI API (tests/fakes/openai_server.py) as the real ``openai`` SDK sees it."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from pydantic import BaseModel, ValidationError

from tests.fakes.openai_server import (
    DEFAULT_REDACTION_LABELS,
    FakeOpenAI,
    Malformed,
    NotRedacting,
    RateLimited,
    Reply,
    ServerError,
    Slow,
    token_counting,
    tokenizer_for,
)

CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
PII_TEXT = "Contact Jane at jane.doe@example.com or 212-555-0142; SSN 123-45-6789. Aspirin dosage is 81 mg."


class Redaction(BaseModel):
    redacted_text: str
    key_phrases: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=2, timeout=10)


def _png(width: int, height: int) -> bytes:
    """A real (all-black) PNG: the fake checks the magic bytes and reads the size from IHDR."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x00" * 3 * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _image_part(data: bytes, detail: str = "auto") -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def _ask(client: openai.OpenAI, text: str = "What is the capital of France?", **kwargs):
    return client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": text}], **kwargs
    )


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


# ---- chat


def test_tokens_are_counted_with_tiktoken_offline():
    assert token_counting() == "tiktoken:o200k_base"
    assert tokenizer_for(EMBED_MODEL).name == "tiktoken:cl100k_base"
    assert tokenizer_for(CHAT_MODEL).count("hello world") == 2


def test_chat_round_trip_with_usage(fake, client):
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    )

    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == CHAT_MODEL
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "What is the capital of France?" in choice.message.content
    usage = reply.usage
    # Cookbook formula: 3 per message + role + content, 3 to prime the reply.
    tokenizer = tokenizer_for(CHAT_MODEL)
    expected_prompt = 3 + sum(
        3 + tokenizer.count(r) + tokenizer.count(c)
        for r, c in (("system", "Be brief."), ("user", "What is the capital of France?"))
    )
    assert usage.prompt_tokens == expected_prompt
    assert usage.completion_tokens == tokenizer.count(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert fake.tokens("chat") == (usage.prompt_tokens, usage.completion_tokens)
    assert fake.count("chat", status=200) == 1


def test_max_tokens_cuts_the_reply(client):
    reply = _ask(client, "Tell me everything about the history of the Roman Empire.", max_tokens=5)

    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_json_schema_reply_validates_and_is_redacted(fake, client):
    completion = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=[{"role": "system", "content": "Redact PII."}, {"role": "user", "content": PII_TEXT}],
        response_format=Redaction,
    )

    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Redaction)
    assert "jane.doe@example.com" not in parsed.redacted_text
    assert "212-555-0142" not in parsed.redacted_text and "123-45-6789" not in parsed.redacted_text
    for label in ("EMAIL", "PHONE", "SSN"):
        assert f"[REDACTED:{label}]" in parsed.redacted_text
    assert parsed.key_phrases and all(p in parsed.redacted_text.lower() for p in parsed.key_phrases)
    assert fake.requests[-1].body["response_format"]["type"] == "json_schema"


def test_schema_with_nested_models_optionals_and_enums():
    class Entity(BaseModel):
        name: str
        kind: str

    class Enrichment(BaseModel):
        text: str
        summary: str
        entities: list[Entity]
        language: str | None
        score: float
        sensitivity: int
        flagged: bool

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="test-key")
        parsed = (
            client.chat.completions.parse(
                model=CHAT_MODEL, messages=[{"role": "user", "content": PII_TEXT}], response_format=Enrichment
            )
            .choices[0]
            .message.parsed
        )

    assert parsed.text.startswith("Contact Jane at [REDACTED:EMAIL]")
    assert parsed.summary and parsed.entities == [] and parsed.flagged is False


def test_strict_schema_rules_are_enforced_like_the_service(client):
    class WithMap(BaseModel):  # dict[str, int] -> additionalProperties: {"type": "integer"}
        text: str
        redactions: dict[str, int]

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.parse(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], response_format=WithMap
        )
    assert caught.value.param == "response_format"
    assert "'additionalProperties' is required to be supplied and to be false" in caught.value.message


def test_scripted_replies_forget_redaction_or_break_the_schema(fake, client):
    fake.script("chat", [NotRedacting(), Reply('{"redacted_text": 42}')])
    messages = [{"role": "user", "content": PII_TEXT}]

    leaky = client.chat.completions.parse(model=CHAT_MODEL, messages=messages, response_format=Redaction)
    assert "jane.doe@example.com" in leaky.choices[0].message.parsed.redacted_text
    with pytest.raises(ValidationError):
        client.chat.completions.parse(model=CHAT_MODEL, messages=messages, response_format=Redaction)
    assert [r.behaviour for r in fake.requests] == ["NotRedacting", "Reply"]
    assert fake.pending("chat") == 0


def test_custom_responder_receives_the_request_body():
    seen = []

    def responder(body: dict) -> str:
        seen.append(body)
        return "custom answer"

    with FakeOpenAI(responder=responder) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="test-key")
        reply = _ask(client, "ping", temperature=0)

    assert reply.choices[0].message.content == "custom answer"
    assert seen[0]["temperature"] == 0 and seen[0]["messages"][0]["content"] == "ping"


def test_a_failing_responder_is_a_500_the_sdk_does_not_retry():
    def responder(body: dict) -> str:
        raise RuntimeError("bug in the test's responder")

    with FakeOpenAI(responder=responder) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=2)
        with pytest.raises(openai.InternalServerError, match="bug in the test's responder"):
            _ask(client)
        assert fake.count("chat", status=500) == 1  # x-should-retry: false


def test_image_parts_are_counted_and_charged(fake, client):
    prompt = {"type": "text", "text": "Describe the figure."}
    plain = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [prompt]}])
    described = client.chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [prompt, _image_part(_png(1024, 1024)), _image_part(_png(8, 8), "low")],
            }
        ],
    )

    assert [r.images for r in fake.requests] == [0, 2]
    assert "2 image(s)" in described.choices[0].message.content
    # Vision guide: 1024x1024 -> 768x768 = 4 tiles -> 85 + 4 * 170; "low" -> 85.
    assert described.usage.prompt_tokens - plain.usage.prompt_tokens == 765 + 85


def test_a_data_url_that_is_not_an_image_is_refused(client):
    not_png = "data:image/png;base64," + base64.b64encode(b"%PDF-1.7 not an image").decode()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": not_png}}]}],
        )
    assert caught.value.code == "invalid_image_format"


# ---- faults and retries


def test_rate_limit_is_retried_after_retry_after(fake, client):
    fake.script("chat", [RateLimited(retry_after=0.1)])

    reply = _ask(client)

    assert reply.choices[0].finish_reason == "stop"
    assert fake.count("chat", status=429) == 1 and fake.count("chat", status=200) == 1
    limited, answered = fake.requests
    assert answered.headers["x-stainless-retry-count"] == "1"
    # retry-after-ms (100) was honoured, not the SDK's own backoff (>= 0.375 s).
    assert 0.09 <= answered.time - limited.time < 0.375


def test_rate_limit_error_body_when_retries_run_out(fake):
    fake.script("chat", [RateLimited(retry_after=0.01)])
    client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=0)

    with pytest.raises(openai.RateLimitError) as caught:
        _ask(client)
    assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "tokens"
    assert caught.value.response.headers["retry-after-ms"] == "10"
    assert caught.value.response.headers["retry-after"] == "1"


def test_server_error_is_retried(fake, client):
    fake.script("chat", [ServerError(500)])

    assert _ask(client).choices[0].message.content
    assert fake.count("chat", status=500) == 1 and fake.count("chat", status=200) == 1


def test_malformed_body_raises_json_decode_error_without_retry(fake, client):
    fake.script("chat", [Malformed()])

    # The SDK parses a JSON content type with json.loads and lets the error out as is:
    # neither an openai.APIError nor retried.
    with pytest.raises(json.JSONDecodeError):
        _ask(client)
    assert fake.count("chat") == 1


def test_malformed_body_with_strict_validation_is_an_api_response_validation_error(fake):
    fake.script("chat", [Malformed(body=b"<html>bad gateway</html>", content_type="text/html")])
    client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", _strict_response_validation=True)

    with pytest.raises(openai.APIResponseValidationError):
        _ask(client)


def test_slow_answer_times_out_then_the_retry_succeeds():
    # Its own server: close() waits for the abandoned slow answer, which then cannot land in
    # the shared server's records during a later test.
    with FakeOpenAI() as fake:
        fake.script("chat", [Slow(0.6)])
        client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=1, timeout=0.3)

        assert _ask(client).choices[0].message.content
    by_arrival = sorted(fake.requests, key=lambda r: r.time)
    assert [r.behaviour for r in by_arrival] == ["Slow", None]
    assert [r.status for r in by_arrival] == [200, 200]  # the fake answered; the client had left


def test_script_rejects_a_chat_only_behaviour_for_embeddings(fake):
    with pytest.raises(ValueError):
        fake.script("embeddings", [Reply("x")])
    with pytest.raises(ValueError):
        fake.script("completions", [ServerError()])


# ---- embeddings


def test_embeddings_shapes_dimensions_and_base64_default(fake, client):
    default = client.embeddings.create(model=EMBED_MODEL, input=["aspirin dosage", "weather in Paris"])
    as_float = client.embeddings.create(model=EMBED_MODEL, input=["aspirin dosage"], encoding_format="float")
    short = client.embeddings.create(model=EMBED_MODEL, input="aspirin dosage", dimensions=256)
    large = client.embeddings.create(model="text-embedding-3-large", input="aspirin dosage")

    # The SDK asked for base64 on its own and decoded it back to floats.
    assert fake.requests[0].body["encoding_format"] == "base64"
    assert fake.requests[1].body["encoding_format"] == "float"
    assert [d.index for d in default.data] == [0, 1] and default.object == "list"
    assert [len(d.embedding) for d in default.data] == [1536, 1536]
    assert default.data[0].embedding == as_float.data[0].embedding  # float32 on both paths
    assert len(short.data[0].embedding) == 256 and len(large.data[0].embedding) == 3072
    assert math.isclose(math.fsum(v * v for v in default.data[0].embedding), 1.0, rel_tol=1e-5)
    count = tokenizer_for(EMBED_MODEL).count  # cl100k_base for the embedding models
    assert (
        default.usage.prompt_tokens
        == default.usage.total_tokens
        == count("aspirin dosage") + count("weather in Paris")
    )
    assert fake.tokens("embeddings") == (default.usage.prompt_tokens + 3 * count("aspirin dosage"), 0)


def test_explicit_base64_is_little_endian_float32(client):
    raw = (
        client.embeddings.create(model=EMBED_MODEL, input="aspirin", encoding_format="base64")
        .data[0]
        .embedding
    )
    floats = (
        client.embeddings.create(model=EMBED_MODEL, input="aspirin", encoding_format="float")
        .data[0]
        .embedding
    )

    assert isinstance(raw, str)  # asked for explicitly, the SDK hands the string over untouched
    assert list(struct.unpack("<1536f", base64.b64decode(raw))) == floats


def test_embeddings_are_deterministic_and_similar_texts_are_closer(client):
    passages = [
        "The recommended aspirin dosage for adults is 81 mg daily.",
        "Paris weather in spring is mild with occasional rain.",
        "Quarterly revenue grew by twelve percent over the last year.",
    ]
    first = [d.embedding for d in client.embeddings.create(model=EMBED_MODEL, input=passages).data]
    again = [d.embedding for d in client.embeddings.create(model=EMBED_MODEL, input=passages).data]
    query = client.embeddings.create(model=EMBED_MODEL, input="What aspirin dosage should adults take?").data[
        0
    ]

    assert first == again
    scores = [_cosine(query.embedding, p) for p in first]
    assert scores.index(max(scores)) == 0
    assert scores[0] > 0.3 and max(scores[1:]) < 0.1
    tokens = client.embeddings.create(model=EMBED_MODEL, input=[[15339, 1917]]).data[0].embedding
    words = client.embeddings.create(model=EMBED_MODEL, input="hello world").data[0].embedding
    assert tokens == words  # token ids are decoded (cl100k_base) and embedded as text


def test_embedding_limits_answer_400(fake):
    client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=0)
    word = "word "
    long_text = word * 8200
    long_tokens = tokenizer_for(EMBED_MODEL).count(long_text)

    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model=EMBED_MODEL, input=["x"] * 2049)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=EMBED_MODEL, input=["short", long_text])
    with pytest.raises(openai.BadRequestError) as too_much:
        client.embeddings.create(model=EMBED_MODEL, input=[word * 8000] * 38)
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=EMBED_MODEL, input="")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMBED_MODEL, input="x", dimensions=4096)

    assert "'$.input' is invalid" in too_many.value.message and "'$.input' is invalid" in empty.value.message
    assert (
        f"maximum context length is 8192 tokens, however you requested {long_tokens} tokens"
        in too_long.value.message
    )
    assert too_much.value.code == "max_tokens_per_request"
    assert "max 300000 tokens per request" in too_much.value.message
    at_the_limit = client.embeddings.create(model=EMBED_MODEL, input=["x"] * 2048, dimensions=8)
    assert len(at_the_limit.data) == 2048 and at_the_limit.usage.prompt_tokens == 2048
    assert fake.count("embeddings", status=400) == 5 and fake.tokens("embeddings") == (2048, 0)


# ---- auth, models, concurrency, lifecycle


def test_wrong_or_missing_key_is_401_and_never_recorded(fake):
    with pytest.raises(openai.AuthenticationError) as caught:
        _ask(openai.OpenAI(base_url=fake.base_url, api_key="sk-wrong-key", max_retries=0))
    assert caught.value.code == "invalid_api_key"
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert caught.value.body["type"] == "invalid_request_error"

    request = urllib.request.Request(fake.base_url + "/models")  # no Authorization header at all
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(request, timeout=5)
    assert missing.value.code == 401
    assert set(json.loads(missing.value.read())["error"]) == {"message", "type", "param", "code"}

    assert fake.count("chat", status=401) == 1 and fake.count("models", status=401) == 1
    assert "sk-wrong-key" not in repr(fake.requests)
    assert fake.requests[0].headers["authorization"] == "[REDACTED]"


def test_models_endpoint(client):
    ids = [model.id for model in client.models.list()]
    assert CHAT_MODEL in ids and EMBED_MODEL in ids
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nonexistent")


def test_concurrent_requests_are_all_answered(fake, client):
    def call(i: int) -> str:
        if i % 2:
            return _ask(client, f"question {i}").choices[0].message.content
        return str(len(client.embeddings.create(model=EMBED_MODEL, input=f"text {i}").data[0].embedding))

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(8)))

    assert all(answers) and len(answers) == 8
    assert fake.count("chat", status=200) == 4 and fake.count("embeddings", status=200) == 4


def test_close_is_prompt_and_idempotent():
    fake = FakeOpenAI()
    fake.script("chat", [Slow(30)])
    client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=0, timeout=0.2)
    with pytest.raises(openai.APITimeoutError):
        _ask(client)

    started = time.monotonic()
    fake.close()
    fake.close()
    assert time.monotonic() - started < 2
    with pytest.raises(openai.APIConnectionError):
        _ask(client)


def test_reset_forgets_requests_still_in_flight():
    with FakeOpenAI() as fake:
        fake.script("chat", [Slow(5)])
        client = openai.OpenAI(base_url=fake.base_url, api_key="test-key", max_retries=0, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            _ask(client)
        fake.reset()
    # close() woke the slow answer; it came back after the reset and was not recorded.
    assert fake.requests == []


def test_redaction_labels_are_the_pipelines_markers():
    from include.backends.enrichers import MARKERS

    assert set(DEFAULT_REDACTION_LABELS.values()) <= set(MARKERS.values())
