"""The release plan: the stages that will run (release/graph.py) and which repos and branches get
which files, and roughly how big, computed from the inputs' headers and content hashes alone so it
can be printed (and reviewed with --dry-run, or handed to a CI system with --plan-json) before any
work runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hubtool.artifacts import ArtifactKind
from hubtool.errors import InputError
from hubtool.release.cache import Hasher
from hubtool.release.config import ReleaseConfig
from hubtool.release.graph import Inputs, Stage, StageKind, build_stages, groups

SMALL_FILES = "config + tokenizer files"


@dataclass
class PlannedFile:
    path: str
    size_bytes: int
    estimated: bool = False  # sizes of files a stage has not produced yet are estimates


@dataclass
class Target:
    """One push: a folder's content to REPO_ID@BRANCH."""

    key: ArtifactKind
    repo_id: str
    branch: str
    what: str
    files: list[PlannedFile] = field(default_factory=list)
    preset: str | None = None  # gptq targets: the preset name or YAML path as given
    stages: list[str] = field(default_factory=list)  # the stages whose outputs this repo/branch publishes

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


@dataclass
class Plan:
    """Inputs, the stages in the order they run, and the targets `--publish` pushes."""

    source: str | None
    base: str | None
    adapter: str | None
    rope: str | None
    targets: list[Target]
    stages: tuple[Stage, ...]
    params: int
    warnings: list[str] = field(default_factory=list)  # shown under the plan (a card without a license, ...)
    checks: list[str] = field(default_factory=list)  # per-architecture checks that passed at plan time

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [s.as_dict() for s in self.stages]
        data["groups"] = groups(self.stages)
        for t in data["targets"]:
            t["key"] = str(t["key"])
        return data

    def render(self) -> str:
        """The plan as plain text for the terminal / CI log."""
        lines = ["release plan:"]
        if self.adapter:
            lines.append(f"  merge    {self.base} + {self.adapter}" + (f" (RoPE {self.rope})" if self.rope else ""))
        else:
            lines.append(f"  source   {self.source}")
        for st in self.stages:
            needs = f"  <- {', '.join(st.needs)}" if st.needs else ""
            memory = f", ~{st.memory_bytes / 1e9:.3g} GB RAM" if st.memory_bytes else ""
            lines.append(f"  stage    {st.name:<36} [{st.resource}{memory}] {st.key[:12]}{needs}")
        lines.append("  publish  cards + push, after every stage")
        for check in self.checks:
            lines.append(f"  check    {check}")
        for t in self.targets:
            lines.append(f"  {t.repo_id}@{t.branch}  [{t.what}]  {_size(t.size_bytes, any(f.estimated for f in t.files))}")
            for f in t.files:
                lines.append(f"      {f.path:<44} {_size(f.size_bytes, f.estimated)}")
        lines += [f"  warning  {w}" for w in self.warnings]
        return "\n".join(lines)


def _size(n: int, estimated: bool) -> str:
    text = f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
    return ("~" if estimated else "") + text


def _tensor_shapes(folder: Path) -> list[tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    out = []
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out += [(name, tuple(int(d) for d in f.get_slice(name).get_shape())) for name in f.keys()]
    return out


def gguf_estimates(folder: Path, types: list[str], tensors: list[tuple[str, tuple[int, ...]]] | None = None) -> dict[str, int]:
    """Each GGUF type's estimated file size, tensor by tensor as llama.cpp types them (hubtool/gguf/size_estimate.py);
    TENSORS: FOLDER's (name, shape) list when the caller has read it already."""
    from hubtool.gguf.size_estimate import estimate_gguf_bytes
    from hubtool.model_dir import read_json

    config = read_json(folder / "config.json")
    text = config.get("text_config") or config
    tensors = _tensor_shapes(folder) if tensors is None else tensors
    tied = not any(name.endswith("lm_head.weight") for name, _ in tensors)
    tok = folder / "tokenizer.json"
    bpe = tok.is_file() and '"merges"' in tok.read_text(encoding="utf-8", errors="replace")
    n_layers = int(text.get("num_hidden_layers") or 1)
    return {t: estimate_gguf_bytes(tensors, t, n_layers=n_layers, tied=tied, vocab_size=int(text.get("vocab_size") or 0), bpe=bpe)
            for t in types}


def _weights(folder: Path) -> tuple[int, int, int, int]:
    """(total params, params in 2-D layer matrices GPTQ quantizes, bytes of weight files, bytes of other files)."""
    from safetensors import safe_open

    total = linear = weight_bytes = 0
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise InputError(f"{folder}: no *.safetensors weights; pass a model folder saved with save_pretrained")
    for shard in shards:
        weight_bytes += shard.stat().st_size
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                n = 1
                for d in shape:
                    n *= int(d)
                total += n
                if len(shape) == 2 and ".layers." in name:
                    linear += n
    other = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix != ".safetensors" and not p.name.startswith("."))
    return total, linear, weight_bytes, other


