"""`verify_gguf`: load each GGUF in llama.cpp and hold it against the fp16 HF model.

Hard failures (QuantizeError): a tokenizer that splits a test string differently, a chat
template that did not survive, or RoPE settings (scaling type/factor/original context, base
frequency) that differ from the source config. Then next-token logits on held-out text give
KL divergence and top-1 agreement vs fp16 plus perplexity, written as "gguf" rows in quality.json.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hubtool.errors import InputError, QuantizeError
from hubtool.gguf import facts as gguf_facts
from hubtool.gguf.header import GgufHeader, read_header
from hubtool.gguf.types import ALL_TYPES
from hubtool.machine import threads
from hubtool.progress import log, track
from hubtool.tokenizer_probe import TEST_STRING, TokenizerProbe, probe_tokenizer  # noqa: F401  (TEST_STRING: its old home)



# ---- files and metadata ---------------------------------------------------------------------

def find_gguf_files(paths: list[Path]) -> list[Path]:
    """Model GGUFs to verify: files as given, folders expanded; for split models only shard 1; imatrix files skipped."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            candidates = sorted(p.glob("*.gguf"))
        elif p.is_file():
            candidates = [p]
        else:
            raise InputError(f"{p}: not found; pass GGUF files or a folder holding them")
        for c in candidates:
            shard = gguf_facts.parse_shard(c.name)
            if gguf_facts.is_imatrix(c.name) or (shard and shard.index != 1):
                continue
            found.append(c)
    if not found:
        raise InputError(f"{', '.join(map(str, paths))}: no .gguf files found")
    return found


def shard_paths(first: Path) -> list[Path]:
    shard = gguf_facts.parse_shard(first.name)
    if not shard:
        return [first]
    n = shard.count
    paths = gguf_facts.shard_names(first.with_name(shard.unsplit_name), n)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: shard missing; download all {n} shards next to {first.name}")
    return paths


def read_gguf(path: Path):
    """GGUFReader with a one-line error for a file that is not GGUF."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct/IndexError on junk
        raise InputError(f"{path}: not a valid GGUF file ({exc}); re-export it with `hubtool quantize gguf`") from None


def gguf_metadata(path: Path) -> tuple[dict[str, Any], list[str]]:
    """(key -> value for every KV field, string arrays included, tensor names) of one GGUF file."""
    header = read_header(path, strings=True)
    return dict(header.metadata), header.tensor_names


def variant_of(path: Path, meta: dict[str, Any]) -> str:
    import gguf

    named = gguf_facts.type_from_name(path.name)
    if named in ALL_TYPES or (named and gguf_facts.is_tuned(named)):
        return named
    ftype = meta.get(gguf.Keys.General.FILE_TYPE)
    if ftype is not None:
        import llama_cpp

        for t in ALL_TYPES:
            if getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{t}", None) == ftype:
                return t
    return path.stem


def size_info(first: Path, header: GgufHeader | None = None) -> tuple[int, float]:
    """(bytes on disk over all shards, bits per weight over tensor data); HEADER: FIRST's, if already read."""
    paths = shard_paths(first)
    n_el = n_bytes = 0
    for p in paths:
        for t in (header if header is not None and p == first else read_header(p)).tensors:
            n_el += t.n_elements
            n_bytes += t.n_bytes
    return sum(p.stat().st_size for p in paths), (8.0 * n_bytes / n_el if n_el else 0.0)


# ---- checks ---------------------------------------------------------------------------------

