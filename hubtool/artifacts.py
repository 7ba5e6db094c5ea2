"""What a release produces: the artifact kinds (one vocabulary for release, cards and the CLI) and the
typed records each release stage hands to the next.

A record is written into its stage's `stage.json` (`to_json`) and read back with `from_dir`, so a
stage that ran in another process, on another machine, or in an earlier run is indistinguishable
from one that just ran here.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

from hubtool.errors import InputError

STAGE_RECORD = "stage.json"
STAGE_OUTPUT = "out"


class ArtifactKind(str, enum.Enum):
    """A published repo's kind: the key of `repos:` in release.yaml, of the card template and of the plan's targets."""

    FP16 = "fp16"
    ADAPTER = "adapter"
    GPTQ = "gptq"
    GGUF = "gguf"

    def __str__(self) -> str:
        return self.value


def artifact_kind(value: str) -> ArtifactKind:
    """A kind from user input; `merged` is accepted as the fp16 kind's older name."""
    try:
        return ArtifactKind("fp16" if value == "merged" else value)
    except ValueError:
        raise InputError(f"{value!r}: not an artifact kind; use one of {', '.join(k.value for k in ArtifactKind)}") from None


# ---- stage records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """Base of every stage's output record: the folder holding its files (`<stage dir>/out`)."""

    folder: Path

    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "folder"}
        return json.loads(json.dumps(data, default=_plain))

    @classmethod
    def from_json(cls, folder: Path, data: Mapping[str, Any]) -> "Record":
        names = {f.name for f in fields(cls)} - {"folder"}
        values = {k: _frozen(v) for k, v in data.items() if k in names}
        return cls(folder=folder, **values)

    @staticmethod
    def from_dir(stage_dir: Path) -> "Record":
        """The record a finished stage left in STAGE_DIR (its stage.json), typed by the stage's kind."""
        path = Path(stage_dir) / STAGE_RECORD
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable stage record ({exc}); delete {stage_dir} and re-run the stage") from None
        record_type = RECORD_TYPES.get(data.get("kind", ""))
        if record_type is None:
            raise InputError(f"{path}: unknown stage kind {data.get('kind')!r}; delete {stage_dir} and re-run the stage")
        return record_type.from_json(Path(stage_dir) / STAGE_OUTPUT, data.get("record") or {})


@dataclass(frozen=True)
class MergedModel(Record):
    """fp16 weights merged from base + adapter (`hubtool merge`)."""

    tensors: int = 0
    merged_modules: int = 0
    bytes_written: int = 0
    rope: Mapping[str, Any] | None = None
    config_changes: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "merge"


@dataclass(frozen=True)
class GPTQVariant(Record):
    """One GPTQ checkpoint (a preset), with what its card needs to describe it."""

    preset: str = ""
    branch: str = ""
    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    damp_percent: float = 0.01
    mse: float = 0.0  # clipping-search norm (0: min/max scales)
    act_group_aware: bool = False
    seq_len: int = 0
    samples: int = 0
    calibration: str = ""
    size_bytes: int = 0

    kind: ClassVar[str] = "gptq"

    def card_row(self, branch: str) -> dict[str, Any]:
        return {"branch": branch, "bits": self.bits, "group_size": self.group_size, "desc_act": self.desc_act,
                "damp_percent": self.damp_percent, "mse": self.mse, "act_group_aware": self.act_group_aware,
                "seq_len": self.seq_len, "size_bytes": self.size_bytes,
                "dataset": self.calibration}


@dataclass(frozen=True)
class GGUFFile:
    """One GGUF file (or one part of a split one) inside a GGUF stage's folder."""

    file: str
    type: str
    size_bytes: int
    bits_per_weight: float | None = None
    shard: int = 1
    shards: int = 1


@dataclass(frozen=True)
class GGUFFiles(Record):
    """The files of one GGUF type (several when split), or the unsplit 16-bit base every type is made from."""

    files: tuple[GGUFFile, ...] = ()

    kind: ClassVar[str] = "gguf"

    @classmethod
    def from_json(cls, folder: Path, data: Mapping[str, Any]) -> "GGUFFiles":
        return cls(folder=folder, files=tuple(GGUFFile(**f) for f in data.get("files") or ()))


@dataclass(frozen=True)
class ReferenceLogits(Record):
    """The fp16 model's log-probs on the held-out windows, every quality row's reference."""

    windows: int = 0
    tokens: int = 0
    vocab: int = 0

    kind: ClassVar[str] = "reference"


