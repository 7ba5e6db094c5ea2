"""Size-targeted GGUF mixes: per-tensor types chosen by measured sensitivity under a size budget.

Why this design (numbers in bench/frontier.py): a tensor's quantization noise costs KL roughly in
proportion to (how much noise it puts on its outputs) x (how much the loss reacts to noise there).
Both factors are measured, not guessed:

- the noise: every candidate type is applied to a sample of the tensor's rows with ggml's own
  quantizer (`ggml_quantize_chunk`, with the importance matrix llama.cpp will use) and read back
  with gguf-py's dequantizer; the error is weighted per input column by the importance matrix
  (mean squared activation), i.e. the expected squared output error per token;
- the reaction (hubtool/quality/sensitivity.py): the diagonal Fisher of each linear layer's outputs, E[(d loss / d y_i)^2] with
  labels drawn from the model's own distribution, one forward+backward pass over calibration text;
- the activations' noise: ggml's CPU matmul rounds a layer's input to the weight type's `vec_dot_type`
  before the dot products (Q8_K, 256-wide blocks, for K- and most IQ-quants; Q8_0/Q8_1, 32-wide, for
  Q4_0..Q8_0 and IQ4_NL; F16/BF16 for those). The same pass pushes each rounding of the real inputs
  through the layer, weighted token by token by the loss's reaction there (`activation_noise`). On Gemma-3 270M, whose weights
  sit exactly on a Q4_K_M grid, this is all of stock Q4_K_M's KL: 0.0050 with every weight exact,
  0.0005 with the layers at F16 (bench/results/frontier-gemma3-270m.md).

Second order, predicted KL per token = 1/2 sum_i F_i sum_j m_j dW_ij^2. The predictions add over
tensors, so choosing the types is a multiple-choice knapsack: minimise the summed predicted KL with
the bytes under the budget (a stock type's size, or a bits-per-weight target). allocate solves it
exactly by dynamic programming over a fine byte grid (so one big upgrade, e.g. a 262k-row embedding,
can be paid for by downgrades elsewhere), compares it with a greedy walk up each tensor's convex hull,
and keeps the better. F16 and BF16 are the top rungs: bytes can always go where they gain most. The result is a
recipe in llama-quantize's `--tensor-type-file` format (one `regex=type` per line), applied through
`llama_model_quantize_params.tt_overrides` and checked by reading the written file back.
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hubtool.errors import InputError, QuantizeError
from hubtool.progress import log, track
from hubtool.quality.sensitivity import output_fisher

# Candidate ggml types by family: a tuned K-quant stays a K-quant file (same CPU/GPU kernels as
# stock); an IQ stock type may also use the IQ grids. Block-32 types cover rows whose length is
# not a multiple of 256 (SmolLM2's 576), where llama.cpp itself falls back to them.
# F16 and BF16 are the top rungs (ggml quantizes and llama.cpp writes them like any other override):
# without them a budget that has every tensor at Q8_0 but one (a huge embedding) cannot be spent.
K_FAMILY = ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "IQ4_NL", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "BF16", "F16")
IQ_FAMILY = ("IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_XS") + K_FAMILY
FILL_TO = 0.99  # a tuned file "the size of" stock spends at least this share of stock's bytes
SAMPLE_ROWS = 256  # rows per tensor measured at each type: the cost stays per-tensor, not per-weight
DP_CELLS = 1 << 17  # allocate's byte grid: rounding each step up to a cell leaves at most (tensors x cell) of the budget unspent


# ggml-cpu's type_traits_cpu[type].vec_dot_type: what a matmul's input is rounded to for each weight type
# (Q8_1 rounds like Q8_0: same 32-wide blocks, same scale; it also stores the block sums).
_VEC_DOT_32 = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"}


def vec_dot_type(type_name: str) -> str:
    """The format ggml's CPU backend rounds a matmul's activations to for weights of TYPE_NAME."""
    if type_name in ("F16", "BF16", "F32"):
        return type_name
    return "Q8_0" if type_name in _VEC_DOT_32 else "Q8_K"


def activation_noise() -> dict:
    """ggml's activation roundings as functions of a (tokens, k) torch tensor, for
    hubtool.quality.sensitivity.output_fisher's INPUT_NOISE ('label@block': rows must divide by block)."""
    import torch

    def blocks(block: int, fp16_scale: bool):
        def fn(x: torch.Tensor) -> torch.Tensor:
            xb = x.reshape(x.shape[0], -1, block)
            d = xb.abs().amax(-1, keepdim=True) / 127  # quantize_row_q8_0/_K: amax -> +-127
            q = torch.where(d > 0, torch.round(xb / torch.where(d > 0, d, 1)), 0).clamp(-127, 127)
            if fp16_scale:  # Q8_0 stores d as fp16 (the rounding itself used the exact d)
                d = d.half().float()
            return (q * d).reshape(x.shape)
        return fn

    return {"Q8_K@256": blocks(256, False), "Q8_0@32": blocks(32, True),
            "F16": lambda x: x.half().float(), "BF16": lambda x: x.bfloat16().float()}


