"""`card check` time vs header size: a card whose header holds N tags, checked as `hubtool card check` does.

Prints seconds per header size; linear means the s/MB column stays flat. Run:
    python bench/card_check.py 20000 80000 160000
"""

from __future__ import annotations

import sys
import time

from hubtool.card import check_card


def card(n: int) -> str:
    tags = "".join(f"- tag-{i:07d}\n" for i in range(n))
    return f"---\nlicense: mit\ntags:\n{tags}---\n# Model\n\nText.\n"


if __name__ == "__main__":
    check_card(card(10))  # imports out of the timing
    for n in [int(a) for a in sys.argv[1:]] or [20000, 80000, 160000]:
        text = card(n)
        start = time.perf_counter()
        check_card(text)
        took = time.perf_counter() - start
        print(f"{n:7d} tags  {len(text) / 1e6:5.2f} MB header  {took:6.2f} s  {took / (len(text) / 1e6):5.2f} s/MB", flush=True)
