"""Benchmark: a release's wall time one stage after another (`--jobs 1`) vs stages at once (`--jobs N`).

Builds a random Llama of the given shape (default: SmolLM2-135M's width, 8 layers, ~29M parameters)
with a tiny SentencePiece tokenizer, then runs `hubtool release` on it twice against local Hubs, each
in its own work dir, and prints per run the wall time, CPU time, the stage times, the sampled peak RSS
of the whole process tree and the RAM budget; then whether both pushed byte-identical repos.

    python bench/release_jobs.py [--jobs 2] [--layers 8] [--hidden 576] [--intermediate 1536] [--out DIR]

Heavy (GPTQ on every layer): run it on a quiet machine and report `uptime` beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASE_YAML = """\
name: bench
namespace: bench
quants: [gptq, gguf]
gptq: {presets: [gptq-4bit-32g-actorder], samples: 8, seq_len: 128}
gguf: {types: [q4_k_m, q8_0]}
verify: {max_tokens: 512, context: 128}
card: {license: apache-2.0, base_model: bench/base}
"""


def build_model(out: Path, args: argparse.Namespace) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny import make_tiny_llama, train_tokenizer

    tok = train_tokenizer(out / "tok")
    return make_tiny_llama(out / "model", tok, hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                           num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 192), max_position_embeddings=2048)


def release(model: Path, root: Path, jobs: int) -> dict:
    tag = f"jobs{jobs}"
    cmd = [sys.executable, "-m", "hubtool", "release", str(model), "--config", str(root / "release.yaml"), "--work-dir", str(root / f"w-{tag}"),
           "--local-hub", str(root / f"hub-{tag}"), "--jobs", str(jobs), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"release --jobs {jobs} failed:\n{res.stderr[-3000:]}")
    summary = json.loads(res.stdout)
    return {"jobs": jobs, "wall_s": round(wall, 1), "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
            "stages": {s["name"]: s["seconds"] for s in summary["stages"]}, "concurrency": summary.get("concurrency"),
            "hub": str(root / f"hub-{tag}"), "repos": summary["repos"]}


def hub_files(run: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from huggingface_hub import HfApi

    from hubtool.hub_server import serve_in_thread

    out = {}
    with serve_in_thread(Path(run["hub"])) as hub:
        api = HfApi(endpoint=hub.url)
        for r in run["repos"]:
            out[f"{r['repo_id']}@{r['branch']}"] = {e.path: (e.lfs.sha256 if e.lfs else e.blob_id) for e in
                                                    api.list_repo_tree(r["repo_id"], revision=r["branch"], recursive=True) if hasattr(e, "blob_id")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temp folder)")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="release-jobs-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "release.yaml").write_text(RELEASE_YAML)
    model = build_model(root, args)
    print(f"model: {args.layers} layers, hidden {args.hidden}; load before: {os.getloadavg()}", flush=True)
    runs = [release(model, root, 1), release(model, root, args.jobs)]
    for run in runs:
        c = run["concurrency"] or {}
        extra = (f", peak tree RSS {c['peak_tree_rss_bytes'] / 1e9:.2f} GB of a {c['memory_budget_bytes'] / 1e9:.1f} GB budget, "
                 f"{c['max_running']} at once") if c else ""
        print(f"--jobs {run['jobs']}: wall {run['wall_s']} s, CPU {run['cpu_s']} s{extra}")
        print("    " + ", ".join(f"{k} {v:.0f} s" for k, v in run["stages"].items()))
    print(f"concurrent / sequential wall: {runs[1]['wall_s'] / runs[0]['wall_s']:.2f}; load after: {os.getloadavg()}")
    print(f"repos byte-identical: {hub_files(runs[0]) == hub_files(runs[1])}")


if __name__ == "__main__":
    main()