def source_rope(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """RoPE per attention-layer type as the HF config declares it: {"full_attention": {...}, "sliding_attention": {...}}.

    transformers 5 writes `rope_parameters` either flat or keyed by layer type (Gemma-3: sliding
    layers at a local base frequency, full layers at a global one, possibly scaled); older configs
    use `rope_scaling`/`rope_theta`. Multimodal configs keep it under `text_config`.
    """
    text = config.get("text_config") or {}
    cfg = {**config, **text} if text else config
    rp = cfg.get("rope_parameters") or {}
    rs = cfg.get("rope_scaling") or {}
    per_type = {k: v for k, v in rp.items() if isinstance(v, dict)} if rp and all(isinstance(v, dict) for v in rp.values()) else {"full_attention": rp}
    out: dict[str, dict[str, Any]] = {}
    for layer_type, params in per_type.items():
        legacy = rs if layer_type == "full_attention" else {}
        default_theta = cfg.get("rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta", 10000.0)
        out[layer_type] = {
            "type": params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default",
            "factor": params.get("factor", legacy.get("factor")),
            "original": params.get("original_max_position_embeddings", legacy.get("original_max_position_embeddings")),
            "theta": float(params.get("rope_theta", default_theta) or default_theta),
        }
    return out


def check_rope(path: Path, meta: dict[str, Any], tensors: list[str], config: dict[str, Any]) -> None:
    """Fail when the GGUF would run RoPE differently from the source model, for whatever architecture it names.

    Keys come from gguf.Keys.Rope formatted with the file's own `general.architecture`: full-attention
    layers use `freq_base` and the scaling keys, sliding-window layers `freq_base_swa`.
    """
    import gguf

    arch = str(meta.get(gguf.Keys.General.ARCHITECTURE, "llama"))
    R = gguf.Keys.Rope

    def key(k: str) -> Any:
        return meta.get(k.format(arch=arch))

    def fail(what: str) -> None:
        raise QuantizeError(f"{path}: RoPE mismatch ({arch}) — {what}; re-export from a config whose rope settings llama.cpp supports")

    for layer_type, src in source_rope(config).items():
        if layer_type not in ("full_attention", "sliding_attention"):
            fail(f"config.json has RoPE for layer type {layer_type!r}, which hubtool cannot check")
        if layer_type == "sliding_attention":
            g_base = key(R.FREQ_BASE_SWA)
            if g_base is None:
                fail(f"config.json sets rope_theta {src['theta']:g} for sliding-window layers but the GGUF has no {R.FREQ_BASE_SWA.format(arch=arch)}")
            if not math.isclose(float(g_base), src["theta"], rel_tol=1e-5):
                fail(f"sliding-window freq_base {float(g_base):g} in GGUF vs rope_theta {src['theta']:g} in config.json")
            if src["type"] != "default":
                fail(f"config.json scales sliding-window RoPE ({src['type']!r}); llama.cpp scales full-attention layers only")
            continue
        g_type = key(R.SCALING_TYPE)
        g_factor = key(R.SCALING_FACTOR)
        g_orig = key(R.SCALING_ORIG_CTX_LEN)
        g_base = float(key(R.FREQ_BASE) or 10000.0)
        if not math.isclose(g_base, src["theta"], rel_tol=1e-5):
            fail(f"freq_base {g_base:g} in GGUF vs rope_theta {src['theta']:g} in config.json")
        if src["type"] in ("linear", "yarn"):
            if g_type != src["type"]:
                fail(f"scaling type {g_type!r} in GGUF vs {src['type']!r} in config.json")
            if g_factor is None or not math.isclose(float(g_factor), float(src["factor"]), rel_tol=1e-5):
                fail(f"scaling factor {g_factor} in GGUF vs {src['factor']} in config.json")
            if src["type"] == "yarn" and src["original"] and g_orig != src["original"]:
                fail(f"original_context_length {g_orig} in GGUF vs {src['original']} in config.json")
        elif src["type"] == "llama3":
            if "rope_freqs.weight" not in tensors:
                fail("llama3 scaling in config.json but no rope_freqs.weight tensor in GGUF")
        elif src["type"] in ("longrope", "su"):
            if not any(t.startswith("rope_factors_long") for t in tensors):
                fail("longrope scaling in config.json but no rope_factors_long tensor in GGUF")
        elif src["type"] == "default":
            if g_type not in (None, "none"):
                fail(f"scaling type {g_type!r} in GGUF but no scaling in config.json")
        else:
            fail(f"config.json uses {src['type']!r} scaling, which llama.cpp does not implement")


def check_tokenizer(path: Path, llm: Any, hf: Any, meta: dict[str, Any]) -> None:
    """Token ids of a test string (and of a rendered chat turn) must be identical; the chat template must survive.

    HF: the HF tokenizer, or its TokenizerProbe (its answers recorded by the release's reference stage)."""
    import gguf

    probe = hf if isinstance(hf, TokenizerProbe) else probe_tokenizer(hf)
    want = list(probe.test_ids)
    got = llm.tokenize(TEST_STRING.encode("utf-8"), add_bos=True, special=False)
    if list(got) != list(want):
        raise QuantizeError(f"{path}: tokenizer mismatch — llama.cpp ids {list(got)[:12]}… vs HF {list(want)[:12]}…; re-export with the model's own tokenizer files")
    template = probe.chat_template
    if template:
        if meta.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE) != template:
            raise QuantizeError(f"{path}: chat template missing or changed in GGUF; re-export with chat_template.jinja / tokenizer_config.json present")
        chat, want = probe.chat_text or "", list(probe.chat_ids or ())
        got = llm.tokenize(chat.encode("utf-8"), add_bos=False, special=True)
        if list(got) != list(want):
            raise QuantizeError(f"{path}: special tokens of the chat template tokenize differently in llama.cpp ({list(got)[:8]}… vs {list(want)[:8]}…)")


