"""Serve-check: every artifact of a release answers a few prompts the way users will run it (transformers'
`generate` with the chat template for fp16, adapter and GPTQ; llama.cpp's OpenAI-compatible server for GGUF),
and the answers are checked (checks.py) before anything is published.

- generate.py: greedy answers from a transformers model
- server.py: llama-cpp-python's server on a free loopback port, asked over HTTP
- checks.py: non-empty, no template tokens, begins like fp16, ends its turn
"""

from __future__ import annotations

from pathlib import Path

from hubtool.artifacts import ServeAnswers, ServeSample
from hubtool.serve.checks import check_answers, check_reference  # noqa: F401  (the release's stages call them from here)


def serve_transformers(folder: Path, prompts: list[str], max_tokens: int, *, out: Path, artifact: str, variant: str, what: str,
                       bits: float, dtype: str, adapter: Path | None = None, tokenizer_dir: Path | None = None,
                       reference: bool = False, trust_remote_code: bool = False) -> ServeAnswers:
    """FOLDER (with ADAPTER on top through PEFT) loaded on CPU as the load check loads it, answering PROMPTS greedily."""
    from hubtool.release.load_check import load_transformers
    from hubtool.serve.generate import answers

    model, tok = load_transformers(folder, dtype, adapter=adapter, tokenizer_dir=tokenizer_dir, trust_remote_code=trust_remote_code)
    samples = answers(model, tok, prompts, max_tokens=max_tokens, reference=reference)
    del model
    how = "transformers generate" + (" (PEFT)" if adapter is not None else "") + (", chat template" if tok.chat_template else ", plain text")
    return ServeAnswers(Path(out), artifact=artifact, variant=variant, what=what, bits=bits, how=how, samples=samples)


def serve_gguf(path: Path, prompts: list[str], max_tokens: int, *, out: Path, variant: str, bits: float, tokenizer_dir: Path,
               trust_remote_code: bool = False, verbose: bool = False) -> ServeAnswers:
    """PATH served by llama.cpp's server (one start for every prompt), asked with the GGUF's own chat template."""
    import gguf
    from transformers import AutoTokenizer

    from hubtool.gguf.header import read_header
    from hubtool.serve.checks import find_markers, template_markers
    from hubtool.serve.server import ask, llama_server

    chat = read_header(path).metadata.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) is not None  # llama.cpp's parser: no vocabulary walk
    markers = template_markers(AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code))
    samples = []
    with llama_server(path, context=512 + max_tokens, verbose=verbose) as url:
        for prompt in prompts:
            reply = ask(url, prompt, chat=chat, max_tokens=max_tokens)
            samples.append(ServeSample(prompt, reply.text.strip(), reply.finish if reply.finish in ("stop", "length", "error") else "length",
                                       reply.tokens, find_markers(reply.text, markers), error=reply.error))
    how = "llama.cpp server " + ("/v1/chat/completions, the GGUF's chat template" if chat else "/v1/completions")
    return ServeAnswers(Path(out), artifact="gguf", variant=variant, what=path.name, bits=bits, how=how, samples=tuple(samples))
