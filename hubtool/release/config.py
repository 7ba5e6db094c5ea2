"""release.yaml: what to publish (name, namespace, quants, presets, GGUF types, repo names, card
metadata), merged with command-line flags and validated before any work starts.

Layout (every key optional; flags win over the file):

    name: my-model                 # repo name stem
    namespace: my-org              # user or org on the Hub
    private: false
    quants: [gptq, gguf]
    gptq: {presets: [gptq-4bit-32g-actorder], samples: 128, seq_len: 2048, calibration: builtin}
    gguf: {types: [q4_k_m, q8_0], tuned: [q4_k_m], calibration: builtin}
                                   # tuned: also publish NAME.Q4_K_M-tuned.gguf, a mix of stock Q4_K_M's size
                                   # chosen by measured sensitivity, with its recipe (hubtool/gguf/mix.py)
    repos: {fp16: "{name}", adapter: "{name}-peft", gptq: "{name}-GPTQ", gguf: "{name}-GGUF"}
    verify: {enabled: true, text: "builtin:heldout", dataset: org/name, max_tokens: 2048, context: 512,
             gates: {min_top1: 0.45, max_kl: 1.0, max_ppl_ratio: 2.0}}   # see hubtool/quality/gates.py
    card: {license: apache-2.0, base_model: org/original, datasets: [...], ...}
    collection: {title: "My model", description: "..."}   # one Hub collection of the repos; `collection: false` for none
    jobs: 2                        # stages at once on this machine (default: min(cores, 2), 1 under 50M params; 1 = in order)
    memory_budget: 16G             # RAM those stages may use together (default: 80 % of what is available)
    serve: {prompts: ["..."], max_tokens: 48}   # serve-check every artifact before publishing (hubtool/serve/); `serve: false` for none
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubtool.errors import InputError

QUANTS = ("gptq", "gguf")
DEFAULT_GGUF_TYPES = ("Q4_K_M", "Q8_0")
DEFAULT_REPOS = {"fp16": "{name}", "adapter": "{name}-peft", "gptq": "{name}-GPTQ", "gguf": "{name}-GGUF"}
TOP_KEYS = {"name", "namespace", "private", "quants", "gptq", "gguf", "repos", "verify", "card", "rope", "max_position_embeddings", "dtype",
            "collection", "jobs", "memory_budget", "serve"}
GPTQ_KEYS = {"presets", "samples", "seq_len", "calibration", "damp_percent", "device"}
GGUF_KEYS = {"types", "split_max_size", "tuned", "calibration"}
VERIFY_KEYS = {"enabled", "text", "dataset", "max_tokens", "context", "rtn", "gates"}
COLLECTION_KEYS = {"title", "description"}
SERVE_KEYS = {"prompts", "max_tokens"}
# Short questions with short answers: the serve check stays cheap, and a sound model ends its turn well within the limit.
DEFAULT_SERVE_PROMPTS = ("What is the capital of France? Answer with one word.", "What is a Python list? Answer in one sentence.")
DEFAULT_SERVE_MAX_TOKENS = 48
MAX_COLLECTION_TITLE = 60  # the Hub's limit


@dataclass
class ReleaseConfig:
    """A validated release: everything that decides which repos get which files."""

    name: str
    namespace: str
    quants: list[str]
    gptq_presets: list[str] = field(default_factory=list)
    gptq_overrides: dict[str, Any] = field(default_factory=dict)
    gptq_calibration: str = "builtin"
    gptq_device: str | None = None
    gguf_types: list[str] = field(default_factory=lambda: list(DEFAULT_GGUF_TYPES))
    gguf_split_max_size: str | None = None
    gguf_tuned: list[str] = field(default_factory=list)  # stock types that also get a tuned mix of their size
    gguf_calibration: str = "builtin"  # the text the tuned mixes' imatrix and sensitivity read
    repo_templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_REPOS))
    private: bool = False
    verify: bool = True
    verify_text: str = "builtin:heldout"
    verify_dataset: str | None = None  # the Hub dataset id cards name for the verify text (else its file name)
    verify_max_tokens: int = 2048
    verify_context: int = 512
    verify_rtn: bool = True
    verify_gates: Any = None  # hubtool.quality.gates.Gates; None = the defaults
    card: dict[str, Any] = field(default_factory=dict)
    rope: str | None = None
    max_position_embeddings: int | None = None
    dtype: str = "float16"
    trust_remote_code: bool = False  # custom-code models (auto_map): only with --trust-remote-code
    collection_title: str | None = None  # the release's Hub collection; None = no collection
    collection_description: str | None = None
    jobs: int | None = None  # stages at once on one machine; None = schedule.default_jobs()
    memory_budget: int | None = None  # bytes those stages may hold together; None = schedule.default_memory_budget()
    serve: bool = True  # serve-check every artifact (greedy answers to serve_prompts) before publishing
    serve_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_SERVE_PROMPTS))
    serve_max_tokens: int = DEFAULT_SERVE_MAX_TOKENS

    def repo_id(self, key: str) -> str:
        """`{namespace}/{name}-GPTQ` etc. from the (configurable) template for repo KEY."""
        return f"{self.namespace}/{self.repo_templates[key].format(name=self.name)}"


def load_yaml(path: Path) -> dict[str, Any]:
    """A release.yaml as a mapping; one-line errors naming the file."""
    from hubtool.yamlfile import read_yaml_mapping

    return read_yaml_mapping(path, what="release config (--config)", example="name: ..., quants: [...]")


def _list(value: Any, what: str, source: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{source}: {what} must be a list of names (or a comma-separated string)")
    return list(dict.fromkeys(value))


def _section(data: dict[str, Any], key: str, allowed: set[str], source: str) -> dict[str, Any]:
    sec = data.get(key) or {}
    if not isinstance(sec, dict):
        raise InputError(f"{source}: '{key}' must be a mapping")
    unknown = sorted(set(sec) - allowed)
    if unknown:
        raise InputError(f"{source}: unknown key '{key}.{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")
    return sec


def _int(value: Any, what: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{source}: {what} = {value!r} must be an integer >= {minimum}")
    return value


def build_config(file_data: dict[str, Any], flags: dict[str, Any], *, default_name: str | None, source: str = "release.yaml") -> ReleaseConfig:
    """File values, then flags (None = not given), validated into a ReleaseConfig."""
    unknown = sorted(set(file_data) - TOP_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown key '{unknown[0]}'; allowed: {', '.join(sorted(TOP_KEYS))}")
    gptq = _section(file_data, "gptq", GPTQ_KEYS, source)
    gguf = _section(file_data, "gguf", GGUF_KEYS, source)
    verify = _section(file_data, "verify", VERIFY_KEYS, source)
    repos = _section(file_data, "repos", set(DEFAULT_REPOS), source)
    card = file_data.get("card") or {}
    if not isinstance(card, dict):
        raise InputError(f"{source}: 'card' must be a mapping of model card fields (license, datasets, ...)")

    def pick(flag: str, value: Any) -> Any:
        return flags[flag] if flags.get(flag) is not None else value

    def where(flag: str | None, key: str) -> str:
        """Where a value came from, for its error: the flag if given, else the file and key."""
        return "--" + flag.replace("_", "-") if flag and flags.get(flag) is not None else f"{source}: {key}"

    from hubtool import options

    name = pick("name", file_data.get("name")) or default_name
    given = flags.get("name") is not None or bool(file_data.get("name"))
    options.check_repo_name(name, source=where("name", "name") if given else "--name (not given: the input folder's name)")
    namespace = pick("namespace", file_data.get("namespace"))
    if not namespace:
        raise InputError("no namespace: pass --namespace ORG or set `namespace:` in release.yaml")
    options.check_repo_name(namespace, source=where("namespace", "namespace"), what="namespace")

    quants = _list(pick("quants", file_data.get("quants", list(QUANTS))), "quants", where("quants", "quants"))
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        raise InputError(f"{where('quants', 'quants')} {bad[0]!r}: choose from {', '.join(QUANTS)}")

    from hubtool.gptq import DEFAULT_PRESET

    presets = _list(pick("gptq_presets", gptq.get("presets", [DEFAULT_PRESET])), "gptq.presets", where("gptq_presets", "gptq.presets"))
    overrides = {k: gptq[k] for k in ("samples", "seq_len", "damp_percent") if k in gptq}
    if flags.get("gptq_samples") is not None:
        overrides["samples"] = flags["gptq_samples"]
    for k in ("samples", "seq_len"):
        if k in overrides:
            _int(overrides[k], f"gptq.{k}", where("gptq_samples", f"gptq.{k}") if k == "samples" else source)
    if "damp_percent" in overrides:
        dp = overrides["damp_percent"]
        if isinstance(dp, bool) or not isinstance(dp, (int, float)) or not 0 < dp < 1:
            raise InputError(f"{source}: gptq.damp_percent = {dp!r} must be a number between 0 and 1 (e.g. 0.01)")

    from hubtool.gguf.types import parse_types

    types = parse_types(pick("gguf_types", gguf.get("types", list(DEFAULT_GGUF_TYPES))), source=where("gguf_types", "gguf.types"))
    tuned = parse_types(pick("gguf_tuned", gguf.get("tuned")) or [], source=where("gguf_tuned", "gguf.tuned")) \
        if (pick("gguf_tuned", gguf.get("tuned")) or []) else []
    from hubtool.gguf.types import FLOAT_TYPES

    floats = [t for t in tuned if t in FLOAT_TYPES]
    if floats:
        raise InputError(f"{where('gguf_tuned', 'gguf.tuned')}: {floats[0]} is not quantized; tuned mixes are for quant types like q4_k_m")
    gguf_calibration = gguf.get("calibration", "builtin")
    if tuned and "gguf" in quants:
        options.check_text_source(gguf_calibration, source=f"{source}: gguf.calibration")
    split_max_size = options.check_split_max_size(gguf.get("split_max_size"), source=f"{source}: gguf.split_max_size")

    templates = dict(DEFAULT_REPOS)
    for key, tmpl in repos.items():
        if not isinstance(tmpl, str) or "/" in tmpl:
            raise InputError(f"{source}: repos.{key} must be a repo name template like '{{name}}-GGUF' (no namespace)")
        try:
            tmpl.format(name=name)
        except (KeyError, IndexError, ValueError):
            raise InputError(f"{source}: repos.{key} {tmpl!r}: only the {{name}} placeholder is supported") from None
        templates[key] = tmpl
    repo_names = [t.format(name=name) for t in templates.values()]
    for key, rn in zip(templates, repo_names):
        options.check_repo_name(rn, source=f"{source}: repos.{key} (with name {name!r})", what="repo name")
    if len(set(repo_names)) != len(repo_names):
        raise InputError(f"{source}: two repos would share a name ({', '.join(repo_names)}); make `repos:` templates distinct")

    private = pick("private", file_data.get("private", False))
    if not isinstance(private, bool):
        raise InputError(f"{source}: private must be true or false")
    enabled = verify.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InputError(f"{source}: verify.enabled must be true or false")
    rtn = verify.get("rtn", True)
    if not isinstance(rtn, bool):
        raise InputError(f"{source}: verify.rtn must be true or false")
    rope = options.check_rope(pick("rope", file_data.get("rope")), source=where("rope", "rope"))
    mpe = options.check_max_position_embeddings(pick("max_position_embeddings", file_data.get("max_position_embeddings")),
                                                source=where("max_position_embeddings", "max_position_embeddings"))
    dtype = options.check_dtype(file_data.get("dtype", "float16"), source=f"{source}: dtype")
    calibration = pick("gptq_calibration", gptq.get("calibration", "builtin"))
    if "gptq" in quants:
        options.check_text_source(calibration, source=where("gptq_calibration", "gptq.calibration"), allow_folder=True)
    verify_text = pick("verify_text", verify.get("text", "builtin:heldout"))
    if enabled:
        options.check_text_source(verify_text, source=where("verify_text", "verify.text"))
    collection_title, collection_description = _collection(file_data.get("collection", True), name, source)
    verify_dataset = pick("verify_dataset", verify.get("dataset"))
    if verify_dataset is not None:
        from hubtool.card.metadata import is_repo_id

        if not isinstance(verify_dataset, str) or not is_repo_id(verify_dataset) or "/" not in verify_dataset:
            raise InputError(f"{where('verify_dataset', 'verify.dataset')} {verify_dataset!r}: use the Hub dataset id the verify text comes from (org/name)")
    from hubtool.quality.gates import gates_from_config

    gates = gates_from_config(verify.get("gates"), source=f"{source}: verify.gates")
    jobs = pick("jobs", file_data.get("jobs"))
    if jobs is not None:
        jobs = options.check_int(jobs, source=where("jobs", "jobs"))
    budget = pick("memory_budget", file_data.get("memory_budget"))
    if budget is not None:
        budget = options.check_memory_budget(budget, source=where("memory_budget", "memory_budget"))
    serve, serve_prompts, serve_max_tokens = _serve(file_data.get("serve", True), source)
    return ReleaseConfig(
        name=name,
        namespace=namespace,
        quants=quants,
        gptq_presets=presets if "gptq" in quants else [],
        gptq_overrides=overrides,
        gptq_calibration=str(calibration),
        gptq_device=gptq.get("device"),
        gguf_types=types if "gguf" in quants else [],
        gguf_split_max_size=split_max_size,
        gguf_tuned=tuned if "gguf" in quants else [],
        gguf_calibration=str(gguf_calibration),
        repo_templates=templates,
        private=private,
        verify=enabled,
        verify_text=str(verify_text),
        verify_dataset=verify_dataset,
        verify_max_tokens=_int(verify.get("max_tokens", 2048), "verify.max_tokens", source, 16),
        verify_context=_int(verify.get("context", 512), "verify.context", source, 8),
        verify_rtn=rtn,
        verify_gates=gates,
        card=dict(card),
        rope=rope,
        max_position_embeddings=mpe,
        dtype=dtype,
        trust_remote_code=bool(flags.get("trust_remote_code")),
        collection_title=collection_title,
        collection_description=collection_description,
        jobs=jobs,
        memory_budget=budget,
        serve=serve,
        serve_prompts=serve_prompts,
        serve_max_tokens=serve_max_tokens,
    )


def _switch(key: str, value: Any, allowed: set[str], keys_text: str, source: str) -> dict | None:
    """A section that is on/off or a mapping of options: None when false; {} when true or absent; the
    mapping itself after its keys are checked."""
    if value is False:
        return None
    if value is True or value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{source}: {key} must be true, false or a mapping with {keys_text}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InputError(f"{source}: unknown key '{key}.{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")
    return value


def _serve(value: Any, source: str) -> tuple[bool, list[str], int]:
    """`serve:` as (on, prompts, max_tokens): true (the default) or a mapping turns the check on, false off."""
    value = _switch("serve", value, SERVE_KEYS, "prompts / max_tokens", source)
    if value is None:
        return False, list(DEFAULT_SERVE_PROMPTS), DEFAULT_SERVE_MAX_TOKENS
    prompts = value.get("prompts", list(DEFAULT_SERVE_PROMPTS))
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError(f"{source}: serve.prompts must be a non-empty list of prompts (text), e.g. [\"What is the capital of France?\"]")
    max_tokens = _int(value.get("max_tokens", DEFAULT_SERVE_MAX_TOKENS), "serve.max_tokens", source)
    if max_tokens > 4096:
        raise InputError(f"{source}: serve.max_tokens = {max_tokens} is more than 4096; the serve check wants a short answer, use e.g. 48")
    return True, list(dict.fromkeys(p.strip() for p in prompts)), max_tokens


def _collection(value: Any, name: str, source: str) -> tuple[str | None, str | None]:
    """`collection:` as (title, description): true (the default) titles it after the release, false turns it off."""
    value = _switch("collection", value, COLLECTION_KEYS, "title / description", source)
    if value is None:
        return None, None
    title = value.get("title", name[:MAX_COLLECTION_TITLE])
    if not isinstance(title, str) or not title.strip() or len(title) > MAX_COLLECTION_TITLE:
        raise InputError(f"{source}: collection.title must be 1 to {MAX_COLLECTION_TITLE} characters (the Hub's limit)")
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        raise InputError(f"{source}: collection.description must be text")
    return title, description
