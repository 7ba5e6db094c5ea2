"""`export_gguf`: HF folder -> named GGUF files of every requested type, split for the Hub.

Flow: convert once to the source's 16-bit type (llama.cpp converter, lazy), then quantize one
type at a time from that file with llama.cpp's C quantizer, publishing each finished file by an
atomic rename and deleting intermediates unless asked to keep them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hubtool.errors import InputError, from_os_error, human_bytes, is_disk_error
from hubtool.gguf import facts as gguf_facts
from hubtool.gguf.convert import base_type, check_architecture, convert_to_gguf, require_converter
from hubtool.gguf.quantize import quantize_gguf, require_llama_cpp
from hubtool.gguf.split import split_gguf
from hubtool.gguf.types import needs_imatrix, parse_size, parse_types
from hubtool.progress import log, track

# Under the Hub's 50 GB per-file limit with room for the header.
DEFAULT_SPLIT_MAX_SIZE = "48G"


def existing_outputs(out_dir: Path, name: str, gguf_type: str) -> list[Path]:
    """The file or shards a previous run wrote for this type."""
    single = out_dir / gguf_facts.file_name(name, gguf_type)
    shards = sorted(out_dir.glob(gguf_facts.shard_glob(name, gguf_type)))
    return ([single] if single.exists() else []) + shards


def gguf_size_info(path: Path) -> tuple[int, float]:
    """(parameter count, bits per weight over tensor data) of a single-file GGUF (header read by llama.cpp's parser)."""
    from hubtool.gguf.header import read_header

    tensors = read_header(path).tensors
    n_params = sum(t.n_elements for t in tensors)
    n_bytes = sum(t.n_bytes for t in tensors)
    return n_params, (8.0 * n_bytes / n_params if n_params else 0.0)


def _publish(src: Path, out_dir: Path, name: str, gguf_type: str, split_bytes: int, work: Path) -> list[dict[str, Any]]:
    """Move a finished GGUF (split if too big) into OUT_DIR; return its output rows."""
    _, bpw = gguf_size_info(src)
    target = out_dir / gguf_facts.file_name(name, gguf_type)
    if split_bytes and src.stat().st_size > split_bytes:
        shard_dir = Path(tempfile.mkdtemp(prefix="split-", dir=work))
        log(f"splitting {target.name} ({src.stat().st_size / 1e9:.1f} GB) at {split_bytes / 1e9:g} GB")
        staged = split_gguf(src, shard_dir / target.name, split_bytes)
        src.unlink()
    else:
        staged = [src]
    for old in existing_outputs(out_dir, name, gguf_type):
        old.unlink()
    rows = []
    for i, path in enumerate(staged):
        final = out_dir / (path.name if len(staged) > 1 else target.name)
        os.replace(path, final)
        rows.append({"file": str(final), "type": gguf_type, "size_bytes": final.stat().st_size,
                     "bits_per_weight": round(bpw, 4), "shard": i + 1, "shards": len(staged)})
    log(f"wrote {', '.join(Path(r['file']).name for r in rows)} ({bpw:.2f} bits/weight)")
    return rows


def check_file_stem(name: str) -> None:
    """--name becomes part of file names on disk and on the Hub: one printable line, no folders."""
    if (not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip()
            or not all(c.isprintable() for c in name)):
        raise InputError(f"--name: {name!r} must be a plain file-name stem (printable, no '/', newline or tab, "
                         "not starting with '.'); e.g. --name my-model")


def export_gguf(
    model_dir: Path,
    out_dir: Path,
    types: list[str],
    *,
    name: str | None = None,
    imatrix: Path | None = None,
    calibration: str | None = None,
    split_max_size: str | None = None,
    keep_f16: bool = False,
    overwrite: bool = False,
    base_gguf: Path | None = None,
    trust_remote_code: bool = False,
    card: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Export MODEL_DIR to `{name}.{TYPE}.gguf` files in OUT_DIR; one dict per file written.

    `split_max_size` None means the Hub-safe default (48G); "0" disables splitting.
    `keep_f16` keeps the 16-bit base GGUF even when it was not requested.
    `base_gguf`: an unsplit 16-bit GGUF of this same model from an earlier export (`keep_f16`,
    `split_max_size="0"`); types are quantized from it instead of converting again, which is what
    lets a release cache each type separately without paying a 70B conversion per type.
    `card`: the front matter of the card the GGUF is published with (a release's GGUF card); its
    license, base model, tags and name become `general.*` and are checked in every file written.
    Without it the folder's own README.md front matter is used.
    """
    from hubtool.model_dir import has_vocabulary, load_model_dir  # imports torch; keep the CLI start fast

    from hubtool.atomic import check_apart, check_folder

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_folder(out_dir, flag="-o")
    check_apart({"-o": out_dir}, [model_dir, imatrix, calibration if calibration and not calibration.startswith("builtin") else None])
    if name is not None:
        check_file_stem(name)
    gguf_types = parse_types(types)
    model = load_model_dir(model_dir, trust_remote_code=trust_remote_code)
    arch = check_architecture(model.config, source=model_dir)
    front_matter = gguf_facts.card_front_matter(card) if card is not None else model.card()[0]
    model.close()
    if not has_vocabulary(model_dir):
        raise InputError(f"{model_dir}: no tokenizer.json, tokenizer.model or *.tiktoken; copy the base model's tokenizer files into it")
    if imatrix is not None and calibration is not None:
        raise InputError("--imatrix and --calibration: give one, not both")
    iq = [t for t in gguf_types if needs_imatrix(t)]
    if iq and imatrix is None and calibration is None:
        raise InputError(
            f"{', '.join(iq)}: these types need an importance matrix; pass --imatrix FILE or --calibration TEXT "
            "(e.g. --calibration builtin), or choose K-quants such as Q4_K_M"
        )
    require_converter()
    require_llama_cpp()
    if name is None:  # card names may hold spaces; file names on the Hub should not
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(front_matter.get("model_name") or model_dir.resolve().name)).strip("-.")
    check_file_stem(name)
    split_bytes = parse_size(split_max_size if split_max_size is not None else DEFAULT_SPLIT_MAX_SIZE)
    base = base_type(model.config)
    wanted = list(gguf_types) + ([base] if keep_f16 and base not in gguf_types else [])
    if not overwrite:
        for t in wanted:
            clash = existing_outputs(out_dir, name, t)
            if clash:
                raise InputError(f"{clash[0]}: already exists; choose another -o folder or pass --overwrite to replace it")
        if calibration is not None and (out_dir / gguf_facts.imatrix_name(name)).exists():
            raise InputError(f"{out_dir / gguf_facts.imatrix_name(name)}: already exists; reuse it with --imatrix, or pass --overwrite")

    created = not out_dir.exists()
    need = _bytes_needed(model, gguf_types, base, keep_base=base in wanted and base_gguf is None)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".hubtool-gguf-", dir=out_dir))
    except OSError as exc:
        raise from_os_error(exc, out_dir, need_bytes=need) from None
    free = shutil.disk_usage(out_dir).free
    if free < need:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            out_dir.rmdir()
        raise InputError(f"{out_dir}: not enough disk space: the GGUF export needs about {human_bytes(need)}, "
                         f"{human_bytes(free)} free; free space or choose -o on another disk")
    rows: list[dict[str, Any]] = []
    try:
        # the importance matrix first: a bad --imatrix file fails before the long conversion
        matrix = _importance(model_dir, arch, imatrix, calibration, out_dir, name, overwrite, trust_remote_code) if iq or imatrix or calibration else None
        if base_gguf is None:
            base_file = convert_to_gguf(model_dir, work / gguf_facts.file_name(name, base), base, work=work, front_matter=front_matter, name=name)
            if card is not None:
                check_general(base_file, front_matter)
        elif base in wanted:  # _publish moves what it publishes: publish a copy, leave the caller's file
            base_file = Path(shutil.copy2(base_gguf, work / gguf_facts.file_name(name, base)))
        else:
            base_file = Path(base_gguf)
        quant_types = [t for t in gguf_types if t != base]
        for t in track(quant_types, description="quantize"):
            log(f"quantizing {t} from {base_file.name}")
            dst = quantize_gguf(base_file, work / gguf_facts.file_name(name, t), t, imatrix=matrix)
            if card is not None:
                check_general(dst, front_matter)
            rows += _publish(dst, out_dir, name, t, split_bytes, work)
        if base in wanted:
            rows = _publish(base_file, out_dir, name, base, split_bytes, work) + rows
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if is_disk_error(exc):
            raise from_os_error(exc, out_dir, need_bytes=need) from None  # type: ignore[arg-type]
        raise
    shutil.rmtree(work, ignore_errors=True)
    order = {t: i for i, t in enumerate(wanted)}
    return sorted(rows, key=lambda r: (order.get(r["type"], 99), r["shard"]))


def check_general(path: Path, front_matter: dict[str, Any]) -> None:
    """The written GGUF's `general.*` must say what its card says (license, base model, tags, name)."""
    from hubtool.errors import QuantizeError

    problems = gguf_facts.general_mismatches(path, front_matter)
    if problems:
        raise QuantizeError(f"{path.name}: GGUF metadata disagrees with the card: {'; '.join(problems)}; report this "
                            "(the converter did not write the card's front matter)")


def _bytes_needed(model: Any, types: list[str], base: str, *, keep_base: bool) -> int:
    """Disk an export needs at its peak: the 16-bit base in the work folder plus every output file."""
    params = sum(p.stat().st_size for p in model.path.glob("*.safetensors")) // 2  # 16-bit source, roughly
    return int(params * 2 + sum(params * gguf_facts.NOMINAL_BPW.get(t, 16.0) / 8 for t in types if t != base or keep_base))


def _importance(model_dir: Path, arch: str, imatrix: Path | None, calibration: str | None, out_dir: Path, name: str, overwrite: bool,
                trust_remote_code: bool = False) -> dict[str, Any]:
    """Load --imatrix, or compute one from --calibration text and keep it beside the outputs for reuse."""
    from hubtool.atomic import staged_file
    from hubtool.gguf.imatrix import compute_imatrix, imatrix_means, load_imatrix, save_imatrix
    from hubtool.quality.texts import read_text_source

    if imatrix is not None:
        return load_imatrix(Path(imatrix))
    assert calibration is not None
    text = read_text_source(calibration)
    log(f"computing importance matrix from {calibration}")
    sums, counts = compute_imatrix(model_dir, text, arch_name=arch, trust_remote_code=trust_remote_code)
    with staged_file(out_dir / gguf_facts.imatrix_name(name), overwrite=overwrite) as tmp:
        save_imatrix(tmp, sums, counts, dataset=calibration, context=512)
    return imatrix_means(sums, counts)