def candidate_types(stock_type: str) -> tuple[str, ...]:
    return IQ_FAMILY if stock_type.upper().startswith("IQ") else K_FAMILY


# ---- ggml's quantizer, row by row -------------------------------------------------------------

_GGML: Any = None


def _ggml() -> Any:
    """libggml-base from the llama-cpp-python install (the library llama_model_quantize itself calls)."""
    global _GGML
    if _GGML is None:
        import llama_cpp

        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        found = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
        if not found:
            raise InputError(f"{lib_dir}: no libggml-base in the llama-cpp-python install; reinstall 'hubtool[gguf]'")
        lib = ctypes.CDLL(str(found[0]))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        _GGML = lib
    return _GGML


def row_bytes(type_name: str, n_per_row: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return n_per_row // block * size


def fits(type_name: str, n_per_row: int) -> bool:
    import gguf

    return n_per_row % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0] == 0


def requires_imatrix(type_name: str) -> bool:
    import gguf

    return bool(_ggml().ggml_quantize_requires_imatrix(int(gguf.GGMLQuantizationType[type_name])))


def roundtrip(rows: np.ndarray, type_name: str, imatrix: np.ndarray | None) -> np.ndarray:
    """ROWS quantized to TYPE_NAME by ggml (as llama.cpp would, with its imatrix) and dequantized by gguf-py."""
    import gguf
    from gguf.quants import dequantize

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n, k = rows.shape
    out = np.zeros((n, row_bytes(type_name, k)), dtype=np.uint8)
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    qtype = gguf.GGMLQuantizationType[type_name]
    written = _ggml().ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, n, k,
                                          None if imat is None else imat.ctypes.data)
    if written != out.size:
        raise QuantizeError(f"ggml wrote {written} bytes for {n}x{k} {type_name}, expected {out.size}")
    return dequantize(out, qtype).reshape(n, k)


# ---- sensitivity ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorCost:
    """One tensor's options: bytes and predicted KL (nats/token) per candidate type."""

    name: str
    shape: tuple[int, int]  # (rows, n_per_row)
    options: dict[str, tuple[int, float]]


