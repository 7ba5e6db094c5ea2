"""What each kind of release stage does: the engines (merge, gptqmodel, llama.cpp, the evaluators)
called on the records of the stages it needs, returning its own record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from hubtool.artifacts import GGUFFile, GGUFFiles, GPTQVariant, MergedModel, QualityResult, Record, ReferenceLogits, ServeAnswers
from hubtool.release.config import ReleaseConfig
from hubtool.release.graph import Inputs, Stage, StageKind


@dataclass(frozen=True)
class StageContext:
    """A stage's world: the release settings, the input folders, and the records of the stages it needs."""

    cfg: ReleaseConfig
    inputs: Inputs
    needs: Mapping[str, Record]

    @property
    def fp16_dir(self) -> Path:
        """The fp16 model every quant and the reference are made from: the merge's output, else SOURCE."""
        merged = next((r for r in self.needs.values() if isinstance(r, MergedModel)), None)
        return merged.folder if merged is not None else Path(self.inputs.source)  # type: ignore[arg-type]

    def need(self, record_type: type) -> list:
        """The needed stages' records of one type, in the order the stage lists its needs."""
        return [r for r in self.needs.values() if isinstance(r, record_type)]


def merge(stage: Stage, ctx: StageContext, out: Path) -> MergedModel:
    from hubtool.merge import merge_adapter

    cfg = ctx.cfg
    s = merge_adapter(ctx.inputs.base, ctx.inputs.adapter, out, dtype=cfg.dtype, rope=cfg.rope, trust_remote_code=cfg.trust_remote_code,  # type: ignore[arg-type]
                      max_position_embeddings=cfg.max_position_embeddings, overwrite=True)
    return MergedModel(out, tensors=s.tensors, merged_modules=s.merged_modules, bytes_written=s.bytes_written, rope=s.rope,
                       config_changes=json.loads(json.dumps(s.config_changes, default=str)))


def gptq(stage: Stage, ctx: StageContext, out: Path) -> GPTQVariant:
    from hubtool.gptq import load_preset, quantize_gptq

    cfg = ctx.cfg
    preset = load_preset(stage.options["preset"], cfg.gptq_overrides)
    s = quantize_gptq(ctx.fp16_dir, out, preset, calibration=cfg.gptq_calibration, device=cfg.gptq_device, overwrite=True,
                      trust_remote_code=cfg.trust_remote_code)
    return GPTQVariant(out, preset=preset.name, branch=preset.branch, bits=preset.bits, group_size=preset.group_size,
                       desc_act=preset.desc_act, damp_percent=preset.damp_percent, mse=preset.mse, act_group_aware=preset.act_group_aware,
                       seq_len=preset.seq_len,
                       samples=int(s["calibration"].get("samples") or preset.samples), calibration=str(s["calibration"].get("source") or ""),
                       size_bytes=int(s["size_bytes"]))


def gguf_base(stage: Stage, ctx: StageContext, out: Path) -> GGUFFiles:
    """The unsplit 16-bit GGUF (its own stage: a 70B conversion is paid once, not once per type)."""
    from hubtool.gguf import export_gguf

    rows = export_gguf(ctx.fp16_dir, out, [stage.options["type"]], name=ctx.cfg.name, split_max_size="0", overwrite=True,
                       trust_remote_code=ctx.cfg.trust_remote_code, card=gguf_card_header(ctx.cfg, ctx.inputs, ctx.fp16_dir))
    return GGUFFiles(out, files=tuple(_gguf_file(r) for r in rows))


