"""The release's stages as a graph: what runs, keyed by content, with its dependencies.

The plan printed before a release, `--dry-run --json`, `--plan-json` for a CI system, the folder
names in the stage cache and the run log all come from these objects: there is no second
description of the work. A stage's key is a hash of its options and of the keys of what it reads
(down to the content of the input folders and text files), so it is known before anything runs and
is the same on every machine that sees the same inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hubtool import __version__
from hubtool.errors import InputError
from hubtool.release.cache import Hasher, digest_of
from hubtool.release.config import ReleaseConfig


class StageKind:
    MERGE = "merge"
    GPTQ = "gptq"
    GGUF_BASE = "gguf-base"  # the unsplit 16-bit GGUF every type is quantized from
    GGUF = "gguf"
    REFERENCE = "reference"
    VERIFY_GPTQ = "verify-gptq"
    VERIFY_GGUF = "verify-gguf"
    SERVE = "serve"  # one artifact's greedy answers to the release's prompts, checked against the fp16 model's (hubtool/serve/)


# What each kind mostly needs, for a scheduler (GPU runners for GPTQ, big-memory ones for evaluation).
RESOURCE = {StageKind.MERGE: "cpu", StageKind.GPTQ: "gpu", StageKind.GGUF_BASE: "cpu", StageKind.GGUF: "cpu",
            StageKind.REFERENCE: "memory", StageKind.VERIFY_GPTQ: "memory", StageKind.VERIFY_GGUF: "cpu",
            StageKind.SERVE: "cpu"}


@dataclass(frozen=True)
class Stage:
    """One unit of work: a name people read, a content key, the stages it reads, its options."""

    name: str
    kind: str
    key: str
    needs: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    resource: str = "cpu"  # a hint for schedulers: cpu | gpu | memory
    memory_bytes: int = 0  # RAM the plan knows this stage needs (a model evaluated in memory); 0: schedule's model

    @property
    def folder_name(self) -> str:
        """The stage's folder in the work dir and in a shared cache."""
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', self.name)}-{self.key}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "key": self.key, "needs": list(self.needs), "resource": self.resource,
                **({"memory_bytes": self.memory_bytes} if self.memory_bytes else {}), "folder": self.folder_name, "options": dict(self.options)}


@dataclass(frozen=True)
class Inputs:
    """The release's input folders: a merged SOURCE, or a BASE plus an ADAPTER to merge."""

    source: Path | None
    base: Path | None
    adapter: Path | None

    @property
    def weights(self) -> Path:
        """The folder whose weights the release starts from (the base when merging)."""
        return Path(self.base if self.adapter is not None else self.source)  # type: ignore[arg-type]


def check_inputs(source: Path | None, base: Path | None, adapter: Path | None) -> Inputs:
    """Exactly one of SOURCE or --base/--adapter, all existing folders."""
    if source is not None and (base is not None or adapter is not None):
        raise InputError("give SOURCE (a merged model folder) or --base and --adapter, not both")
    if source is None and (base is None or adapter is None):
        raise InputError("give SOURCE (a merged model folder), or both --base BASE and --adapter ADAPTER to merge first")
    for flag, p in (("SOURCE", source), ("--base", base), ("--adapter", adapter)):
        if p is not None and not Path(p).is_dir():
            raise InputError(f"{p}: {flag} folder not found")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise InputError(f"{adapter}: no adapter_config.json; --adapter must be a PEFT adapter folder")
    return Inputs(Path(source) if source else None, Path(base) if base else None, Path(adapter) if adapter else None)


def text_id(spec: str, hasher: Hasher) -> str:
    """A text source's identity: the builtin name, or the file's content hash."""
    if spec.startswith("builtin"):
        return spec
    if not Path(spec).is_file():
        raise InputError(f"{spec}: text file not found; fix gptq.calibration / verify.text in release.yaml or use 'builtin'")
    return hasher.file(Path(spec))


def gguf_card_identity(cfg: ReleaseConfig) -> dict[str, Any]:
    """What of the release's card config the GGUF files carry as `general.*` (so changing a license re-exports)."""
    from hubtool.gguf.facts import CARD_KEYS

    card = {k: cfg.card[k] for k in CARD_KEYS if k in cfg.card}
    return {"card": card, "fp16_repo": cfg.repo_id("fp16")} if card else {"fp16_repo": cfg.repo_id("fp16")}


