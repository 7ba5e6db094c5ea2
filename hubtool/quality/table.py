"""quality.json rows as the fixed-width table that `hubtool release` and `hubtool demo` print.

Below cli/ so the demo (and anything else) can print it without importing a command module; no
numpy, so importing the CLI stays cheap.
"""

from __future__ import annotations

from typing import Any


def quality_table(rows: list[dict[str, Any]]) -> str:
    """Perplexity / KL / top-1 vs fp16 for every verified artifact, as a fixed-width table."""
    head = f"{'variant':<34} {'kind':<5} {'size MB':>8} {'ppl':>8} {'fp16 ppl':>9} {'d ppl %':>8} {'KL':>8} {'top-1':>6}"
    out = [head, "-" * len(head)]
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f}" if r.get("size_bytes") else "-"
        ref = r.get("ref_perplexity")
        ppl = r.get("perplexity")
        delta = f"{(ppl / ref - 1) * 100:+.1f}" if ppl and ref else "-"
        out.append(f"{str(r.get('variant')):<34} {str(r.get('kind')):<5} {size:>8} {ppl or float('nan'):>8.3f} "
                   f"{ref or float('nan'):>9.3f} {delta:>8} {r.get('kl_div', float('nan')):>8.4f} {r.get('top1', float('nan')):>6.3f}")
    return "\n".join(out)