@dataclass(frozen=True)
class QualityRow:
    """One measured artifact against the fp16 reference (a GPTQ, RTN or GGUF variant)."""

    kind: str
    variant: str
    perplexity: float | None = None
    ref_perplexity: float | None = None
    kl_div: float | None = None
    top1: float | None = None
    size_bytes: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # what a verifier adds (file, type, bits, tokens, ...)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "QualityRow":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: row.get(k) for k in known}, extra=_frozen({k: v for k, v in row.items() if k not in known}))  # type: ignore[arg-type]

    def as_row(self) -> dict[str, Any]:
        row = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        return {**row, **json.loads(json.dumps(dict(self.extra), default=_plain))}


@dataclass(frozen=True)
class QualityResult(Record):
    """A verification stage's rows plus the context they were measured in (text, windows, tokens)."""

    rows: tuple[QualityRow, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "verify"

    @classmethod
    def from_results(cls, folder: Path, results: Mapping[str, Any]) -> "QualityResult":
        return cls(folder=folder, rows=tuple(QualityRow.from_row(r) for r in results.get("rows") or ()),
                   context=_frozen({k: v for k, v in results.items() if k != "rows"}))

    @classmethod
    def from_json(cls, folder: Path, data: Mapping[str, Any]) -> "QualityResult":
        return cls.from_results(folder, {**(data.get("context") or {}), "rows": data.get("rows") or []})

    def to_json(self) -> dict[str, Any]:
        return {"rows": [r.as_row() for r in self.rows], "context": json.loads(json.dumps(dict(self.context), default=_plain))}

    def as_results(self) -> dict[str, Any]:
        """The quality.json shape the card templates read."""
        return {**json.loads(json.dumps(dict(self.context), default=_plain)), "rows": [r.as_row() for r in self.rows]}


@dataclass(frozen=True)
class ServeSample:
    """One prompt served to one artifact: the greedy answer, why it ended, and what the checks need of it."""

    prompt: str
    answer: str  # the text a user sees (special tokens removed), stripped
    finish: str  # "stop" (an end-of-turn/EOS token within the limit), "length" (max_tokens reached) or "error"
    tokens: int = 0  # tokens generated
    template_tokens: tuple[str, ...] = ()  # chat-template markers found in the raw generated text
    # the fp16 reference only: how decisively it chose each leading word (the smallest log(p top-1 / p runner-up), in
    # nats, of the tokens up to the word's end) and its end-of-turn token (0 when it did not end its turn)
    word_margins: tuple[float, ...] = ()
    stop_margin: float = 0.0
    error: str = ""  # what the server or generate said when there is no answer (finish "error")


@dataclass(frozen=True)
class ServeAnswers(Record):
    """A serve-check stage: one artifact's greedy answers to the release's prompts (`hubtool/serve/`)."""

    artifact: str = ""  # fp16 | adapter | gptq | gguf
    variant: str = ""  # fp16, adapter, the GPTQ preset or the GGUF type
    what: str = ""  # what a person finds it by: a repo id, or a GGUF file name
    bits: float = 16.0  # bits per weight, for the answer-prefix tolerance
    how: str = ""  # the engine that answered (transformers generate, llama.cpp server /v1/chat/completions, ...)
    samples: tuple[ServeSample, ...] = ()

    kind: ClassVar[str] = "serve"

    @classmethod
    def from_json(cls, folder: Path, data: Mapping[str, Any]) -> "ServeAnswers":
        samples = tuple(ServeSample(**{**s, "template_tokens": tuple(s.get("template_tokens") or ()), "word_margins": tuple(s.get("word_margins") or ())})
                        for s in data.get("samples") or ())
        names = {f.name for f in fields(cls)} - {"folder", "samples"}
        return cls(folder=folder, samples=samples, **{k: v for k, v in data.items() if k in names})

    def rows(self) -> list[dict[str, Any]]:
        """quality.json's `samples` rows: artifact, variant, what, prompt, answer, finish, tokens."""
        return [{"artifact": self.artifact, "variant": self.variant, "what": self.what, "prompt": s.prompt, "answer": s.answer,
                 "finish": s.finish, "tokens": s.tokens} for s in self.samples]


RECORD_TYPES: dict[str, type[Record]] = {t.kind: t for t in (MergedModel, GPTQVariant, GGUFFiles, ReferenceLogits, QualityResult, ServeAnswers)}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


class _FrozenDict(dict):
    """A dict that refuses changes, so a frozen record's mapping fields stay what the stage wrote."""

    def _refuse(self, *a: Any, **k: Any) -> None:
        raise TypeError("stage records are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True, default=str))


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _FrozenDict({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
