"""The card's YAML header as data: carry-over, merging, Hub rules, and safe serialization.

The header is never assembled as text in a template: values such as dataset ids with colons,
quotes, newlines or `{{ }}` must reach the Hub exactly as given, and only a YAML emitter gets
quoting right for all of them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from hubtool.artifacts import ArtifactKind
from hubtool.errors import CardError

KINDS = tuple(k.value for k in ArtifactKind)  # what a card can describe: the release's artifact kinds
QUANT_KINDS = (ArtifactKind.GPTQ.value, ArtifactKind.GGUF.value)

# Header fields a derivative inherits from the source model's card: terms of use and provenance.
CARRY_KEYS = ("license", "license_name", "license_link", "datasets", "language", "tags")

# Keys of a release config that steer rendering but are not header fields.
RELEASE_KEYS = ("repos", "gptq_variants", "gguf_files", "source_card", "hub_url")
OPTION_KEYS = ("prompt_format", "system_message", "description", "embed_original", "context_length") + RELEASE_KEYS

# Header keys in the order people read them; unknown keys follow in insertion order.
KEY_ORDER = (
    "model_name", "base_model", "base_model_relation", "license", "license_name", "license_link",
    "datasets", "language", "library_name", "pipeline_tag", "tags", "inference", "quantized_by",
    "prompt_template",
)
LIST_KEYS = ("base_model", "datasets", "language", "tags", "metrics")
RELATIONS = ("adapter", "merge", "quantized", "finetune")

# License identifiers the Hub accepts (https://huggingface.co/docs/hub/repositories-licenses).
KNOWN_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0
odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3
llama4 gemma unknown other
""".split())

_REPO_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]+$")
_LANG = re.compile(r"^(?:[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*|multilingual)$")
_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def looks_like_local_path(value: str) -> bool:
    """True for things that name a folder on this machine rather than a Hub repo."""
    return (
        value.startswith(("/", "./", "../", "~", "\\"))
        or value in (".", "..")
        or "\\" in value
        or bool(re.match(r"^[A-Za-z]:[\\/]", value))
        or value.count("/") > 1
    )


def is_repo_id(value: str) -> bool:
    """A Hub repo id: `name` or `namespace/name`, no `..`/`--`, no leading/trailing separators."""
    if looks_like_local_path(value) or not _REPO_ID.match(value) or len(value) > 96:
        return False
    if ".." in value or "--" in value:
        return False
    return all(part and part[0] not in "-." and part[-1] not in "-." for part in value.split("/"))


def parse_overrides(items: list[str] | None, *, source: str = "--set") -> dict[str, Any]:
    """`key=value` pairs from the command line; `[a, b]` is a list, true/false a bool, else text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CardError(f"{source} {item!r}: expected key=value, e.g. --set license=apache-2.0")
        value = value.strip()
        if value.startswith("["):
            try:
                from hubtool.yamlfile import load_yaml_text

                parsed = load_yaml_text(value)
            except yaml.YAMLError:
                raise CardError(f"{source} {key}: {value!r} is not a valid list; write [a, b] or quote items with colons") from None
            out[key] = parsed
        elif value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
        elif value.lower() in ("null", "none", ""):
            out[key] = None
        else:
            out[key] = value
    return out


def split_release_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A release.yaml mixes header fields and release facts; return (meta, release)."""
    meta = {k: v for k, v in config.items() if k not in RELEASE_KEYS}
    release = {k: v for k, v in config.items() if k in RELEASE_KEYS}
    return meta, release


