"""llama.cpp with and without its CPU repack buffers on one GGUF: peak RSS (total and anonymous) and time.

    python bench/gguf_repack.py MODEL.gguf [--windows 1] [--context 512]

Each setting runs in its own process (a fresh address space), evaluating WINDOWS random windows with
every position's logits kept, as verify:gguf does. Anonymous RSS is what the kernel cannot drop;
the rest is the mmapped file's page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def probe(path: str, extra: bool, windows: int, context: int) -> dict:
    import numpy as np

    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = extra
        return p

    lib.llama_model_default_params = params
    import llama_cpp

    peak = {"rss": 0, "anon": 0}

    def sample() -> None:
        while True:
            with open(f"/proc/{os.getpid()}/status") as fh:
                st = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in fh if ln.startswith(("VmRSS", "RssAnon"))}
            peak["rss"], peak["anon"] = max(peak["rss"], st["VmRSS"]), max(peak["anon"], st["RssAnon"])
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.time()
    llm = llama_cpp.Llama(model_path=path, n_ctx=context, n_batch=context, n_ubatch=context, logits_all=True,
                          n_threads=os.cpu_count(), verbose=False)
    load = time.time() - t0
    rng = np.random.default_rng(0)
    t0 = time.time()
    for _ in range(windows):
        llm.reset()
        llm.eval(rng.integers(100, llm.n_vocab(), context).tolist())
    return {"repack": extra, "load_s": round(load, 1), "eval_s": round(time.time() - t0, 1), "tokens": windows * context,
            "peak_rss_gb": round(peak["rss"] / 1e9, 3), "peak_anon_gb": round(peak["anon"] / 1e9, 3),
            "file_gb": round(os.path.getsize(path) / 1e9, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(probe(a.gguf, a.child == "1", a.windows, a.context)))
        return
    for extra in ("0", "1"):
        out = subprocess.run([sys.executable, __file__, a.gguf, "--windows", str(a.windows), "--context", str(a.context),
                              "--child", extra], capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
