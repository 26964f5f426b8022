"""What every OpenAI-compatible backend shares: the SDK client, its retries, token counts, cost.

The key is read by the SDK from ``OPENAI_API_KEY`` in the environment of the process that
makes the calls (a Ray worker; see ``include.backends.secrets``), never from the settings a
job is submitted with. Retries of
429 and 5xx answers are the SDK's own (exponential backoff with jitter, honouring
``Retry-After``), ``openai_max_retries`` of them; each call reports how many it took.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from include.backends.secrets import load_worker_secrets
from include.settings import PipelineSettings


@dataclass
class Usage:
    """What calls to a paid API used: the unit of cost and of the run's accounting."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    cost_usd: float = 0.0

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.retries += other.retries
        self.cost_usd += other.cost_usd

    @classmethod
    def total(cls, usages: Iterable[Usage | dict[str, Any]]) -> Usage:
        """The sum of several calls' usage (dicts: as it travels in a stage's payloads)."""
        total = cls()
        for usage in usages:
            total.add(usage if isinstance(usage, Usage) else cls(**usage))
        return total

    def metrics(self) -> dict[str, float]:
        """As a stage's metrics (the contract's ``SPEND_METRICS``), the cost rounded to a millionth of a dollar."""
        return {**asdict(self), "cost_usd": round(self.cost_usd, 6)}


def call_usage(settings: PipelineSettings, model: str, raw: Any, reply: Any) -> Usage:
    """One SDK call's usage: its tokens (from the reply, when there is one), the SDK's retries,
    the price of the tokens."""
    tokens = getattr(reply, "usage", None)
    prompt = tokens.prompt_tokens if tokens else 0
    completion = (getattr(tokens, "completion_tokens", 0) or 0) if tokens else 0
    return Usage(requests=1, prompt_tokens=prompt, completion_tokens=completion, retries=raw.retries_taken,
                 cost_usd=cost_usd(settings, model, prompt, completion))


def cost_usd(settings: PipelineSettings, model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Price of the tokens from the settings' price table; 0 for a model it does not list."""
    for price in settings.llm_prices:
        if price.model == model:
            return (prompt_tokens * price.input_usd_per_million + completion_tokens * price.output_usd_per_million) / 1e6
    return 0.0


def openai_client(settings: PipelineSettings, base_url: str | None) -> Any:
    import openai

    load_worker_secrets(settings)

    return openai.OpenAI(
        base_url=base_url, max_retries=settings.openai_max_retries, timeout=settings.openai_timeout_seconds
    )


@lru_cache(maxsize=8)
def token_encoding(model: str) -> Any:
    """The model's tiktoken encoding (tiktoken's own model-to-encoding map), built from the BPE files
    bpe-openai ships: tiktoken itself would download them. A model tiktoken does not know is
    counted with o200k_base, GPT-4o's encoding."""
    import bpe_openai
    from tiktoken.model import encoding_name_for_model

    try:
        name = encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"
    return bpe_openai.get_encoding(name)