def carried(source_meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a source card's header a derivative keeps (license terms, datasets, language, tags)."""
    out = {k: source_meta[k] for k in CARRY_KEYS if source_meta.get(k) not in (None, "", [])}
    for key, value in out.items():  # cards in the wild carry stray spaces ("org/ds ") and blank "- " items
        if isinstance(value, str):
            out[key] = value.strip()
        elif isinstance(value, list):
            out[key] = [v.strip() if isinstance(v, str) else v for v in value if v not in (None, "")]
    if isinstance(out.get("tags"), list):
        # `base_model:<relation>:<id>` tags are the Hub's own bookkeeping for the *source* card's base
        # (PEFT writes them, sometimes with a local path); the Hub derives ours from base_model.
        out["tags"] = [t for t in out["tags"] if not (isinstance(t, str) and t.startswith("base_model:"))]
        if not out["tags"]:
            del out["tags"]
    return out


def _base_model_tag_path(tag: str) -> str | None:
    """The local path inside a `base_model:[relation:]<id>` tag, if it holds one."""
    if not tag.startswith("base_model:"):
        return None
    rest = tag[len("base_model:"):]
    head, sep, tail = rest.partition(":")
    target = tail if sep and head in ("adapter", "finetune", "merge", "quantized") else rest
    return target if looks_like_local_path(target) else None


def merge_metadata(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win key by key; an explicit None removes a key (so `--set tags=null` drops tags)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
    return out


def _plain(value: Any) -> Any:
    """Tuples (from Python callers) as lists, so the YAML emitter and the Hub see plain sequences."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def header_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop rendering options, then order keys the way readers expect."""
    fields = {k: _plain(v) for k, v in meta.items() if k not in OPTION_KEYS}
    ordered = {k: fields[k] for k in KEY_ORDER if k in fields}
    ordered.update((k, v) for k, v in fields.items() if k not in ordered)
    return ordered


class _CardDumper(yaml.SafeDumper):
    """safe_dump with readable multi-line strings (literal blocks where YAML allows them)."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # A literal block ending in a newline loses it when it is the header's last value: the Hub's
    # header regex eats the newlines before the closing '---'. Such strings are double-quoted.
    style = None
    if "\n" in value:
        style = '"' if value.endswith("\n") else "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CardDumper.add_representer(str, _str_representer)


def dump_header(meta: dict[str, Any], *, source: str = "README.md") -> str:
    """`---\\n<yaml>---\\n` for a header dict, through the YAML emitter only."""
    try:
        text = yaml.dump(meta, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=4096, default_flow_style=False)
    except yaml.YAMLError as exc:
        raise CardError(f"{source}: metadata cannot be written as YAML ({exc}); use plain strings, numbers, lists and mappings") from None
    return f"---\n{text}---\n"


def validate_metadata(meta: dict[str, Any], *, source: str = "README.md") -> None:
    """Our Hub rules on top of ModelCardData: raise CardError naming the field and the fix."""
    for key in LIST_KEYS:
        if key not in meta:
            continue
        value = meta[key]
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if item is None:
                raise CardError(f"{source}: {key}[{i}] is empty (null); remove the blank '- ' entry from {key}")
            if not isinstance(item, str) or not item.strip():
                raise CardError(f"{source}: {key}[{i}] must be a non-empty string, got {item!r}")
    for tag in meta.get("tags") or [] if isinstance(meta.get("tags"), list) else []:
        path = _base_model_tag_path(tag) if isinstance(tag, str) else None
        if path is not None:
            raise CardError(f"{source}: tag {tag!r} names a local path ({path}); remove it (the Hub derives base_model tags from base_model)")
    license_ = meta.get("license")
    if license_ is not None:
        if not isinstance(license_, str):
            raise CardError(f"{source}: license must be one identifier string, got {license_!r}")
        if license_ not in KNOWN_LICENSES:
            raise CardError(f"{source}: license {license_!r} is not a Hub license id; use license: other with license_name and license_link")
        if license_ == "other":
            missing = [k for k in ("license_name", "license_link") if not meta.get(k)]
            if missing:
                raise CardError(f"{source}: license 'other' needs {' and '.join(missing)}; add them (e.g. license_name: my-license, license_link: LICENSE)")
    name = meta.get("license_name")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name)):
        raise CardError(f"{source}: license_name {name!r} must be lowercase letters, digits, '.', '_' or '-' (e.g. yi-license)")
    link = meta.get("license_link")
    if link is not None and (not isinstance(link, str) or not link.strip() or "\n" in link):
        raise CardError(f"{source}: license_link must be a URL or a file in the repo (e.g. LICENSE), got {link!r}")
    bases = meta.get("base_model")
    for base in bases if isinstance(bases, list) else ([bases] if bases is not None else []):
        if looks_like_local_path(base):
            raise CardError(f"{source}: base_model {base!r} is a local path; set base_model to the Hub repo id (--set base_model=org/name, or card: {{base_model: org/name}} in release.yaml)")
        if not is_repo_id(base):
            raise CardError(f"{source}: base_model {base!r} is not a Hub repo id; use namespace/name")
    relation = meta.get("base_model_relation")
    if relation is not None:
        if relation not in RELATIONS:
            raise CardError(f"{source}: base_model_relation {relation!r} must be one of {', '.join(RELATIONS)}")
        if not bases:
            raise CardError(f"{source}: base_model_relation is set but base_model is missing; add base_model: org/name")
    langs = meta.get("language")
    for lang in langs if isinstance(langs, list) else ([langs] if langs is not None else []):
        if not _LANG.match(lang):
            raise CardError(f"{source}: language {lang!r} is not an ISO 639 code (e.g. en, fr, zh)")
    for key in ("model_name", "library_name", "pipeline_tag", "quantized_by", "prompt_template"):
        if key in meta and not isinstance(meta[key], str):
            raise CardError(f"{source}: {key} must be a string, got {meta[key]!r}")
    for key in ("library_name", "pipeline_tag"):
        if key in meta and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", meta[key]):
            raise CardError(f"{source}: {key} {meta[key]!r} must be a lowercase identifier (e.g. transformers, text-generation)")
    if "inference" in meta and not isinstance(meta["inference"], (bool, dict)):
        raise CardError(f"{source}: inference must be true or false, got {meta['inference']!r}")


def check_no_token(text: str, *, source: str = "README.md") -> None:
    """A Hub token must never be published in a card."""
    if _TOKEN.search(text):
        raise CardError(f"{source}: contains what looks like a Hugging Face token (hf_...); remove it before publishing")


def model_index(model_name: str, rows: list[dict[str, Any]], *, text: str | None, context: int | None,
                tokens: int | None, reference: str = "fp16") -> list[dict[str, Any]]:
    """Measured quality rows as the Hub's `model-index` (built with huggingface_hub's own EvalResult).

    One result per measured variant: perplexity on the held-out text, and for quants the KL divergence
    and top-1 agreement against the REFERENCE model, so leaderboards and tools read the numbers as data.
    """
    from huggingface_hub import EvalResult
    from huggingface_hub.repocard_data import eval_results_to_model_index

    args = {k: v for k, v in (("context", context), ("tokens", tokens)) if v}  # how it was measured
    dataset = {"dataset_type": str(text or "held-out text"), "dataset_name": f"held-out text ({text})" if text else "held-out text",
               "dataset_args": args or None}
    results = []
    for row in rows:
        label = str(row.get("variant") or reference)
        metrics = [("perplexity", row.get("perplexity"), f"Perplexity ({label})")]
        if row.get("kind") in QUANT_KINDS:
            metrics += [("kl_divergence", row.get("kl_div"), f"KL divergence vs {reference} ({label})"),
                        ("top1_agreement", row.get("top1"), f"Top-1 agreement with {reference} ({label})")]
        for metric_type, value, name in metrics:
            if value is None:
                continue
            results.append(EvalResult(task_type="text-generation", task_name="Text Generation", metric_type=metric_type,
                                      metric_value=float(f"{float(value):.6g}"), metric_name=name, **dataset))
    return eval_results_to_model_index(model_name, results) if results else []


def validate_model_index(meta: dict[str, Any], *, source: str = "README.md") -> None:
    """`model-index` the Hub can read: a list of {name, results: [{task.type, dataset.type/name, metrics}]}."""
    import math

    index = meta.get("model-index")
    if index is None:
        return
    if not isinstance(index, list) or not index:
        raise CardError(f"{source}: model-index must be a non-empty list of {{name, results}}; fix or remove it")
    for i, entry in enumerate(index):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise CardError(f"{source}: model-index[{i}] needs a name (the model's name)")
        results = entry.get("results")
        if not isinstance(results, list) or not results:
            raise CardError(f"{source}: model-index[{i}].results must be a non-empty list")
        for j, result in enumerate(results):
            where = f"model-index[{i}].results[{j}]"
            task, dataset, metrics = (result or {}).get("task"), (result or {}).get("dataset"), (result or {}).get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                raise CardError(f"{source}: {where}.task.type is missing; set it (e.g. text-generation)")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) and dataset[k] for k in ("type", "name")):
                raise CardError(f"{source}: {where}.dataset needs a type and a name")
            if not isinstance(metrics, list) or not metrics:
                raise CardError(f"{source}: {where}.metrics must be a non-empty list of {{type, value}}")
            for k, metric in enumerate(metrics):
                value = (metric or {}).get("value") if isinstance(metric, dict) else None
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str):
                    raise CardError(f"{source}: {where}.metrics[{k}].type is missing")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise CardError(f"{source}: {where}.metrics[{k}] ({metric.get('type')}) value must be a finite number, got {value!r}")