# Trainer checkpoint state that sits beside adapters/models but must not be published.
TRAINING_STATE = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin", "stage.json"}


def publishable(rel: Path) -> bool:
    """Files a release uploads from an input folder: not hidden, not trainer state, not the old README (we write the card)."""
    name = rel.name
    return not (
        any(part.startswith(".") for part in rel.parts)
        or name == "README.md"
        or name in TRAINING_STATE
        or (name.startswith("rng_state") and name.endswith(".pth"))
    )


def _listing(folder: Path) -> list[PlannedFile]:
    return [PlannedFile(p.name, p.stat().st_size) for p in sorted(folder.iterdir()) if p.is_file() and publishable(Path(p.name))]


def make_plan(cfg: ReleaseConfig, inputs: Inputs, *, hasher: Hasher) -> Plan:
    """The stages and the targets for every repo/branch the release writes, from the inputs' headers and
    content hashes (memoised in the work dir, so a re-run does not read the weights again)."""
    from hubtool.gguf.facts import file_name, imatrix_name, mix_summary_name, recipe_name, tuned_variant
    from hubtool.gguf.frontier_plot import PLOT_BYTES, PLOT_NAME
    from hubtool.gguf.convert import base_type
    from hubtool.gptq import DEFAULT_PRESET, load_preset
    from hubtool.model_dir import read_json

    source, base, adapter = inputs.source, inputs.base, inputs.adapter
    weights_dir = inputs.weights
    checks = architecture_checks(cfg, weights_dir, adapter)
    total, linear, weight_bytes, other = _weights(weights_dir)
    readme = PlannedFile("README.md", 8_000, estimated=True)
    targets: list[Target] = []

    if adapter is not None:
        scale = 2 * total / weight_bytes  # merged shards follow the base's, written as 16-bit
        fp16_files = [PlannedFile(p.name, int(p.stat().st_size * scale), True) for p in sorted(weights_dir.glob("*.safetensors"))]
        fp16_files += [PlannedFile(SMALL_FILES + ", hubtool.json", other, True)]
    else:
        fp16_files = _listing(weights_dir)
    targets.append(Target(ArtifactKind.FP16, cfg.repo_id("fp16"), "main", "fp16 (merged)" if adapter is not None else "fp16",
                          fp16_files + [readme], stages=["merge"] if adapter is not None else []))
    if adapter is not None:
        targets.append(Target(ArtifactKind.ADAPTER, cfg.repo_id("adapter"), "main", "PEFT adapter", _listing(adapter) + [readme]))

    presets = [(spec, load_preset(spec, cfg.gptq_overrides)) for spec in cfg.gptq_presets]
    ordered = presets
    if presets:
        main_index = next((i for i, (_, p) in enumerate(presets) if p.name == DEFAULT_PRESET), 0)
        ordered = [presets[main_index]] + [sp for i, sp in enumerate(presets) if i != main_index]
        branches = [p.branch for _, p in ordered[1:]]
        if len(set(branches)) != len(branches):
            raise InputError(f"gptq presets: two variants share a branch ({', '.join(branches)}); give each preset its own `branch:`")
        for i, (spec, p) in enumerate(ordered):
            group = p.group_size if p.group_size > 0 else 4096
            q_bytes = int(linear * p.bits / 8 + linear / group * 2 * 1.25 + (total - linear) * 2)
            files = [PlannedFile("model.safetensors", q_bytes, True), PlannedFile(SMALL_FILES + ", quantize_config.json", other, True), readme]
            targets.append(Target(ArtifactKind.GPTQ, cfg.repo_id("gptq"), "main" if i == 0 else p.branch, p.label, files, preset=spec,
                                  stages=[f"gptq:{p.name}"]))
    if cfg.gguf_types:
        tensors = _tensor_shapes(weights_dir)  # the shards' headers, read once for the sizes below
        sizes = gguf_estimates(weights_dir, list(dict.fromkeys([*cfg.gguf_types, *cfg.gguf_tuned])), tensors)
        matrices = [shape for name, shape in tensors if len(shape) == 2 and "embed" not in name]
        n_matrices, in_columns = len(matrices), sum(shape[1] for shape in matrices)
        files = [PlannedFile(file_name(cfg.name, t), sizes[t], True) for t in cfg.gguf_types]
        for t in cfg.gguf_tuned:  # the same size as stock t, plus its recipe, summary and the imatrix it used
            v = tuned_variant(t)
            files += [PlannedFile(file_name(cfg.name, v), sizes[t], True),
                      PlannedFile(recipe_name(cfg.name, v), 40 * n_matrices, True), PlannedFile(mix_summary_name(cfg.name, v), 2_000, True)]
        if cfg.gguf_tuned:  # per weight matrix: a float32 squared-activation sum per input column, and a count
            files.append(PlannedFile(imatrix_name(cfg.name), 4 * (in_columns + n_matrices) + 20_000, True))
        if cfg.verify and len(cfg.gguf_types) + len(cfg.gguf_tuned) >= 2:  # measured files drawn as size vs KL
            files.append(PlannedFile(PLOT_NAME, PLOT_BYTES, True))
        targets.append(Target(ArtifactKind.GGUF, cfg.repo_id("gguf"), "main", "GGUF " + ", ".join(cfg.gguf_types), files + [readme],
                              stages=[f"gguf:{t}" for t in cfg.gguf_types] + [f"gguf:{t}-tuned" for t in cfg.gguf_tuned]))
    # GGUF: convert once to the source's own 16-bit type (exact), quantize each type from it
    fp16_config = {"dtype": cfg.dtype} if adapter is not None else read_json(weights_dir / "config.json")  # the merge writes cfg.dtype
    stages = build_stages(cfg, inputs, hasher, gptq_presets=ordered, gguf_base_type=base_type(fp16_config))
    stages = _in_memory_hints(cfg, weights_dir, stages)
    return Plan(
        source=str(source) if source is not None else None,
        base=str(base) if base is not None else None,
        adapter=str(adapter) if adapter is not None else None,
        rope=cfg.rope,
        targets=targets,
        stages=stages,
        params=total,
        checks=checks,
    )


