"""The size-vs-KL picture of a GGUF release (`frontier.png`): every file of the repo as one point,
stock llama.cpp types and hubtool's tuned mixes marked apart, so a reader sees which file buys the
least divergence from fp16 for its size. Drawn with matplotlib (the `gguf` extra), written to a
temporary file and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hubtool.errors import InputError
from hubtool.gguf.facts import is_tuned

PLOT_NAME = "frontier.png"
PLOT_BYTES = 48_000  # what the plot of a release's few files weighs (bench/results/frontier-*.png), for the plan
POINTS_KEY = "Description"  # PNG text chunk holding [[variant, bytes, KL], ...]


def read_points(path: Path) -> list[tuple[str, int, float]]:
    """The points a frontier.png was drawn from (its text chunk)."""
    from PIL import Image

    with Image.open(path) as im:
        return [(str(v), int(b), float(k)) for v, b, k in json.loads(im.text[POINTS_KEY])]


def frontier_points(rows: list[dict]) -> list[tuple[str, int, float]]:
    """(variant, bytes, KL) of every quality row that has a KL; one point per variant."""
    seen: dict[str, tuple[str, int, float]] = {}
    for r in rows:
        if r.get("kl_div") is not None and r.get("size_bytes"):
            seen[str(r["variant"])] = (str(r["variant"]), int(r["size_bytes"]), float(r["kl_div"]))
    return sorted(seen.values(), key=lambda p: p[1])


def plot_frontier(points: list[tuple[str, int, float]], path: Path, *, title: str) -> Path:
    """Write PATH: file size (MB) vs KL (log scale), stock grey circles, tuned red stars, each labelled."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("matplotlib is not installed (it draws frontier.png); run `pip install 'hubtool[gguf]'`") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tuned, style in ((False, dict(marker="o", color="tab:gray", label="llama.cpp stock type")),
                         (True, dict(marker="*", color="tab:red", markersize=12, label="tuned mix (same size as its stock type)"))):
        pts = [p for p in points if is_tuned(p[0]) == tuned]
        if not pts:
            continue
        ax.plot([p[1] / 1e6 for p in pts], [max(p[2], 1e-6) for p in pts], linestyle="none", **style)
        for v, size, kl in pts:
            ax.annotate(v, (size / 1e6, max(kl, 1e-6)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("KL divergence vs fp16 (nats/token, held-out text)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial")
    # the same points give the same bytes (no version stamp); the points ride along as text, for tools and tests
    fig.savefig(tmp, dpi=120, format="png", metadata={"Software": None, POINTS_KEY: json.dumps([list(p) for p in points])})
    plt.close(fig)
    os.replace(tmp, path)
    return path
