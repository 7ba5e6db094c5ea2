"""`check_card`: what the Hub would refuse is refused here first, with a one-line reason."""

from __future__ import annotations

import pytest

from hubtool.card import check_card, render_card
from hubtool.errors import CardError
from tests.cardkit import RELEASE, adapter_dir, gguf_dir

GOOD = """---
license: other
license_name: yi-license
license_link: https://huggingface.co/01-ai/Yi-34B-200K/blob/main/LICENSE
base_model: acme/bagel-8k
base_model_relation: quantized
datasets:
- ai2_arc
- datasets/winogrande
language: [en, zh]
tags: [gguf]
inference: false
---
# A card
"""


def card(header: str, body: str = "# Body\n") -> str:
    return f"---\n{header}---\n{body}"


def test_good_card_returns_metadata():
    meta = check_card(GOOD)
    assert meta["license_name"] == "yi-license" and meta["datasets"] == ["ai2_arc", "datasets/winogrande"]


@pytest.mark.parametrize("header,message", [
    ("license: other\n", "license 'other' needs license_name and license_link"),
    ("license: other\nlicense_name: foo\n", "needs license_link"),
    ("license: other\nlicense_link: LICENSE\n", "needs license_name"),
    ("license: my-own\n", "'my-own' is not a Hub license id"),
    ("license: [mit]\n", "license must be one identifier string"),
    ("base_model: /home/me/merged\n", "base_model '/home/me/merged' is a local path"),
    ("base_model: ./out/merged\n", "is a local path"),
    ("base_model: out/merged/fp16\n", "is a local path"),
    ("base_model: C:\\models\\x\n", "is a local path"),
    ("base_model: org/bad name\n", "not a Hub repo id"),
    ("base_model: [org/a, null]\n", "base_model[1] is empty (null)"),
    ("datasets:\n- a/b\n-\n- c/d\n", "datasets[1] is empty (null)"),
    ("tags: [x, 3]\n", "tags[1] must be a non-empty string"),
    ("language: [english]\n", "not an ISO 639 code"),
    ("base_model_relation: quantized\n", "base_model is missing"),
    ("base_model: a/b\nbase_model_relation: quantised\n", "must be one of adapter, merge, quantized, finetune"),
    ("inference: 'no'\n", "inference must be true or false"),
    ("pipeline_tag: Text Generation\n", "must be a lowercase identifier"),
    ("license: [unclosed\n", "invalid YAML front matter"),
])
def test_rejects(header, message):
    with pytest.raises(CardError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as err:
        check_card(card(header), source="x/README.md")
    assert "\n" not in str(err.value) and str(err.value).startswith("x/README.md")


def test_rejects_structure():
    with pytest.raises(CardError, match="must be the first thing"):
        check_card("junk\n" + GOOD)
    with pytest.raises(CardError, match="no text after the header"):
        check_card(card("license: mit\n", body="\n"))
    with pytest.raises(CardError, match="empty or invalid YAML header"):
        check_card("---\n---\n# empty header\n")
    with pytest.raises(CardError, match="must be the first thing"):
        check_card("# no header\n")
    with pytest.raises(CardError, match="looks like a Hugging Face token"):
        check_card(card("license: mit\n", body="token hf_" + "a" * 34 + "\n"))


def test_render_rejects_local_base_model(tmp_path):
    with pytest.raises(CardError, match="base_model '/models/merged' is a local path; pass the Hub repo id"):
        render_card("gguf", gguf_dir(tmp_path), overrides={"base_model": "/models/merged"}, release=RELEASE)
    # the adapter's own adapter_config.json points at a local folder: a clear error unless the user names the base
    with pytest.raises(CardError, match="adapter_config.json: base_model_name_or_path '/home/me/models/llama-65b' is a local path"):
        render_card("adapter", adapter_dir(tmp_path))
    assert "base_model: org/base" in render_card("adapter", adapter_dir(tmp_path), overrides={"base_model": "org/base"})
    with pytest.raises(CardError, match="release repos.fp16: '../merged' is not a Hub repo id"):
        render_card("gguf", gguf_dir(tmp_path), release={"repos": {"fp16": "../merged"}})


def test_render_rejects_bad_license_from_release_config(tmp_path):
    with pytest.raises(CardError, match="license 'other' needs license_link"):
        render_card("gguf", gguf_dir(tmp_path), meta={"license": "other", "license_name": "x"}, release=RELEASE)


def test_card_check_is_linear_in_header_size(monkeypatch):
    """A 20 000-tag header (0.28 MB): parsed by libyaml, and huggingface_hub's quadratic list dedup
    (`_to_unique_list`, a membership loop) only ever sees a bounded sample; bench/card_check.py times it."""
    import huggingface_hub.repocard_data as rd

    from hubtool.card import check_card
    from hubtool.yamlfile import FastBoundedSafeLoader

    seen = []
    real = rd._to_unique_list
    monkeypatch.setattr(rd, "_to_unique_list", lambda tags: seen.append(len(tags or [])) or real(tags))
    tags = "".join(f"- tag-{i:06d}\n" for i in range(20000))
    meta = check_card(f"---\nlicense: mit\ntags:\n{tags}---\n# Model\n\nText.\n")
    assert len(meta["tags"]) == 20000 and seen and max(seen) <= 256
    import yaml

    assert issubclass(FastBoundedSafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))