def _in_memory_hints(cfg: ReleaseConfig, weights_dir: Path, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """The reference and verify:gptq stages of a model evaluated in memory carry its RAM estimate (schedulers read it)."""
    from dataclasses import replace

    from hubtool.model_dir import read_json, remote_code_files

    heavy = (StageKind.REFERENCE, StageKind.VERIFY_GPTQ)
    if not (cfg.verify and any(st.kind in heavy for st in stages) and remote_code_files(weights_dir, read_json(weights_dir / "config.json"))):
        return stages
    from hubtool.quality.in_memory import evaluation_mode

    mode = evaluation_mode(weights_dir, context=cfg.verify_context, trust_remote_code=cfg.trust_remote_code)
    if not mode.memory_bytes:
        return stages
    return tuple(replace(st, memory_bytes=mode.memory_bytes) if st.kind in heavy else st for st in stages)


def architecture_checks(cfg: ReleaseConfig, weights_dir: Path, adapter: Path | None) -> list[str]:
    """Every per-architecture check of the stages this release runs, from headers and configs only.

    Refusing here (custom code without --trust-remote-code, an adapter layout the merge can't map,
    an architecture the installed llama.cpp converter or gptqmodel doesn't register) costs seconds;
    the same refusal after the merge and an hour of GPTQ costs the hour.
    """
    from hubtool.model_dir import load_model_dir, remote_code_files

    model = load_model_dir(weights_dir, kind="base model" if adapter is not None else "model", trust_remote_code=cfg.trust_remote_code)
    config, weight_names = model.config, model.tensor_names()
    model.close()
    arch = ", ".join(config.get("architectures") or []) or "unknown architecture"
    checks = [f"architecture {arch} (model_type {config.get('model_type')!r})"]
    code = remote_code_files(weights_dir, config)
    if code:
        checks.append(f"custom code trusted (--trust-remote-code); ships in every repo: {', '.join(p.name for p in code)}")
    if code and cfg.verify and (cfg.gguf_types or cfg.gptq_presets):
        from hubtool.quality.in_memory import evaluation_mode

        checks.append("verify: " + evaluation_mode(weights_dir, context=cfg.verify_context, trust_remote_code=cfg.trust_remote_code).line)
    if adapter is not None:
        from hubtool.merge import check_merge

        checks.append("merge: " + check_merge(weights_dir, adapter, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code))
    if cfg.gguf_types:
        from hubtool.gguf.convert import check_architecture

        checks.append(f"gguf: llama.cpp converter maps it to '{check_architecture(config, source=weights_dir)}'")
        if cfg.serve:
            from hubtool.serve.server import check_server_installed

            checks.append(f"serve: {check_server_installed()}")
    if cfg.gptq_presets:
        from hubtool.gptq.quantize import check_gptq_architecture

        checks.append(f"gptq: gptqmodel definition {check_gptq_architecture(config, source=weights_dir, weight_names=weight_names)}")
    return checks