def build_stages(cfg: ReleaseConfig, inputs: Inputs, hasher: Hasher, *, gptq_presets: list[tuple[str, Any]],
                 gguf_base_type: str) -> tuple[Stage, ...]:
    """Every stage of the release in an order that runs (each after what it needs)."""
    stages: list[Stage] = []

    def add(name: str, kind: str, needs: tuple[str, ...], options: dict[str, Any], identity: dict[str, Any]) -> Stage:
        key = digest_of({"stage": name, "hubtool": __version__, **identity})[:20]
        stage = Stage(name, kind, key, needs, options, RESOURCE[kind])
        stages.append(stage)
        return stage

    if inputs.adapter is not None:
        opts = {"rope": cfg.rope, "max_position_embeddings": cfg.max_position_embeddings, "dtype": cfg.dtype}
        merge = add("merge", StageKind.MERGE, (), opts,
                    {"base": hasher.folder(inputs.base), "adapter": hasher.folder(inputs.adapter), **opts})  # type: ignore[arg-type]
        fp16_id, fp16_needs = merge.key, (merge.name,)
    else:
        fp16_id, fp16_needs = hasher.folder(inputs.source), ()  # type: ignore[arg-type]

    gptq: list[tuple[Stage, str]] = []
    for spec, preset in gptq_presets:
        opts = {"preset": spec, "calibration": cfg.gptq_calibration, "device": cfg.gptq_device}
        stage = add(f"gptq:{preset.name}", StageKind.GPTQ, fp16_needs, opts,
                    {"fp16": fp16_id, "preset": preset.to_dict(), "calibration": text_id(cfg.gptq_calibration, hasher)})
        gptq.append((stage, spec))
    gguf: list[Stage] = []
    if cfg.gguf_types:
        base = add(f"gguf:{gguf_base_type}-base", StageKind.GGUF_BASE, fp16_needs, {"type": gguf_base_type, "name": cfg.name},
                   {"fp16": fp16_id, "name": cfg.name, "type": gguf_base_type, **gguf_card_identity(cfg)})
        for t in cfg.gguf_types:
            opts = {"type": t, "name": cfg.name, "split_max_size": cfg.gguf_split_max_size}
            gguf.append(add(f"gguf:{t}", StageKind.GGUF, (*fp16_needs, base.name), opts, {"base": base.key, **opts}))
        for t in cfg.gguf_tuned:  # a mix of stock T's size (hubtool/gguf/mix.py), beside the stock file
            opts = {"type": t, "tuned": True, "name": cfg.name, "split_max_size": cfg.gguf_split_max_size, "calibration": cfg.gguf_calibration}
            gguf.append(add(f"gguf:{t}-tuned", StageKind.GGUF, (*fp16_needs, base.name), opts,
                            {"base": base.key, **opts, "calibration": text_id(cfg.gguf_calibration, hasher)}))
    if cfg.verify and (gptq or gguf):
        text = {"text": text_id(cfg.verify_text, hasher), "max_tokens": cfg.verify_max_tokens, "context": cfg.verify_context}
        opts = {"text": cfg.verify_text, "max_tokens": cfg.verify_max_tokens, "context": cfg.verify_context}
        ref = add("verify:reference", StageKind.REFERENCE, fp16_needs, opts, {"fp16": fp16_id, **text})
        for stage, _ in gptq:
            add(f"verify:{stage.name}", StageKind.VERIFY_GPTQ, (*fp16_needs, stage.name, ref.name), {**opts, "rtn": cfg.verify_rtn},
                {"artifact": stage.key, "reference": ref.key, "rtn": cfg.verify_rtn})
        if gguf:
            add("verify:gguf", StageKind.VERIFY_GGUF, (*fp16_needs, *(s.name for s in gguf), ref.name), opts,
                {"artifacts": [s.key for s in gguf], "reference": ref.key})
    if cfg.serve:
        asked = {"prompts": list(cfg.serve_prompts), "max_tokens": cfg.serve_max_tokens}
        fp16 = add("serve:fp16", StageKind.SERVE, fp16_needs, {"artifact": "fp16"}, {"fp16": fp16_id, **asked})
        if inputs.adapter is not None:  # base + adapter through PEFT, as the adapter card loads it
            add("serve:adapter", StageKind.SERVE, (fp16.name,), {"artifact": "adapter"},
                {"base": hasher.folder(inputs.base), "adapter": hasher.folder(inputs.adapter), "reference": fp16.key, **asked})  # type: ignore[arg-type]
        for stage, _ in gptq:
            add(f"serve:{stage.name}", StageKind.SERVE, (stage.name, fp16.name), {"artifact": "gptq"},
                {"artifact": stage.key, "reference": fp16.key, **asked})
        for stage in gguf:  # the fp16 folder too: its tokenizer names the template tokens to look for
            add(f"serve:{stage.name}", StageKind.SERVE, (*fp16_needs, stage.name, fp16.name), {"artifact": "gguf", "variant": stage.name.split(":", 1)[1], "type": stage.options["type"]},
                {"artifact": stage.key, "reference": fp16.key, **asked})
    return tuple(stages)


def groups(stages: tuple[Stage, ...]) -> dict[str, list[list[str]]]:
    """Stages grouped for a CI matrix: `prepare` (the merge), `quantize` (independent chains, one job each:
    every GPTQ preset, the GGUF conversion and its types, the fp16 reference), `verify` (needs all of those:
    the verifications, then the serve checks, fp16's answers first).
    A job runs its chain with `hubtool release ... --stage A,B,C`."""
    prepare = [[s.name] for s in stages if s.kind == StageKind.MERGE]
    chains: list[list[str]] = []
    for s in stages:
        if s.kind in (StageKind.GPTQ, StageKind.REFERENCE):
            chains.append([s.name])
        elif s.kind == StageKind.GGUF_BASE:
            chains.append([s.name] + [t.name for t in stages if t.kind == StageKind.GGUF and s.name in t.needs])
    verify = [s.name for s in stages if s.kind in (StageKind.VERIFY_GPTQ, StageKind.VERIFY_GGUF, StageKind.SERVE)]  # serve:fp16 first
    return {"prepare": prepare, "quantize": chains, "verify": [verify] if verify else []}


def ci_matrix(stages: tuple[Stage, ...]) -> dict[str, Any]:
    """`groups` as a CI job matrix reads it: one comma-joined `--stage` value per job, with the resource
    its first stage needs (a GitHub Actions `fromJSON` include list, a Slurm array index)."""
    by_name = {s.name: s for s in stages}
    g = groups(stages)
    return {
        "prepare": ",".join(n for chain in g["prepare"] for n in chain),
        "quantize": [{"stages": ",".join(chain), "resource": by_name[chain[0]].resource} for chain in g["quantize"]],
        "verify": ",".join(n for chain in g["verify"] for n in chain),
    }
