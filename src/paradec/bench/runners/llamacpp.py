"""llama.cpp peers through ``llama-cpp-python``, on the same GGUF file the target came from.
llama.cpp runs the GGUF's own quantization (the transformers rows run it dequantized)."""

from __future__ import annotations

import time
from pathlib import Path

from .base import RunOutput, Runner

PROMPT_LOOKUP_TOKENS = 10


def gguf_quantization(path: str) -> str:
    """The GGUF's file type (e.g. ``Q4_1``), or '' when it cannot be read."""
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        field = reader.get_field("general.file_type")
        if field is None:
            return ""
        value = int(field.parts[field.data[0]][0])
        return gguf.LlamaFileType(value).name.replace("MOSTLY_", "")
    except Exception:  # noqa: BLE001 - a label only
        return ""


class LlamaCppRunner(Runner):
    MODES = {
        "llama.cpp": "llama.cpp greedy on the same GGUF",
        "llama.cpp-pld": f"llama.cpp prompt-lookup drafting (LlamaPromptLookupDecoding, {PROMPT_LOOKUP_TOKENS} tokens)",
    }

    def __init__(self, engine, name: str, n_ctx: int = 4096) -> None:
        self.engine, self.name = engine, name
        self.description = self.MODES[name]
        self.n_ctx = n_ctx
        self.llm = None
        self.quantization = ""

    def prepare(self) -> None:
        gguf_path = self.engine.models.gguf_path
        if not gguf_path:
            raise RuntimeError("the target was not loaded from a GGUF file, which llama.cpp needs")
        try:
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        except ImportError:
            raise RuntimeError("llama-cpp-python is not installed (pip install llama-cpp-python)") from None
        import torch

        draft = LlamaPromptLookupDecoding(num_pred_tokens=PROMPT_LOOKUP_TOKENS) if self.name.endswith("-pld") else None
        cuda = self.engine.device.type == "cuda"
        from ...models.llamacpp import extra_buffers_note, open_llama

        self.llm = open_llama(
            gguf_path,
            n_ctx=self.n_ctx,
            n_batch=512,
            n_threads=torch.get_num_threads(),
            n_gpu_layers=-1 if cuda else 0,
            draft_model=draft,
            # with a draft model llama-cpp-python keeps logits for every position, but sizes its
            # score buffer by n_batch unless logits_all is set: a prompt past n_batch (512) tokens
            # then failed with a broadcast error (measured on a 430-token summarization prompt)
            logits_all=draft is not None,
            verbose=False,
        )
        self.quantization = gguf_quantization(gguf_path)
        q = "".join(f", {part}" for part in (self.quantization, extra_buffers_note()) if part)
        self.description += f" ({Path(gguf_path).name}{q}, run quantized)"
        self.eos = set(self.engine.eos_ids) | {int(self.llm.token_eos())}

    def run(self, prompt_ids, max_new_tokens, temperature, seed) -> RunOutput:
        llm = self.llm
        if len(prompt_ids) + max_new_tokens + PROMPT_LOOKUP_TOKENS + 1 > self.n_ctx:
            raise RuntimeError(f"prompt of {len(prompt_ids)} tokens does not fit llama.cpp's n_ctx={self.n_ctx}")
        sizes: list[int] = []
        inner_eval = type(llm).eval

        def counting_eval(tokens):
            sizes.append(len(tokens))
            return inner_eval(llm, tokens)

        llm.eval = counting_eval
        if temperature > 0:
            params = dict(temp=temperature, top_k=0, top_p=1.0, min_p=0.0)
            llm.set_seed(int(seed))
        else:
            params = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0)
        tokens: list[int] = []
        try:
            t0 = time.perf_counter()
            llm.reset()  # no prefix reuse from the previous prompt: every row prefills in full
            gen = llm.generate(list(prompt_ids), repeat_penalty=1.0, reset=True, **params)
            for tok in gen:
                tokens.append(int(tok))
                if int(tok) in self.eos or len(tokens) >= max_new_tokens:
                    break
            gen.close()
            seconds = time.perf_counter() - t0
        finally:
            del llm.eval
        forward_tokens = (1 + sum(sizes[1:])) if sizes else None
        return RunOutput(token_ids=tokens, seconds=seconds, forwards=len(sizes) or None, forward_tokens=forward_tokens)

    def close(self) -> None:
        if self.llm is not None:
            try:
                self.llm.close()
            except Exception:  # noqa: BLE001
                pass
            self.llm = None
