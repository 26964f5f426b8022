"""The prompt: numbered passages with their citations, the question, and a budget it never exceeds.

The context window holds the prompt and the answer. So the passages go in by rank while
the prompt stays within ``context_tokens - max_new_tokens`` (counted with the generator's
own tokenizer, the chat template's markers included); the first passage that does not fit
is cut to the room left, and the ones after it are left out. Passage numbers are retrieval
ranks, so an answer's ``[2]`` names the second passage of the answers file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from include.backends.generators import Messages, TokenCounter, messages_tokens
from include.retrieval import Passage

DONT_KNOW = "I don't know."
SYSTEM = (
    "You answer questions using only the numbered passages from the user's documents. "
    "Cite the passages you use by their number, like [1]. "
    f"If the passages do not contain the answer, reply exactly: {DONT_KNOW}"
)
NO_PASSAGES = f"{DONT_KNOW} No stored passage is close enough to the question."
# Below this many tokens a cut passage is more noise than context: it is left out instead.
MIN_CUT_TOKENS = 32

_CITATION = re.compile(r"\[(\d+)\]")


class QuestionTooLong(ValueError):
    """The question alone leaves no room for any context within the model's window."""


@dataclass
class Prompt:
    messages: Messages
    tokens: int  # counted, template included
    passages: int  # how many passages the context holds
    trimmed: int  # passages cut or left out to fit the budget


def header(passage: Passage) -> str:
    return f"[{passage.rank}] ({passage.citation})"


def render(question: str, blocks: list[str]) -> Messages:
    context = "\n\n".join(blocks)
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Passages:\n\n{context}\n\nQuestion: {question}"},
    ]


def build_prompt(question: str, passages: list[Passage], count: TokenCounter, *, context_tokens: int,
                 max_new_tokens: int) -> Prompt:
    budget = context_tokens - max_new_tokens
    blocks: list[str] = []
    used = messages_tokens(count, render(question, blocks))
    if used > budget:
        raise QuestionTooLong(f"the question takes {used} tokens with the instructions; the model's window "
                              f"({context_tokens}) leaves {budget} for a prompt")
    trimmed = 0
    for number, passage in enumerate(passages):
        block = f"{header(passage)}\n{passage.text}"
        with_block = messages_tokens(count, render(question, [*blocks, block]))
        if with_block <= budget:
            blocks.append(block)
            used = with_block
            continue
        cut = _cut_to_fit(question, blocks, passage, count, budget)
        if cut is not None:
            blocks.append(cut)
            used = messages_tokens(count, render(question, blocks))
        trimmed = len(passages) - number
        break
    return Prompt(render(question, blocks), used, len(blocks), trimmed)


def _cut_to_fit(question: str, blocks: list[str], passage: Passage, count: TokenCounter, budget: int) -> str | None:
    """The longest word-boundary prefix of the passage that fits, marked as cut; None if too small."""
    words = passage.text.split()
    low, high = 0, len(words)
    while low < high:  # the largest number of words that fits
        middle = (low + high + 1) // 2
        block = f"{header(passage)}\n{' '.join(words[:middle])} …"
        if messages_tokens(count, render(question, [*blocks, block])) <= budget:
            low = middle
        else:
            high = middle - 1
    text = " ".join(words[:low])
    if count(text) < MIN_CUT_TOKENS:
        return None
    return f"{header(passage)}\n{text} …"


def cited(answer: str, passages: int) -> list[int]:
    """Passage numbers the answer cites, in order of first mention, only those that exist."""
    seen: list[int] = []
    for match in _CITATION.finditer(answer):
        number = int(match.group(1))
        if 1 <= number <= passages and number not in seen:
            seen.append(number)
    return seen
