"""Header as data: carry-over from real cards, hostile values, overrides, prompt/RoPE facts."""

from __future__ import annotations

import pytest
import yaml

from hubtool.card import check_card, parse_overrides, render_card, split_release_config
from hubtool.card.facts import rope_facts
from hubtool.card.metadata import dump_header
from hubtool.card.prompt_format import PROMPT_TEMPLATES, detect_prompt_format
from hubtool.errors import CardError
from hubtool.frontmatter import read_front_matter, split_front_matter
from tests.cardkit import CHATML, EXAMPLE_CARDS, RELEASE, gguf_dir, gptq_dir

HOSTILE = [
    "org/name: with colon",
    "it's \"quoted\" 'both' ways",
    "line one\nline two\n---\nlicense: mit",
    "{{ 7 * 7 }}",
    "{% for x in range(3) %}loop{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "ünïcødé 数据集 🤗",
    "# not a comment",
    "- not a list",
    "key: [1, 2]",
    "&anchor *alias !!python/object:os.system",
    "trailing newline\n",
    "",
]


def test_example_cards_are_in_the_repo():
    assert len(EXAMPLE_CARDS) == 3


@pytest.mark.parametrize("card", EXAMPLE_CARDS, ids=lambda p: p.name.split(".README")[0])
@pytest.mark.parametrize("kind,make", [("gptq", gptq_dir), ("gguf", gguf_dir)])
def test_example_cards_carry_license_and_datasets(card, kind, make, tmp_path):
    source, source_body = read_front_matter(card)
    assert source.get("datasets"), "every example card declares datasets"
    text = render_card(kind, make(tmp_path), release={**RELEASE, "source_card": str(card)})
    meta, body = split_front_matter(text)
    assert meta["datasets"] == [d.strip() for d in source["datasets"]]
    for key in ("license", "license_name", "license_link"):
        assert meta.get(key) == source.get(key)
    assert meta["base_model"] == RELEASE["repos"]["fp16"]
    assert meta["base_model_relation"] == "quantized" and meta["inference"] is False
    assert "## Original model card" in body and source_body.strip().splitlines()[0] in body
    assert check_card(text) == meta


def test_junk_before_front_matter_is_skipped(tmp_path):
    airoboros = next(p for p in EXAMPLE_CARDS if p.name.startswith("airoboros"))
    text = airoboros.read_text(encoding="utf-8")
    assert not text.startswith("---")  # the card really starts with "user's picture" junk
    meta = split_front_matter(render_card("gguf", gguf_dir(tmp_path), release={**RELEASE, "source_card": str(airoboros)}))[0]
    assert meta["datasets"] == ["jondurbin/airoboros-gpt4-1.4.1"]
    assert "license" not in meta


def test_hostile_metadata_renders_valid_yaml_and_runs_no_template_code(tmp_path):
    long_list = [f"org/ds-{i}: {HOSTILE[i % len(HOSTILE)]}" for i in range(500)]
    meta = {
        "model_name": "{{ 7 * 7 }} name: 'x' \"y\"\n{% raw %}",
        "datasets": [h for h in HOSTILE if h] + long_list,
        "tags": [f"tag-{i}-{{{{ i }}}}" for i in range(500)],
        "quantized_by": "{% include 'gguf.md.j2' %}",
        "description": "{{ cycler.__init__.__globals__ }} and {% set x = 1 %}",
        "custom_field": {"nested": HOSTILE[:6], "n": 3},
        "license": "apache-2.0",
    }
    text = render_card("gguf", gguf_dir(tmp_path), meta=meta, release=RELEASE)
    parsed, body = split_front_matter(text)
    for key in ("model_name", "datasets", "tags", "quantized_by", "custom_field"):
        assert parsed[key] == meta[key], key
    assert len(parsed["datasets"]) == 512 and len(parsed["tags"]) == 500
    assert check_card(text) == parsed
    from huggingface_hub import ModelCard

    assert ModelCard(text).data.to_dict()["datasets"] == meta["datasets"]
    # nothing was evaluated: literal braces survive, no 49, no leaked globals
    assert "49" not in body
    assert "{{ cycler.__init__.__globals__ }} and {% set x = 1 %}" in body
    assert "{{ 7 * 7 }} name:" in body  # title, flattened to one line
    assert "os.system" not in body and "<built-in" not in text


