"""How far quantized greedy answers follow the fp16 model's: the measurement behind the serve check's
tolerance (hubtool/serve/checks.py MATCH_WORDS).

    python bench/serve.py DEMO_WORK_DIR [--max-tokens 48]

Reads a finished `hubtool demo` work dir (its release stages: the fp16 merge, GPTQ 4-bit 32g, GGUF Q4_K_M
and Q8_0), serves PROMPTS to each exactly as the release's serve check does (transformers generate for fp16
and GPTQ, llama.cpp's server for the GGUFs) and prints, per artifact and prompt, how many leading words
agree with fp16's answer, how many of fp16's leading words were decisive, and whether the answer ended its
turn. The last line gives, per precision, the largest word tolerance all these answers meet (the check
demands min(tolerance, fp16's decisive words) leading words).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France? Answer with one word.",
    "What is a Python list? Answer in one sentence.",
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 2 + 2?",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in the solar system?",
    "What does a for loop do in Python? Answer in one sentence.",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work_dir", type=Path)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    from hubtool.serve import serve_gguf, serve_transformers
    from hubtool.serve.checks import common_words, precision

    stages = Path(args.work_dir) / "release-work" / "stages"
    fp16 = next(stages.glob("merge-*")) / "out"
    gptq = next(stages.glob("gptq-*")) / "out"
    ggufs = {t: next(next(stages.glob(f"gguf-{t}-*")).glob("out/*.gguf")) for t in ("Q8_0", "Q4_K_M")}
    tmp = Path(tempfile.mkdtemp())
    runs = []
    start = time.monotonic()
    ref = serve_transformers(fp16, PROMPTS, args.max_tokens, out=tmp, artifact="fp16", variant="fp16", what="fp16", bits=16.0,
                             dtype="float32", reference=True)
    runs.append(("GPTQ 4-bit 32g", serve_transformers(gptq, PROMPTS, args.max_tokens, out=tmp, artifact="gptq", variant="gptq",
                                                       what="gptq", bits=4.0, dtype="auto")))
    from hubtool.gguf.facts import NOMINAL_BPW

    for t, path in ggufs.items():
        runs.append((f"GGUF {t}", serve_gguf(path, PROMPTS, args.max_tokens, out=tmp, variant=t, bits=NOMINAL_BPW[t], tokenizer_dir=fp16)))
    print(f"fp16 reference answers (max_tokens {args.max_tokens}):")
    for s in ref.samples:
        print(f"  {s.prompt!r}: {s.answer!r} [{s.finish}, {s.tokens} tokens, decisive words {s.decisive_words}, "
              f"end decisive {s.stop_decisive}]")
    worst: dict[str, int] = {}
    print("\nartifact          prompt                                              agree  decisive  capped  finish  (fp16)")
    for label, answers in runs:
        for s, r in zip(answers.samples, ref.samples):
            agree = common_words(s.answer, r.answer)
            capped = min(agree, r.decisive_words)
            cls = precision(answers.bits)
            worst.setdefault(cls, 99)
            if agree < r.decisive_words:  # diverged inside fp16's decisive words: a tolerance above AGREE would fail it
                worst[cls] = min(worst[cls], agree)
            print(f"{label:<17} {s.prompt[:50]:<51} {agree:>5}  {r.decisive_words:>8}  {capped:>6}  {s.finish:<6}  ({r.finish})")
            if agree < min(3, r.decisive_words):
                print(f"{'':<17}   -> {s.answer!r}")
    print("\nlargest tolerance (words) every answer above meets, by precision (99: no divergence inside fp16's decisive words):",
          ", ".join(f"{k}: {v}" for k, v in sorted(worst.items())))
    print(f"({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