def gguf(stage: Stage, ctx: StageContext, out: Path) -> GGUFFiles:
    from hubtool.gguf import export_gguf

    base = ctx.need(GGUFFiles)[0]
    if stage.options.get("tuned"):
        from hubtool.gguf.mix import export_tuned
        from hubtool.quality.texts import read_text_source

        rows = export_tuned(ctx.fp16_dir, base.folder / base.files[0].file, out, stage.options["type"], name=ctx.cfg.name,
                            calibration=read_text_source(stage.options["calibration"]), calibration_name=stage.options["calibration"],
                            trust_remote_code=ctx.cfg.trust_remote_code)
        return GGUFFiles(out, files=tuple(_gguf_file(r) for r in rows))
    rows = export_gguf(ctx.fp16_dir, out, [stage.options["type"]], name=ctx.cfg.name, split_max_size=ctx.cfg.gguf_split_max_size,
                       overwrite=True, trust_remote_code=ctx.cfg.trust_remote_code, base_gguf=base.folder / base.files[0].file,
                       card=gguf_card_header(ctx.cfg, ctx.inputs, ctx.fp16_dir))
    return GGUFFiles(out, files=tuple(_gguf_file(r) for r in rows))


def gguf_card_header(cfg: ReleaseConfig, inputs: Inputs, fp16_dir: Path) -> dict:
    """The GGUF card's front matter (the same fields the card will state), for the files' `general.*`."""
    from hubtool.card import card_header
    from hubtool.gguf.facts import card_front_matter

    source = inputs.weights / "README.md"
    release = {"repos": {"fp16": cfg.repo_id("fp16"), "gguf": cfg.repo_id("gguf")},
               "source_card": str(source) if source.is_file() else None}
    return card_front_matter(card_header("gguf", fp16_dir, meta=cfg.card, release=release))


def _gguf_file(row: Mapping) -> GGUFFile:
    return GGUFFile(Path(row["file"]).name, str(row["type"]), int(row["size_bytes"]), row.get("bits_per_weight"),
                    int(row.get("shard", 1)), int(row.get("shards", 1)))


def reference(stage: Stage, ctx: StageContext, out: Path) -> ReferenceLogits:
    """The fp16 log-probs every quality row is measured against: computed once per release."""
    from transformers import AutoTokenizer

    from hubtool.quality.reference import compute_reference, probe_record, reference_windows
    from hubtool.quality.texts import read_text_source

    cfg = ctx.cfg
    tok = AutoTokenizer.from_pretrained(ctx.fp16_dir, trust_remote_code=cfg.trust_remote_code)
    text = read_text_source(cfg.verify_text)
    windows = reference_windows(tok, text, context=cfg.verify_context, max_tokens=cfg.verify_max_tokens)
    # custom tokenizer code may read files the probe's hash does not cover: verify:gguf loads that tokenizer itself
    probe = None if cfg.trust_remote_code else probe_record(tok, ctx.fp16_dir, text, windows, context=cfg.verify_context,
                                                             max_tokens=cfg.verify_max_tokens)
    ref = compute_reference(ctx.fp16_dir, windows, out, trust_remote_code=cfg.trust_remote_code, probe=probe)
    return ReferenceLogits(out, windows=len(windows), tokens=int(ref.info["tokens"]), vocab=int(ref.info["vocab"]))


def verify_gptq(stage: Stage, ctx: StageContext, out: Path) -> QualityResult:
    from hubtool.quality.reference import open_reference
    from hubtool.gptq import verify_gptq as run
    from hubtool.quality.results import read_results

    cfg = ctx.cfg
    out.mkdir(parents=True, exist_ok=True)
    variant = ctx.need(GPTQVariant)[0]
    run(variant.folder, ctx.fp16_dir, text=cfg.verify_text, rtn=cfg.verify_rtn, results_path=out / "quality.json",
        context=cfg.verify_context, max_tokens=cfg.verify_max_tokens, reference=open_reference(ctx.need(ReferenceLogits)[0].folder),
        trust_remote_code=cfg.trust_remote_code)
    return QualityResult.from_results(out, read_results(out / "quality.json"))