@pytest.mark.parametrize("value", HOSTILE)
def test_header_round_trip_single_value(value):
    meta = {"model_name": value, "datasets": [value or "x", "ok/ds"], "nested": {"k": [value]}}
    text = dump_header(meta) + "\nbody\n"
    assert split_front_matter(text)[0] == meta
    assert yaml.safe_load(dump_header(meta).strip("-\n")) == meta


def test_parse_overrides():
    got = parse_overrides(["license=apache-2.0", "datasets=[a/b, 'c: d']", "inference=false",
                           "license_link=https://x.org/L?a=b", "tags=null", "model_name= a = b "])
    assert got == {"license": "apache-2.0", "datasets": ["a/b", "c: d"], "inference": False,
                   "license_link": "https://x.org/L?a=b", "tags": None, "model_name": "a = b"}
    with pytest.raises(CardError, match="expected key=value"):
        parse_overrides(["license"])
    with pytest.raises(CardError, match="not a valid list"):
        parse_overrides(["datasets=[a, b"])


def test_release_config_split():
    meta, release = split_release_config({"license": "mit", "repos": {"fp16": "a/b"}, "gguf_files": [], "tags": ["x"]})
    assert meta == {"license": "mit", "tags": ["x"]} and release == {"repos": {"fp16": "a/b"}, "gguf_files": []}


@pytest.mark.parametrize("name,template", [
    ("chatml", CHATML),
    ("llama-3", "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}"),
    ("llama-2", "{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content + ' [/INST]' }}"),
    ("mistral", "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"),
    ("vicuna", "{% for m in messages %}{{ 'USER: ' if m.role == 'user' else 'ASSISTANT: ' }}{{ m.content }}{% endfor %}"),
    ("alpaca", "{% for m in messages %}### Instruction:\n{{ m.content }}\n\n### Response:\n{% endfor %}"),
    ("zephyr", "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>{% endfor %}<|user|><|assistant|>"),
    ("gemma", "<start_of_turn>user\n{{ m }}<end_of_turn>"),
    (None, "{{ messages[0].content }}"),
    (None, None),
])
def test_detect_prompt_format(name, template):
    assert detect_prompt_format(template) == name
    if name:
        assert name in PROMPT_TEMPLATES


def test_prompt_format_from_meta_and_unknown_name(tmp_path):
    d = gguf_dir(tmp_path)
    meta = split_front_matter(render_card("gguf", d, meta={"prompt_format": "alpaca"}, release=RELEASE))[0]
    assert meta["prompt_template"] == PROMPT_TEMPLATES["alpaca"]
    with pytest.raises(CardError, match="unknown prompt_format 'alpacca'"):
        render_card("gguf", d, overrides={"prompt_format": "alpacca"}, release=RELEASE)


@pytest.mark.parametrize("config,expected", [
    ({"max_position_embeddings": 8192, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}, (8192, 2048, "linear")),
    ({"max_position_embeddings": 2048, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, (2048, 1024, "dynamic")),
    ({"max_position_embeddings": 32768, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, (131072, 32768, "yarn")),
    ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}, (131072, 8192, "llama3")),
])
def test_rope_facts(config, expected):
    rope = rope_facts(config)
    assert (rope["effective_context"], rope["base_context"], rope["type"]) == expected


def test_rope_facts_none_for_plain_rope():
    assert rope_facts({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) is None
    assert rope_facts({"max_position_embeddings": 4096}) is None
    assert rope_facts({"rope_scaling": {"type": "linear", "factor": 1.0}}) is None


def test_python_callers_may_pass_tuples(tmp_path):
    meta = split_front_matter(render_card("gguf", gguf_dir(tmp_path), meta={"datasets": ("a/b", "c/d")}, release=RELEASE))[0]
    assert meta["datasets"] == ["a/b", "c/d"]
