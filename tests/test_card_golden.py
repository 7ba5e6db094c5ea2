"""Golden cards for each kind: the whole rendered README is compared byte for byte.

Regenerate after an intended template change with HUBTOOL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os

import pytest
import yaml

from hubtool.card import check_card, render_card
from hubtool.frontmatter import split_front_matter
from tests.cardkit import GOLDEN, RELEASE, RESULTS, SAMPLES, adapter_dir, gguf_dir, gptq_dir, merged_dir

META = {"base_model": "huggyllama/llama-65b", "license": "other", "license_name": "llama-license",
        "license_link": "https://huggingface.co/huggyllama/llama-65b/blob/main/LICENSE", "quantized_by": "acme",
        "language": ["en"], "description": "A RoPE-scaled (linear x4, 8k context) fine-tune."}

CASES = {"merged": merged_dir, "adapter": adapter_dir, "gptq": gptq_dir, "gguf": gguf_dir}
SERVED = {**RESULTS, "samples": SAMPLES}  # a release's quality.json: rows and the serve check's answers


@pytest.mark.parametrize("kind", sorted(CASES))
def test_golden(kind, tmp_path):
    model_dir = CASES[kind](tmp_path)
    text = render_card(kind, model_dir, meta=META, results=SERVED, release=RELEASE)
    golden = GOLDEN / f"card_{kind}.md"
    if os.environ.get("HUBTOOL_UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} missing; run with HUBTOOL_UPDATE_GOLDEN=1 to create it"
    assert text == golden.read_text(encoding="utf-8")
    # rendering is a pure function of its inputs
    assert render_card(kind, model_dir, meta=META, results=SERVED, release=RELEASE) == text


@pytest.mark.parametrize("kind", sorted(CASES))
def test_header_round_trips(kind, tmp_path):
    model_dir = CASES[kind](tmp_path)
    text = render_card(kind, model_dir, meta=META, results=RESULTS, release=RELEASE)
    meta, body = split_front_matter(text)
    assert check_card(text) == meta
    again = yaml.safe_load(yaml.safe_dump(meta, allow_unicode=True))
    assert again == meta
    from huggingface_hub import ModelCard

    assert ModelCard(text).data.to_dict() == meta
    # a source README is quoted under "Original model card" exactly when the folder has one (only the merged case)
    has_source = (model_dir / "README.md").is_file()
    assert has_source == (kind == "merged")
    assert ("## Original model card" in body) == has_source
    assert not body.lstrip().startswith("---")  # the header is not repeated as text


def test_kind_specific_header(tmp_path):
    fp16 = RELEASE["repos"]["fp16"]
    gptq = split_front_matter(render_card("gptq", gptq_dir(tmp_path), meta=META, release=RELEASE))[0]
    gguf = split_front_matter(render_card("gguf", gguf_dir(tmp_path), meta=META, release=RELEASE))[0]
    merged = split_front_matter(render_card("merged", merged_dir(tmp_path), meta=META, release=RELEASE))[0]
    adapter = split_front_matter(render_card("adapter", adapter_dir(tmp_path), meta=META, release=RELEASE))[0]
    # quants point at the merged fp16 repo even though the release config names the original base
    assert gptq["base_model"] == gguf["base_model"] == fp16
    assert gptq["base_model_relation"] == gguf["base_model_relation"] == "quantized"
    assert gptq["inference"] is False and gguf["inference"] is False
    assert "inference" not in merged and "inference" not in adapter
    assert merged["base_model"] == adapter["base_model"] == META["base_model"]
    assert merged["base_model_relation"] == "finetune" and adapter["base_model_relation"] == "adapter"
    assert adapter["library_name"] == "peft" and merged["library_name"] == "transformers"
    assert "gptq" in gptq["tags"] and "4-bit" in gptq["tags"] and "gguf" in gguf["tags"]
    assert merged["prompt_template"].startswith("<|im_start|>system")
    assert adapter["prompt_template"].startswith("{system_message}\nUSER:")
    assert gguf["model_name"] == "bagel-8k"


def test_overrides_beat_release_config_beat_source(tmp_path):
    d = gguf_dir(tmp_path)
    (d / "README.md").write_text("---\nlicense: mit\ndatasets: [a/b]\ntags: [from-source]\n---\nbody\n", encoding="utf-8")
    meta = split_front_matter(render_card("gguf", d, release=RELEASE))[0]
    assert meta["license"] == "mit" and meta["datasets"] == ["a/b"] and meta["tags"] == ["from-source", "gguf"]
    meta = split_front_matter(render_card("gguf", d, meta={"license": "apache-2.0"}, release=RELEASE))[0]
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["a/b"]
    meta = split_front_matter(render_card("gguf", d, meta={"license": "apache-2.0"}, overrides={"license": "cc-by-4.0", "base_model": "org/other", "tags": None}, release=RELEASE))[0]
    assert meta["license"] == "cc-by-4.0" and meta["base_model"] == "org/other" and "tags" not in meta


def test_quality_table_only_shows_own_kind(tmp_path):
    gguf = render_card("gguf", gguf_dir(tmp_path), results=RESULTS, release=RELEASE)
    gptq = render_card("gptq", gptq_dir(tmp_path), results=RESULTS, release=RELEASE)
    assert "| Q8_0 | gguf | 9.81 | +0.10% |" in gguf and "| main | gptq" not in gguf
    assert "| main | gptq | 10.21 | +4.18% | 0.0412 | 91.2% |" in gptq and "Q4_K_M | gguf" not in gptq
    assert "Measured quality" not in render_card("gguf", gguf_dir(tmp_path), release=RELEASE)


def test_sample_output_is_the_cards_own_answer_fenced(tmp_path):
    def section(text: str) -> str:
        return text.split("## Sample output", 1)[1].split("\n## ", 1)[0]

    gguf = section(render_card("gguf", gguf_dir(tmp_path), results=SERVED, release=RELEASE))
    assert "bagel-8k.Q4_K_M.gguf" in gguf and "of items | values" in gguf and "cut at 8 tokens" in gguf  # the recommended file's
    assert "written `[1, 2]`" not in gguf
    gptq = section(render_card("gptq", gptq_dir(tmp_path), results=SERVED, release=RELEASE))
    assert "````text\nUser: What is a Python list?\n\nAssistant: A mutable sequence:\n```\n[1, 2]\n```\n````" in gptq  # longer fence
    merged = section(render_card("merged", merged_dir(tmp_path), results=SERVED, release=RELEASE))
    assert "```text\nUser: What is a Python list?\n\nAssistant: A mutable sequence, written `[1, 2]`.\n```" in merged
    assert "## Sample output" not in render_card("merged", merged_dir(tmp_path / "x"), results=RESULTS, release=RELEASE)


def test_rope_note_and_context(tmp_path):
    text = render_card("merged", merged_dir(tmp_path), release=RELEASE)
    assert "effective context is **8192 tokens** (2048 × 4)" in text
    assert "--max-model-len 8192" in text
    plain = render_card("merged", merged_dir(tmp_path / "p"), overrides={"context_length": "16384"}, release=RELEASE)
    assert "**16384 tokens**" in plain


def test_gptq_facts_from_checkpoint_must_match_release(tmp_path):
    from hubtool.errors import CardError

    bad = {**RELEASE, "gptq_variants": [dict(RELEASE["gptq_variants"][0], bits=8)]}
    with pytest.raises(CardError, match="main bits=8 but the checkpoint's quantization_config says 4"):
        render_card("gptq", gptq_dir(tmp_path), release=bad)
    # without a release list the checkpoint alone fills the table
    text = render_card("gptq", gptq_dir(tmp_path / "x"))
    assert "| main | 4 | 32 | Yes | 0.05 | - | - | 4.10 KB |" in text