def _sample(n: int, k: int, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K of N row indices, each row's multiplier to the whole tensor's sum). With per-row WEIGHT
    (the Fisher of a row's output), stratified: the K/2 heaviest rows count once each, evenly spaced
    rows of the rest stand for the rest. An even sample alone misses the few rows that carry a vocabulary's
    logit Fisher (262k rows, 256 sampled): it under-read Gemma-3's Q5_1 embedding 4x."""
    if weight is None or weight.size != n or n <= k:
        idx = np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))
        return idx, np.full(len(idx), n / len(idx))
    top = np.argsort(weight, kind="stable")[n - k // 2:]
    rest = np.setdiff1d(np.arange(n), top)
    spread = rest[np.unique(np.linspace(0, len(rest) - 1, k - len(top)).round().astype(np.int64))]
    idx = np.concatenate([top, spread])
    order = np.argsort(idx)
    mult = np.concatenate([np.ones(len(top)), np.full(len(spread), len(rest) / len(spread))])
    return idx[order], mult[order]


def measure_costs(base_gguf: Path, tensors: Iterable[str], candidates: Iterable[str], *, imatrix: dict[str, np.ndarray] | None,
                  fisher: dict[str, np.ndarray], sample_rows: int = SAMPLE_ROWS) -> list[TensorCost]:
    """Predicted KL and bytes of every candidate type for each named tensor of BASE_GGUF (16-bit)."""
    import gguf

    names = set(tensors)
    reader = gguf.GGUFReader(str(base_gguf))
    by_name = {t.name: t for t in reader.tensors}
    missing = sorted(names - set(by_name))
    if missing:
        raise InputError(f"{base_gguf}: no tensor {missing[0]}; measure the GGUF the mix is quantized from")
    tied = "output.weight" not in by_name
    costs: list[TensorCost] = []
    for name in track(sorted(names), description="sensitivity (types x tensors)"):
        t = by_name[name]
        data = np.asarray(t.data)
        k = int(t.shape[0])  # ne[0]: the row length
        w = data.reshape(-1, k)
        n = w.shape[0]
        # a tied embedding is also the output head: its rows' Fisher and its activations' rounding are the head's
        as_out = "output.weight" if name == "token_embd.weight" and tied else name
        idx, mult = _sample(n, sample_rows, fisher.get(as_out))
        rows = w[idx].astype(np.float32)
        q_imat = _imatrix_for(imatrix, name, k)  # what llama.cpp will pass to ggml for this tensor
        # the cost weights: output-channel Fisher per row, importance (mean x^2) per column
        if name == "token_embd.weight":
            parts = [(np.full(len(idx), float(np.mean(fisher.get("token_embd.weight:input", np.ones(k))))), np.full(k, 1.0 / n))]
            if tied and "output.weight" in fisher:  # the same matrix also makes the logits
                parts.append((fisher["output.weight"][idx], _imatrix_for(imatrix, "output.weight", k)))
        else:
            f = fisher.get(name)
            parts = [(f[idx] if f is not None and f.size == n else np.full(len(idx), float(np.mean(f)) if f is not None else 0.0),
                      q_imat)]
        options: dict[str, tuple[int, float]] = {}
        for cand in candidates:
            if not fits(cand, k) or (requires_imatrix(cand) and q_imat is None):
                continue
            err2 = (roundtrip(rows, cand, q_imat) - rows) ** 2
            kl = 0.0
            for row_w, col_w in parts:
                col = np.ones(k) if col_w is None else col_w
                kl += 0.5 * float((row_w * mult) @ (err2 @ col))
            # per channel E[g^2 (W dx)^2] of this type's activation rounding (none for an untied embedding: no matmul)
            noise = fisher.get(f"{as_out}:input_noise:{vec_dot_type(cand)}")
            if noise is not None:
                kl += 0.5 * float(noise.sum())
            options[cand] = (row_bytes(cand, k) * n, kl)
        if not options:
            raise QuantizeError(f"{name}: no candidate type fits rows of {k} values")
        costs.append(TensorCost(name, (n, k), options))
    return costs


def _imatrix_for(imatrix: dict[str, np.ndarray] | None, name: str, k: int) -> np.ndarray | None:
    if not imatrix or name not in imatrix:
        return None
    v = np.asarray(imatrix[name], dtype=np.float32)
    return v if v.size == k else v.reshape(-1, k).mean(0)  # experts: one column weight for the sample


# ---- allocation -------------------------------------------------------------------------------

def _hull(options: dict[str, tuple[int, float]]) -> list[tuple[int, float, str]]:
    """The lower convex hull of (bytes, KL) points, cheapest first: the only types worth buying."""
    hull: list[tuple[int, float, str]] = []
    for p in _pareto(options):
        while len(hull) >= 2:
            (b1, k1, _), (b2, k2, _) = hull[-2], hull[-1]
            if (k1 - k2) * (p[0] - b2) <= (k2 - p[1]) * (b2 - b1):  # slope gets steeper: middle point is not convex
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(costs: list[TensorCost], budget_bytes: int, *, fill_to: float = 0.0) -> dict[str, str]:
    """Tensor -> type minimising the summed predicted KL with the tensors' bytes <= BUDGET_BYTES.

    1. two solutions of this multiple-choice knapsack, the one with the lower predicted KL kept:
       - exact dynamic programming over a byte grid (_knapsack): it trades, e.g. one large
         upgrade paid for by several downgrades, which no walk that only adds bytes can do;
       - the greedy walk up each tensor's convex (bytes, KL) hull, best KL saved per byte first
         (it can beat the grid's rounding by a hair when the budget is tight);
    2. what is left: spend it on any single-tensor change that fits and still lowers the predicted
       KL, best saving per byte first;
    3. FILL_TO (e.g. 0.99 for a file the size of a stock type): when the predicted KL cannot buy
       more, keep changing the tensors whose change costs the least predicted KL per byte until
       FILL_TO x BUDGET_BYTES is spent, so that sizes compare equal. Only weights that already sit
       on a quantization grid (a model dequantized from a GGUF) get here: more bits on another grid
       predict more error there, which a real fp16 model's tensors do not.
    Never more than BUDGET_BYTES."""
    least = sum(min(b for b, _ in c.options.values()) for c in costs)
    if least > budget_bytes:
        raise InputError(f"size target {budget_bytes / 1e6:.1f} MB is below the smallest mix these types allow "
                         f"({least / 1e6:.1f} MB); raise --target-bpw or pick a smaller stock type")
    fill_bytes = int(fill_to * budget_bytes)
    best: tuple[float, int, dict[str, str]] | None = None
    for start in (_knapsack(costs, budget_bytes), _greedy(costs, budget_bytes)):
        used = _bytes(costs, start)
        chosen = _spend_rest(costs, start, budget_bytes - used, fill_bytes=fill_bytes - used)
        key = (predicted_kl(costs, chosen), -_bytes(costs, chosen))
        if best is None or key < best[:2]:
            best = (*key, chosen)
    assert best is not None
    return best[2]


def _bytes(costs: list[TensorCost], chosen: dict[str, str]) -> int:
    return sum(c.options[chosen[c.name]][0] for c in costs)


def _pareto(options: dict[str, tuple[int, float]]) -> list[tuple[int, float, str]]:
    """(bytes, KL, type) of the options no other beats on both, cheapest first."""
    front: list[tuple[int, float, str]] = []
    for b, kl, t in sorted(((b, kl, t) for t, (b, kl) in options.items()), key=lambda p: (p[0], p[1])):
        if not front or kl < front[-1][1]:
            front.append((b, kl, t))
    return front


def _knapsack(costs: list[TensorCost], budget_bytes: int, *, cells: int = DP_CELLS) -> dict[str, str]:
    """The exact minimum of the summed predicted KL over the Pareto options of every tensor, with each
    option's bytes above the tensor's cheapest rounded UP to a grid of CELLS cells over the spare
    budget: the result never exceeds BUDGET_BYTES and leaves at most one cell per tensor unspent.
    O(tensors x options x cells) in numpy (0.1 s for Gemma-3 270M's 127 tensors)."""
    fronts = [_pareto(c.options) for c in costs]
    spare = budget_bytes - sum(f[0][0] for f in fronts)
    unit = max(1, -(-spare // cells))
    n_cells = spare // unit
    best = np.zeros(n_cells + 1)  # best[c]: least KL of the tensors so far within c cells of extra bytes
    picks = np.zeros((len(costs), n_cells + 1), dtype=np.int16)
    for i, front in enumerate(fronts):
        new = np.full(n_cells + 1, np.inf)
        pick = np.zeros(n_cells + 1, dtype=np.int16)
        for j, (b, kl, _) in enumerate(front):
            w = -(-(b - front[0][0]) // unit)
            if w > n_cells:
                break  # the front is sorted by bytes: the rest do not fit either
            cand = best[:n_cells + 1 - w] + kl
            better = cand < new[w:]  # strict: among equal KL the cheaper option (lower j) stays
            new[w:][better] = cand[better]
            pick[w:][better] = j
        best, picks[i] = new, pick
    chosen, c = {}, n_cells
    for i in range(len(costs) - 1, -1, -1):
        b, _, t = fronts[i][picks[i, c]]
        chosen[costs[i].name] = t
        c -= -(-(b - fronts[i][0][0]) // unit)
    return chosen


def _greedy(costs: list[TensorCost], budget_bytes: int) -> dict[str, str]:
    """The greedy walk up each tensor's convex hull, best KL saved per byte first, while steps fit."""
    hulls = {c.name: _hull(c.options) for c in costs}
    pick = {name: 0 for name in hulls}
    used = sum(h[0][0] for h in hulls.values())
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        h, i = hulls[name], pick[name]
        if i + 1 < len(h):
            gain = (h[i][1] - h[i + 1][1]) / max(h[i + 1][0] - h[i][0], 1)
            heapq.heappush(heap, (-gain, name))

    for name in hulls:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        h, i = hulls[name], pick[name]
        step = h[i + 1][0] - h[i][0]
        if used + step <= budget_bytes:
            pick[name] = i + 1
            used += step
            push(name)
    return {name: hulls[name][i][2] for name, i in pick.items()}


def _spend_rest(costs: list[TensorCost], chosen: dict[str, str], left: int, *, fill_bytes: int) -> dict[str, str]:
    """Steps 2 and 3 of allocate: single-tensor changes within LEFT bytes, by predicted KL per byte;
    ones that raise the predicted KL only while FILL_BYTES (the bytes still wanted) is positive.

    A heap of every (tensor, type) move from the current choice, best gain per byte first (ties: tensor
    order, then type order); a tensor's moves are re-pushed when it changes, and a move that no longer
    fits is dropped for good (LEFT only shrinks): O(moves log moves), not one scan per step."""
    chosen = dict(chosen)
    version = {c.name: 0 for c in costs}
    heap: list[tuple[float, int, int, int, int, str]] = []

    def push(ti: int, c: TensorCost) -> None:
        b0, k0 = c.options[chosen[c.name]]
        for oi, (t, (b, k)) in enumerate(c.options.items()):
            if b > b0:
                heapq.heappush(heap, (-(k0 - k) / (b - b0), ti, oi, b - b0, version[c.name], t))

    for ti, c in enumerate(costs):
        push(ti, c)
    while heap:
        neg_gain, ti, _oi, step, ver, t = heapq.heappop(heap)
        c = costs[ti]
        if ver != version[c.name] or step > left:
            continue  # stale (the tensor moved since) or too big for what is left (for good)
        if -neg_gain <= 0 and fill_bytes <= 0:
            break
        chosen[c.name] = t
        version[c.name] += 1
        left -= step
        fill_bytes -= step
        push(ti, c)
    return chosen


def predicted_kl(costs: list[TensorCost], types: dict[str, str]) -> float:
    """The model's own estimate of a mix's KL (nats/token), for calibrating it against measurement."""
    return sum(c.options[types[c.name]][1] for c in costs if types.get(c.name) in c.options)


# ---- recipes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """Per-tensor types of a tuned file: the exact-name regexes llama-quantize's --tensor-type takes."""

    stock_type: str  # the llama_ftype passed alongside (file_type metadata, types of unlisted tensors)
    types: tuple[tuple[str, str], ...]  # (tensor name, gguf-py type name), in file order

    def overrides(self) -> list[tuple[str, str]]:
        """(regex, type) rows for `llama_model_quantize_params.tt_overrides`."""
        return [(tensor_regex(name), t) for name, t in self.types]

    def to_text(self) -> str:
        """llama-quantize --tensor-type-file content. No comments: it reads whitespace-separated
        `name=type` words and refuses anything else."""
        return "".join(f"{pattern}={t.lower()}\n" for pattern, t in self.overrides())


def tensor_regex(name: str) -> str:
    return "^" + re.escape(name) + "$"


def parse_recipe(text: str, *, stock_type: str, source: str) -> Recipe:
    """A --tensor-type-file back into a Recipe (exact-name lines only, as hubtool writes them)."""
    import gguf

    types = []
    for i, word in enumerate(text.split(), 1):
        pattern, sep, t = word.partition("=")
        name = re.sub(r"\\(.)", r"\1", pattern.removeprefix("^").removesuffix("$"))
        if not sep or t.upper() not in gguf.GGMLQuantizationType.__members__ or tensor_regex(name) != pattern:
            raise InputError(f"{source}: entry {i} {word!r} is not an exact-name `^name$=type` line")
        types.append((name, t.upper()))
    return Recipe(stock_type.upper(), tuple(types))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # gguf-py's name, e.g. 'Q4_K'
    row: int  # ne[0], the row length
    n_elements: int
    n_bytes: int


def tensor_table(path: Path) -> tuple[TensorInfo, ...]:
    """Every tensor's name, type and size in PATH, read once per file version: gguf-py parses every
    tokenizer entry in Python (38 s for Gemma-3's 262k vocabulary on a busy 2-core box)."""
    st = Path(path).stat()
    return _tensor_table(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _tensor_table(path: str, _mtime: int, _size: int) -> tuple[TensorInfo, ...]:
    from hubtool.gguf.verify import read_gguf

    return tuple(TensorInfo(t.name, t.tensor_type.name, int(t.shape[0]), int(t.n_elements), int(t.n_bytes))
                 for t in read_gguf(Path(path)).tensors)


def file_types(path: Path) -> dict[str, str]:
    """Tensor name -> gguf-py type name, read back from a written GGUF."""
    return {t.name: t.type_name for t in tensor_table(path)}


def check_against_recipe(path: Path, recipe: Recipe) -> None:
    """Fail loudly when any tensor of PATH does not have its recipe type (llama.cpp has silently
    dropped overrides before, #22544) or a recipe tensor is missing."""
    got = file_types(path)
    bad = [f"{name}: {got.get(name, 'missing')} (recipe {want})" for name, want in recipe.types if got.get(name) != want]
    if bad:
        raise QuantizeError(f"{path}: {len(bad)} tensor(s) differ from the recipe — {'; '.join(bad[:4])}"
                            f"{' …' if len(bad) > 4 else ''}; the quantizer did not apply the overrides")


# ---- the whole step ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TunedMix:
    recipe: Recipe
    costs: tuple[TensorCost, ...]  # the measurement, reusable for other budgets
    budget_bytes: int  # tensor data the mix could spend (stock's, or the bpw target's)
    mix_bytes: int  # tensor data it spends
    stock_bytes: int  # the stock type's tensor data (same tensors)
    predicted_kl: float
    stock_predicted_kl: float
    changed: tuple[tuple[str, str, str], ...]  # (tensor, stock type, tuned type) where they differ


def tensor_bytes(base_gguf: Path, types: dict[str, str]) -> dict[str, int]:
    """Bytes each tensor would take at the given gguf-py types (others: as in BASE_GGUF)."""
    out = {}
    for t in tensor_table(base_gguf):
        out[t.name] = row_bytes(types[t.name], t.row) * (t.n_elements // t.row) if t.name in types else t.n_bytes
    return out


def plan_mix(base_gguf: Path, stock_type: str, *, imatrix: dict[str, np.ndarray] | None, fisher: dict[str, np.ndarray],
             target_bpw: float | None = None, budget_bytes: int | None = None, sample_rows: int = SAMPLE_ROWS,
             costs: list[TensorCost] | None = None, fill_to: float | None = None) -> TunedMix:
    """Choose per-tensor types for a file the size of STOCK_TYPE (or TARGET_BPW bits per weight over
    all tensors, or BUDGET_BYTES of the tensors stock would quantize). COSTS: from an earlier call on
    the same file and family, to try several budgets for the price of one measurement.

    FILL_TO: the share of the budget the mix must spend (allocate's step 3); default 0.99 when the
    budget is a file's size (stock's, or BUDGET_BYTES: an equal-size comparison, within 1 %), none
    for a --target-bpw (the best mix up to that size). The recipe is checked with llama.cpp's own
    dry run: the types it would write and their bytes must be the ones planned."""
    from hubtool.gguf.quantize import planned_tensor_types

    stock_type = stock_type.upper()
    source = file_types(base_gguf)
    stock = planned_tensor_types(base_gguf, stock_type, imatrix=imatrix)
    tunable = [n for n, t in stock.items() if t != source.get(n)]  # what the quantizer quantizes
    if not tunable:
        raise InputError(f"{base_gguf}: {stock_type} quantizes no tensor of this file; nothing to tune")
    sizes = tensor_bytes(base_gguf, stock)
    stock_bytes = sum(sizes[n] for n in tunable)
    if budget_bytes is not None:
        budget = budget_bytes
    elif target_bpw is None:
        budget = stock_bytes
    else:
        n_el = sum(t.n_elements for t in tensor_table(base_gguf))
        fixed = sum(b for n, b in sizes.items() if n not in tunable)
        budget = int(target_bpw * n_el / 8) - fixed
    if costs is not None and set(tunable) <= {c.name for c in costs}:
        costs = [c for c in costs if c.name in set(tunable)]  # a measurement over more tensors serves this type too
    else:
        costs = measure_costs(base_gguf, tunable, candidate_types(stock_type), imatrix=imatrix, fisher=fisher, sample_rows=sample_rows)
    if fill_to is None:
        fill_to = 0.0 if target_bpw is not None else FILL_TO
    chosen = allocate(costs, budget, fill_to=fill_to)
    order = [n for n in stock if n in chosen]
    recipe = Recipe(stock_type, tuple((n, chosen[n]) for n in order))
    chosen_sizes = tensor_bytes(base_gguf, chosen)  # one read of the file, not one per tensor
    mix_bytes = sum(chosen_sizes[n] for n in tunable)
    dry = planned_tensor_types(base_gguf, stock_type, imatrix=imatrix, tensor_types=recipe.overrides())
    off = [f"{n}: {dry.get(n)} (planned {t})" for n, t in recipe.types if dry.get(n) != t]
    if off:
        raise QuantizeError(f"{base_gguf}: llama.cpp's dry run would not write the planned types — {'; '.join(off[:3])}")
    stock_known = {n: t for n, t in stock.items() if n in tunable}
    log(f"{stock_type} mix: {mix_bytes / 1e6:.2f} MB of tensors (budget {budget / 1e6:.2f}, stock {stock_bytes / 1e6:.2f}); "
        f"predicted KL {predicted_kl(costs, chosen):.4f} vs stock {predicted_kl(costs, stock_known):.4f}")
    return TunedMix(recipe, tuple(costs), budget, mix_bytes, stock_bytes, predicted_kl(costs, chosen), predicted_kl(costs, stock_known),
                    tuple((n, stock[n], chosen[n]) for n in order if stock[n] != chosen[n]))


def write_tuned(base_gguf: Path, dst: Path, recipe: Recipe, *, imatrix: dict[str, np.ndarray] | None) -> Path:
    """Quantize DST with RECIPE's overrides and check every tensor's type in the written file."""
    from hubtool.gguf.quantize import quantize_gguf

    quantize_gguf(base_gguf, dst, recipe.stock_type, imatrix=imatrix, tensor_types=recipe.overrides())
    try:
        check_against_recipe(dst, recipe)
    except QuantizeError:
        dst.unlink(missing_ok=True)
        raise
    return dst


def describe_changes(mix: TunedMix) -> list[str]:
    """'attn_v: Q4_K -> Q6_K in 12 layers' lines, for the card."""
    groups: dict[tuple[str, str, str], int] = {}
    for name, was, now in mix.changed:
        kind = re.sub(r"^blk\.\d+\.", "", name).removesuffix(".weight")
        groups[(kind, was, now)] = groups.get((kind, was, now), 0) + 1
    return [f"{kind}: {was} → {now} in {n} tensor{'s' if n > 1 else ''}" for (kind, was, now), n in sorted(groups.items())]


def export_tuned(model_dir: Path, base_gguf: Path, out_dir: Path, stock_type: str, *, name: str, calibration: str,
                 calibration_name: str = "builtin", target_bpw: float | None = None, trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """A release's tuned file: `NAME.TYPE-tuned.gguf` (or `NAME.4.50bpw-tuned.gguf`) in OUT_DIR with its
    recipe (`.tensor-types.txt`), a summary (`.mix.json`) and the imatrix it used, all from CALIBRATION text.

    Rows in export_gguf's format. Not split: a tuned file is checked tensor by tensor as written."""
    return export_tuned_variants(model_dir, base_gguf, out_dir, [(stock_type, target_bpw)], name=name, calibration=calibration,
                                 calibration_name=calibration_name, trust_remote_code=trust_remote_code)


def export_tuned_variants(model_dir: Path, base_gguf: Path, out_dir: Path, variants: list[tuple[str, float | None]], *, name: str,
                          calibration: str, calibration_name: str = "builtin", trust_remote_code: bool = False) -> list[dict[str, Any]]:
    """export_tuned for several (stock type, target bpw or None) at once: one importance matrix, one
    Fisher pass and one measurement per candidate family serve them all."""
    import json
    import os

    from hubtool.atomic import staged_file
    from hubtool.gguf import facts as gguf_facts
    from hubtool.gguf.convert import check_architecture
    from hubtool.gguf.export import gguf_size_info
    from hubtool.gguf.imatrix import compute_imatrix, imatrix_means, save_imatrix
    from hubtool.model_dir import load_model_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model_dir(Path(model_dir), trust_remote_code=trust_remote_code)
    arch = check_architecture(model.config, source=model_dir)
    model.close()
    log(f"{', '.join(gguf_facts.tuned_variant(t, target_bpw=b) for t, b in variants)}: importance matrix and sensitivity from {calibration_name}")
    sums, counts = compute_imatrix(Path(model_dir), calibration, arch_name=arch, trust_remote_code=trust_remote_code)
    with staged_file(out_dir / gguf_facts.imatrix_name(name), overwrite=True) as tmp:
        save_imatrix(tmp, sums, counts, dataset=calibration_name, context=512)
    imatrix = imatrix_means(sums, counts)
    fisher = output_fisher(Path(model_dir), calibration, arch_name=arch, trust_remote_code=trust_remote_code,
                           input_noise=activation_noise())
    measured: dict[tuple[str, ...], list[TensorCost]] = {}  # candidate family -> the costs measured so far
    rows = []
    for stock_type, target_bpw in variants:
        family = candidate_types(stock_type)
        mix = plan_mix(Path(base_gguf), stock_type, imatrix=imatrix, fisher=fisher, target_bpw=target_bpw, costs=measured.get(family))
        if family not in measured or len(mix.costs) > len(measured[family]):
            measured[family] = list(mix.costs)
        variant = gguf_facts.tuned_variant(stock_type, target_bpw=target_bpw)
        target = out_dir / gguf_facts.file_name(name, variant)
        tmp_file = out_dir / f".{target.name}.partial"
        write_tuned(Path(base_gguf), tmp_file, mix.recipe, imatrix=imatrix)
        os.replace(tmp_file, target)
        (out_dir / gguf_facts.recipe_name(name, variant)).write_text(mix.recipe.to_text(), encoding="utf-8")
        summary = {"variant": variant, "stock_type": mix.recipe.stock_type, "target_bpw": target_bpw, "calibration": calibration_name,
                   "stock_tensor_bytes": mix.stock_bytes, "tuned_tensor_bytes": mix.mix_bytes,
                   "predicted_kl": round(mix.predicted_kl, 6), "stock_predicted_kl": round(mix.stock_predicted_kl, 6),
                   "changes": describe_changes(mix), "changed": [{"tensor": n, "stock": a, "tuned": b} for n, a, b in mix.changed]}
        (out_dir / gguf_facts.mix_summary_name(name, variant)).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        _, bpw = gguf_size_info(target)
        log(f"wrote {target.name} ({bpw:.2f} bits/weight; {len(mix.changed)} tensors differ from stock {mix.recipe.stock_type})")
        rows.append({"file": str(target), "type": variant, "size_bytes": target.stat().st_size, "bits_per_weight": round(bpw, 4),
                     "shard": 1, "shards": 1})
    return rows
