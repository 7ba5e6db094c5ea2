"""GPTQ presets: YAML files in `quant_configs/` (or a user's own), plus CLI overrides, validated.

A preset names every setting that changes the quantized weights, so a release can say exactly
how each branch was made. Where the presets live: `quant_configs/` at the repository root is the
source of truth; `hubtool/gptq/quant_configs` is a symlink to it that setuptools ships as package
data, so an installed hubtool finds the same files.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any


from hubtool.yamlfile import read_yaml_mapping
from hubtool.errors import InputError

DEFAULT_PRESET = "gptq-4bit-32g-actorder"

# Settings that change the weights; overriding any of them re-derives the branch name.
QUANT_FIELDS = ("bits", "group_size", "desc_act", "sym", "act_group_aware")
FIELDS = QUANT_FIELDS + ("damp_percent", "damp_auto_increment", "mse", "mse_grid", "true_sequential", "static_groups", "samples", "seq_len", "branch")
FILE_KEYS = set(FIELDS) - {"samples", "seq_len"} | {"calibration", "base", "name"}
_BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class GPTQPreset:
    """Everything needed to reproduce a GPTQ quantization (what the card and quantize_config record)."""

    name: str
    bits: int = 4
    group_size: int = 32
    desc_act: bool = True
    sym: bool = True
    damp_percent: float = 0.01
    # gptqmodel's options that change only how the weights are chosen, never the tensor layout:
    # damp_auto_increment raises damping when a Hessian is not positive definite (0 = fail instead);
    # mse > 0 searches each group's scale (clipping) for the least |error|^mse (0 = min/max scale);
    # act_group_aware orders columns by importance within and across groups (GPTQ v2's "GAR"), which
    # keeps g_idx trivial, so it needs desc_act false (its checkpoint is a plain desc_act=false one).
    damp_auto_increment: float = 0.01
    mse: float = 0.0
    # mse_grid: the search's steps per unit of range; it tries scales max·(1 − i/mse_grid) down to 0.2·max
    # (gptqmodel's maxshrink 0.8), so 100 = gptqmodel's own 80 candidates, 20 = 16 candidates in 5 % steps.
    mse_grid: int = 100
    act_group_aware: bool = False
    true_sequential: bool = True
    static_groups: bool = False
    samples: int = 128
    seq_len: int = 2048
    branch: str = "gptq-4bit-32g-actorder_True"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """Human name for tables: 'GPTQ 4-bit 32g act-order'."""
        group = "per-channel" if self.group_size == -1 else f"{self.group_size}g"
        return f"GPTQ {self.bits}-bit {group}" + (" act-order" if self.desc_act else "")


def branch_name(bits: int, group_size: int, desc_act: bool, act_group_aware: bool = False) -> str:
    """The branch naming maintainers use for GPTQ variants, e.g. `gptq-4bit-32g-actorder_True`;
    group-aware ordering gets its own name (`gptq-4bit-32g-gar`) so it never shares a branch with plain 32g."""
    if act_group_aware:
        return f"gptq-{bits}bit-{group_size}g-gar"
    return f"gptq-{bits}bit-{group_size}g-actorder_{desc_act}"


def presets_dir() -> Path:
    """quant_configs/ beside the package (checkout, editable install) or shipped as package data."""
    repo = Path(__file__).resolve().parents[2] / "quant_configs"
    if repo.is_dir():
        return repo
    return Path(str(resources.files("hubtool.gptq").joinpath("quant_configs")))


def list_presets() -> list[str]:
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _read_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, what="preset file", example="bits: 4, group_size: 32, ...")


def _flatten(data: dict[str, Any], source: str) -> dict[str, Any]:
    """YAML layout -> flat field dict; unknown keys are errors (a typo must not be silently ignored)."""
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown setting {unknown[0]!r}; allowed: {', '.join(sorted(FILE_KEYS))}")
    flat = {k: v for k, v in data.items() if k in FIELDS}
    cal = data.get("calibration")
    if cal is not None:
        if not isinstance(cal, dict) or set(cal) - {"samples", "seq_len"}:
            raise InputError(f"{source}: 'calibration' must be a mapping with 'samples' and/or 'seq_len'")
        flat.update(cal)
    return flat


def _check(values: dict[str, Any], source: str) -> None:
    def bad(key: str, want: str) -> InputError:
        return InputError(f"{source}: {key} = {values[key]!r} is invalid; expected {want}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if values["bits"] not in (2, 3, 4, 8) or not is_int(values["bits"]):
        raise bad("bits", "2, 3, 4 or 8")
    g = values["group_size"]
    if not is_int(g) or not (g == -1 or (g >= 16 and g & (g - 1) == 0)):
        raise bad("group_size", "-1 (per channel) or a power of two >= 16, e.g. 32 or 128")
    for key in ("desc_act", "sym", "true_sequential", "static_groups", "act_group_aware"):
        if not isinstance(values[key], bool):
            raise bad(key, "true or false")
    if values["act_group_aware"] and values["desc_act"]:
        raise InputError(f"{source}: act_group_aware = true needs desc_act = false (group-aware ordering replaces act-order)")
    if values["act_group_aware"] and values["group_size"] == -1:
        raise bad("act_group_aware", "false with group_size -1 (group-aware ordering needs groups)")

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    d = values["damp_percent"]
    if not is_num(d) or not 0 < d < 1:
        raise bad("damp_percent", "a number between 0 and 1 (exclusive), e.g. 0.01")
    if not is_num(values["damp_auto_increment"]) or not 0 <= values["damp_auto_increment"] < 1:
        raise bad("damp_auto_increment", "a number from 0 (no retry) to below 1, e.g. 0.01")
    if not is_num(values["mse"]) or not (values["mse"] == 0 or 1 <= values["mse"] <= 4):
        raise bad("mse", "0 (min/max scales) or the error norm of the clipping search, 1 to 4 (e.g. 2.4)")
    if not is_int(values["mse_grid"]) or not 5 <= values["mse_grid"] <= 1000:
        raise bad("mse_grid", "an integer from 5 to 1000: the clipping search's steps per unit of range (gptqmodel's own: 100)")
    if not is_int(values["samples"]) or values["samples"] < 1:
        raise bad("samples", "a positive integer (calibration samples)")
    if not is_int(values["seq_len"]) or values["seq_len"] < 8:
        raise bad("seq_len", "an integer >= 8 (tokens per calibration sample)")
    if not isinstance(values["branch"], str) or not _BRANCH_RE.match(values["branch"]):
        raise bad("branch", "a git branch name of letters, digits, '.', '_' or '-'")


def _resolve_file(name_or_path: str) -> tuple[Path, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        return path, path.stem
    candidate = presets_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise InputError(
            f"{name_or_path}: unknown GPTQ preset; choose one of {', '.join(list_presets()) or '(none found)'} "
            "or pass a YAML file with --config"
        )
    return candidate, name_or_path


def load_preset(name_or_path: str, overrides: dict[str, Any] | None = None) -> GPTQPreset:
    """A built-in preset by name or a user YAML file, with optional overrides, validated.

    A user file may start from another preset with `base: <name>` and change only some fields;
    without `base` it starts from the default preset. Changing bits/group_size/desc_act/sym
    without giving a branch re-derives the branch name so variants never share a branch.
    """
    path, name = _resolve_file(name_or_path)
    data = _read_yaml(path)
    flat = _flatten(data, str(path))
    builtin = path.resolve().parent == presets_dir().resolve()
    values: dict[str, Any]
    if builtin:
        missing = [k for k in FIELDS if k not in flat]
        if missing:
            raise InputError(f"{path}: preset is missing {missing[0]!r}; built-in presets must set every field")
        values = dict(flat)
    else:
        base = data.get("base", DEFAULT_PRESET)
        if not isinstance(base, str) or Path(base).suffix in (".yaml", ".yml") or "/" in base:
            raise InputError(f"{path}: base must name a built-in preset ({', '.join(list_presets())})")
        values = load_preset(base).to_dict()
        values.pop("name")
        derived = values["branch"] == branch_name(values["bits"], values["group_size"], values["desc_act"], values["act_group_aware"])
        values.update(flat)
        if derived and "branch" not in flat and any(k in flat for k in QUANT_FIELDS):
            values["branch"] = None
        name = str(data.get("name", name))
    if overrides:
        clean = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(clean) - set(FIELDS))
        if unknown:
            raise InputError(f"override {unknown[0]!r} is not a GPTQ setting; allowed: {', '.join(FIELDS)}")
        if "branch" not in clean and any(k in clean and clean[k] != values[k] for k in QUANT_FIELDS):
            values["branch"] = None
        values.update(clean)
        source = f"{path} with overrides"
    else:
        source = str(path)
    if values.get("branch") is None:
        values["branch"] = branch_name(values["bits"], values["group_size"], values["desc_act"], values["act_group_aware"])
    _check(values, source)
    for key in ("damp_percent", "damp_auto_increment", "mse"):
        values[key] = float(values[key])
    return GPTQPreset(name=name, **values)