def verify_gguf(stage: Stage, ctx: StageContext, out: Path) -> QualityResult:
    from hubtool.quality.reference import open_reference
    from hubtool.gguf import verify_gguf as run
    from hubtool.quality.results import read_results

    cfg = ctx.cfg
    out.mkdir(parents=True, exist_ok=True)
    folders = [r.folder for r in ctx.need(GGUFFiles)]
    run(folders, ctx.fp16_dir, text=cfg.verify_text, max_tokens=cfg.verify_max_tokens, context=cfg.verify_context,
        results_path=out / "quality.json", reference=open_reference(ctx.need(ReferenceLogits)[0].folder),
        trust_remote_code=cfg.trust_remote_code)
    return QualityResult.from_results(out, read_results(out / "quality.json"))


def serve(stage: Stage, ctx: StageContext, out: Path) -> ServeAnswers:
    """One artifact's greedy answers to the release's prompts, checked (hubtool/serve/checks.py): the fp16 model's on
    their own (they are every other artifact's reference), every other artifact's against them. A failed check
    fails the stage, so nothing is cached for it and nothing is published."""
    from hubtool import progress
    from hubtool.serve import check_answers, check_reference, serve_gguf, serve_transformers

    cfg, options = ctx.cfg, stage.options
    out.mkdir(parents=True, exist_ok=True)
    ask = {"prompts": list(cfg.serve_prompts), "max_tokens": cfg.serve_max_tokens, "out": out}
    trust = cfg.trust_remote_code
    if options["artifact"] == "fp16":  # float32 compute: the reference, and no float16 overflow (the load check handles that)
        record = serve_transformers(ctx.fp16_dir, **ask, artifact="fp16", variant="fp16", what=cfg.repo_id("fp16"), bits=16.0,
                                    dtype="float32", reference=True, trust_remote_code=trust)
        check_reference(record)
        _write_answers(record)
        return record
    ref = ctx.need(ServeAnswers)[0]
    if options["artifact"] == "adapter":
        adapter = Path(ctx.inputs.adapter)  # type: ignore[arg-type]
        own_tokenizer = any((adapter / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
        record = serve_transformers(Path(ctx.inputs.base), **ask, artifact="adapter", variant="adapter", what=cfg.repo_id("adapter"),  # type: ignore[arg-type]
                                    bits=16.0, dtype="float32", adapter=adapter, tokenizer_dir=adapter if own_tokenizer else None,
                                    trust_remote_code=trust)
    elif options["artifact"] == "gptq":
        variant = ctx.need(GPTQVariant)[0]
        record = serve_transformers(variant.folder, **ask, artifact="gptq", variant=variant.preset,
                                    what=f"{cfg.repo_id('gptq')} ({variant.preset})", bits=float(variant.bits), dtype="auto",
                                    trust_remote_code=trust)
    else:
        from hubtool.gguf.facts import NOMINAL_BPW

        files = ctx.need(GGUFFiles)[0]
        first = next(f for f in files.files if f.shard == 1 and f.type != "imatrix" and not f.file.endswith(".imatrix.gguf"))
        record = serve_gguf(files.folder / first.file, **ask, variant=options["variant"], bits=NOMINAL_BPW.get(options["type"], 2.5),
                            tokenizer_dir=ctx.fp16_dir, trust_remote_code=trust, verbose=not progress.library_output_discarded())
    check_answers(record, ref)
    _write_answers(record)
    return record


def _write_answers(record: ServeAnswers) -> None:
    """The stage's output: its answers as quality.json's `samples` rows (a stage with no files has no folder in a shared cache)."""
    (record.folder / "answers.json").write_text(json.dumps(record.rows(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


RUNNERS: dict[str, Callable[[Stage, StageContext, Path], Record]] = {
    StageKind.MERGE: merge,
    StageKind.GPTQ: gptq,
    StageKind.GGUF_BASE: gguf_base,
    StageKind.GGUF: gguf,
    StageKind.REFERENCE: reference,
    StageKind.VERIFY_GPTQ: verify_gptq,
    StageKind.VERIFY_GGUF: verify_gguf,
    StageKind.SERVE: serve,
}