# ---- logits ---------------------------------------------------------------------------------

_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_repacked_copy() -> Iterator[None]:
    """Load without llama.cpp's extra CPU buffer types (`use_extra_bufts`, its `--no-repack`).

    With them, the CPU backend keeps a second, repacked copy of every quantized matrix in anonymous
    memory beside the memory-mapped file: verify:gguf of a 7B Q4_K_M peaked at 9.2 GB, twice the file.
    Without, only the file's pages (reclaimable page cache) grow with depth; measured on 7B shapes,
    the logits match to quantization noise and evaluation is no slower on this CPU. llama-cpp-python has
    no argument for it, so its default-parameters function is wrapped for the duration of the load.
    """
    import llama_cpp.llama_cpp as lib

    with _PARAMS_LOCK:
        default = lib.llama_model_default_params

        def params() -> Any:
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = default


@contextlib.contextmanager
def open_llama(path: Path, *, context: int, vocab_only: bool = False) -> Iterator[Any]:
    """llama_cpp.Llama with every position's logits kept (or just its tokenizer), quiet, freed on exit."""
    import llama_cpp

    from hubtool.gguf.llama_log import install

    install()  # warnings (n_ctx_train (0), full-size SWA cache) only with --verbose
    with _no_repacked_copy():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context, vocab_only=vocab_only,
                              logits_all=True, n_threads=threads(), n_threads_batch=threads(), verbose=False)
    try:
        yield llm
    finally:
        with contextlib.suppress(Exception):
            llm.close()


def llama_logits(llm: Any, ids: list[int], *, copy: bool = True) -> np.ndarray:
    """[len(ids), n_vocab] next-token logits from llama.cpp.

    copy=False returns a view of llama-cpp-python's own scores buffer (valid until LLM's next eval):
    a window of a 49k-vocabulary model is 100 MB, so verify reads the rows where eval put them.
    """
    llm.reset()
    llm.eval(ids)
    rows = llm.scores[: len(ids)]
    return np.array(rows, dtype=np.float32) if copy else rows


def hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def reference_config(reference_dir: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """config.json of the source folder, the folder validated; the model itself loads later, only if needed."""
    from hubtool.model_dir import load_model_dir

    ref = load_model_dir(reference_dir, kind="reference model", trust_remote_code=trust_remote_code)
    config = ref.config
    ref.close()
    return config


def load_tokenizer(reference_dir: Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(reference_dir, trust_remote_code=trust_remote_code)


def verify_gguf(
    files: list[Path],
    reference_dir: Path,
    *,
    text: str = "builtin:heldout",
    max_tokens: int = 2048,
    context: int = 512,
    results_path: Path | None = None,
    reference: Any = None,
    trust_remote_code: bool = False,
    force_context: bool = False,
    exact_tokens: bool = False,
) -> list[dict[str, Any]]:
    """Check every GGUF (tokenizer, chat template, RoPE) and measure it against REFERENCE_DIR; rows in quality.json format.

    REFERENCE: a hubtool.quality.reference.Reference holding the fp16 log-probs of these windows (a release
    computes it once for every row); without it it is computed here, block by block. A release's reference
    also records the tokenizer's answers and the windows (hubtool.tokenizer_probe): with them, neither
    transformers nor the tokenizer is loaded here.
    """
    from hubtool.quality.reference import compute_reference, gguf_windows
    from hubtool.gguf.quantize import require_llama_cpp
    from hubtool.quality.metrics import compare_logits, merge_metrics
    from hubtool.quality.results import write_results
    from hubtool.quality.texts import read_text_source, text_label

    from hubtool.atomic import check_writable_file
    from hubtool.options import check_context, check_tokens_in_text
    from hubtool.text_windows import encode

    require_llama_cpp()
    if results_path is not None:
        check_writable_file(Path(results_path), flag="--results")  # before minutes of logits, not after
    paths = find_gguf_files(list(files))
    body = read_text_source(text)
    config = reference_config(Path(reference_dir), trust_remote_code=trust_remote_code)
    check_context(context, source="--context", trained=config.get("max_position_embeddings"),
                  config=Path(reference_dir) / "config.json", force=force_context)
    recorded = None
    if reference is not None and not trust_remote_code and not exact_tokens:
        recorded = reference.tokenizer_probe(Path(reference_dir), body, context=context, max_tokens=max_tokens)
    if recorded is not None:
        probe, windows = recorded
    else:
        tok = load_tokenizer(Path(reference_dir), trust_remote_code=trust_remote_code)
        if exact_tokens:  # --max-tokens given: bounded by what the text holds
            check_tokens_in_text(max_tokens, available=len(encode(tok, body, max_tokens=max_tokens)), source="--max-tokens", text=text)
        probe = probe_tokenizer(tok)
        windows = gguf_windows(tok, body, max_tokens=max_tokens, context=context)
    variants, sizes = {}, {}
    for path in paths:  # cheap structural checks first: fail before minutes of logits
        header = read_header(path)  # llama.cpp's parser: milliseconds, where gguf-py took seconds per file
        meta = dict(header.metadata)
        check_rope(path, meta, header.tensor_names, config)
        with open_llama(path, context=context, vocab_only=True) as llm:
            check_tokenizer(path, llm, probe, meta)
        variants[path] = variant_of(path, meta)
        sizes[path] = size_info(path, header)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hubtool-verify-") as tmp:
        if reference is None or not reference.covers(windows):
            reference = compute_reference(Path(reference_dir), windows, Path(tmp) / "reference", trust_remote_code=trust_remote_code)
        for path in paths:
            variant = variants[path]
            chunks = []
            with open_llama(path, context=context) as llm:
                for w in track(windows, description=f"{variant} logits"):
                    ref_logits = reference.logprobs(w)
                    got = llama_logits(llm, w, copy=False)
                    width = min(ref_logits.shape[1], got.shape[1])
                    chunks.append(compare_logits(ref_logits[:, :width], got[:, :width], np.asarray(w)))
            m = merge_metrics(chunks)
            size, bpw = sizes[path]
            rows.append({"variant": variant, "kind": "gguf", "file": path.name, "perplexity": round(m["perplexity"], 4),
                         "ref_perplexity": round(m["ref_perplexity"], 4), "kl_div": round(m["kl_div"], 6),
                         "top1": round(m["top1"], 4), "tokens": int(m["tokens"]), "size_bytes": size,
                         "bits_per_weight": round(bpw, 4)})
            log(f"{variant}: ppl {m['perplexity']:.3f} (fp16 {m['ref_perplexity']:.3f}), KL {m['kl_div']:.5f}, top-1 {m['top1']:.3f}")
    if results_path is not None:
        write_results(Path(results_path), rows, reference="fp16", text=text_label(text), tokens=int(rows[0]["tokens"]), context=context)
    return rows
