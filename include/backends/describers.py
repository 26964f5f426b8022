"""Describers: an image of a picture or a table in, a short description for the search index out.

``OpenAIDescriber`` sends the image (PNG, as a data URL) to an OpenAI-compatible vision model
(GPT-4o by default) with the SDK's retries, and counts tokens and cost. There is no local
default: no vision model installs from PyPI here, so pictures are described only when
``describe_pictures`` is set (and otherwise counted, not described).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from include.backends.openai_api import Usage, call_usage, openai_client
from include.settings import PipelineSettings

DESCRIBE_INSTRUCTIONS = (
    "Describe this picture or table from a document for a search index, in at most three sentences: "
    "what it shows, and any numbers, labels or trends it makes plain. Do not guess beyond what is visible."
)


@dataclass
class Description:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)


class OpenAIDescriber:
    def __init__(self, settings: PipelineSettings) -> None:
        self._settings = settings
        self._client = openai_client(settings, settings.openai_base_url)
        self.model = settings.describe_model

    def describe(self, png: bytes) -> Description:
        image = {"url": "data:image/png;base64," + base64.b64encode(png).decode(), "detail": "low"}
        raw = self._client.chat.completions.with_raw_response.create(
            model=self.model, temperature=0, max_completion_tokens=self._settings.describe_max_tokens,
            messages=[{"role": "user", "content": [{"type": "text", "text": DESCRIBE_INSTRUCTIONS},
                                                   {"type": "image_url", "image_url": image}]}],
        )
        reply = raw.parse()
        text = " ".join((reply.choices[0].message.content or "").split())
        return Description(text, self.model, call_usage(self._settings, self.model, raw, reply))


def build_describer(settings: PipelineSettings) -> OpenAIDescriber | None:
    return OpenAIDescriber(settings) if settings.describe_pictures else None
