"""How far quantized greedy answers follow the fp16 model's: the measurement behind the serve check's
tolerance (hubtool/serve/checks.py TOLERANCE).

    python bench/serve.py DEMO_WORK_DIR [--max-tokens 48]

Reads a finished `hubtool demo` work dir (its release stages: the fp16 merge, GPTQ 4-bit 32g, GGUF Q4_K_M
and Q8_0), serves PROMPTS to each exactly as the release's serve check does (transformers generate for fp16
and GPTQ, llama.cpp's server for the GGUFs) and prints, per artifact and prompt, how many leading words
agree with fp16's answer and, where they part, how decisively fp16 chose the word the artifact did not
follow (log-ratio of its top-1 token to the runner-up, nats). A precision's margin must lie above every
such divergence margin for the check to pass these answers; the last lines say what the current
TOLERANCE demands of them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/gguf.py would shadow gguf-py
sys.path.insert(0, str(HERE.parent))

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
    for r in ref.samples:
        print(f"  {r.prompt!r}: {r.answer!r} [{r.finish}, {r.tokens} tokens, end margin {r.stop_margin}]")
        print(f"      word margins: {' '.join(f'{m:.2f}' for m in r.word_margins[:12])}")
    from hubtool.serve.checks import TOLERANCE

    worst: dict[str, float] = {}
    failures = []
    print("\nartifact          prompt                                              agree  fp16 margin there  finish  (fp16)")
    for label, answers in runs:
        level = precision(answers.bits)
        for s, r in zip(answers.samples, ref.samples):
            agree = common_words(s.answer, r.answer)
            there = r.word_margins[agree] if agree < len(r.word_margins) else None
            if there is not None and agree < 12:
                worst[level] = max(worst.get(level, 0.0), there)
            most, margin = TOLERANCE[level]
            need = min(most, sum(1 for m in r.word_margins if m >= margin))
            if agree < need or (r.finish == "stop" and r.stop_margin >= margin and s.finish != "stop"):
                failures.append(f"{label}: {r.prompt!r}")
            shown = "-" if there is None else f"{there:.2f}"
            print(f"{label:<17} {s.prompt[:50]:<51} {agree:>5}  {shown:>17}  {s.finish:<6}  ({r.finish})")
            if there is not None and agree < 3:
                print(f"{'':<17}   -> {s.answer[:100]!r}")
    print("\nlargest fp16 margin (nats) at a divergence within 12 words, by precision:",
          ", ".join(f"{k}: {v:.2f}" for k, v in sorted(worst.items())))
    print(f"TOLERANCE {TOLERANCE}: {'every answer passes' if not failures else 'fails ' + '; '.join(failures)}")
    print(f"({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
