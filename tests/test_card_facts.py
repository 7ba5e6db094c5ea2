"""Facts read from real artifact files: a GGUF written with the gguf library, a saved tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest

from hubtool.card import render_card
from hubtool.card.facts import model_facts
from hubtool.frontmatter import split_front_matter
from tests.extras import require_extra


def write_gguf(path, *, chat_template: str) -> None:
    gguf = require_extra("gguf", "gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(8192)
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(4.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_chat_template(chat_template)
    w.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    w.add_tensor("output.weight", np.zeros((32, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_only_folder(tmp_path):
    d = tmp_path / "tiny-GGUF"
    d.mkdir()
    write_gguf(d / "tiny.gguf", chat_template="{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}")
    facts = model_facts(d)
    (f,) = facts["gguf_files"]
    assert f["type"] == "F16"  # from general.file_type: the file name says nothing
    size = (d / "tiny.gguf").stat().st_size
    # over tensor data, as llama.cpp and quality.json count it: the file's tokenizer/metadata bytes are not weights
    assert f["bits_per_weight"] == 16.0 and size * 8 / (2 * 32 * 64) > 16
    assert facts["config"]["max_position_embeddings"] == 8192 and facts["config"]["num_key_value_heads"] == 2
    text = render_card("gguf", d, release={"repos": {"fp16": "acme/tiny", "gguf": "acme/tiny-GGUF"}})
    meta, body = split_front_matter(text)
    assert meta["prompt_template"].startswith("<|im_start|>system")  # chat template read from GGUF metadata
    assert "**linear** RoPE scaling with factor **4**: the effective context is **8192 tokens**" in body
    kv = 2 * 2 * 8192 * 2 * 16 * 2  # K+V, layers, ctx, kv heads, head dim, f16
    assert f"| tiny.gguf | F16 |" in body and f"{(size + kv) / 1e6:.2f} MB" in body


def test_tiny_llama_merged_card(tiny_llama):
    text = render_card("merged", tiny_llama, meta={"base_model": "acme/tiny-base", "license": "apache-2.0"})
    meta, body = split_front_matter(text)
    assert meta["prompt_template"].startswith("<|im_start|>system")  # from chat_template.jinja saved by transformers
    assert meta["base_model_relation"] == "finetune" and meta["library_name"] == "transformers"
    assert "## Context length and RoPE scaling" not in body and "--max-model-len 256" in body


def test_split_and_imatrix_gguf_files(tmp_path):
    from tests.cardkit import LLAMA_CONFIG, model_folder

    files = {f"m.Q4_K_M-0000{i}-of-00003.gguf": b"\0" * 100 * i for i in (1, 2, 3)}
    files.update({"m.Q8_0.gguf": b"\0" * 50, "m.imatrix.gguf": b"\0" * 10})
    d = model_folder(tmp_path, "m-GGUF", config=LLAMA_CONFIG, files=files)
    rows = model_facts(d)["gguf_files"]
    assert [(r["file"], r["type"], r["size_bytes"], r["parts"]) for r in rows] == [
        ("m.Q4_K_M-00001-of-00003.gguf", "Q4_K_M", 600, 3), ("m.Q8_0.gguf", "Q8_0", 50, 1)]
    body = split_front_matter(render_card("gguf", d, release={"repos": {"gguf": "acme/m-GGUF"}}))[1]
    assert "| m.Q4_K_M-00001-of-00003.gguf (+2 parts) | Q4_K_M |" in body and "imatrix" not in body
    assert "hf download acme/m-GGUF --include 'm.Q4_K_M-*-of-00003.gguf' --local-dir ." in body
    assert "llama-cli -m m.Q4_K_M-00001-of-00003.gguf -c 8192" in body
    assert "Split models: download every part" in body


def test_gptq_folder_from_hubtool_quantize(tmp_path):
    """hubtool's quantize step records branch and calibration in quantize_config.json; the card uses them."""
    from tests.cardkit import gptq_dir, write_json

    d = gptq_dir(tmp_path)
    write_json(d / "quantize_config.json", {
        "bits": 4, "group_size": 32, "desc_act": True, "damp_percent": 0.05, "quant_method": "gptq",
        "meta": {"branch": "gptq-4bit-32g-actorder_True", "calibration": {
            "source": "builtin", "description": "hubtool built-in calibration text", "samples": 128, "seq_len": 1024}},
    })
    facts = model_facts(d)["gptq"]
    assert facts["branch"] == "gptq-4bit-32g-actorder_True" and facts["seq_len"] == 1024
    release = {"repos": {"gptq": "acme/x-GPTQ"}, "gptq_variants": [
        {"branch": "main", "bits": 8, "group_size": 128, "desc_act": False},
        {"branch": "gptq-4bit-32g-actorder_True", "bits": 4}]}
    body = split_front_matter(render_card("gptq", d, release=release))[1]
    assert "| gptq-4bit-32g-actorder_True | 4 | 32 | Yes | 0.05 | hubtool built-in calibration text | 1024 | 4.10 KB |" in body
    assert "| main | 8 | 128 | No | - | - | - | - |" in body


def test_gptq_card_names_clipping_search_and_group_aware_order(tmp_path):
    """Issue 18: options that change how the weights were chosen (not their layout) are said in the card."""
    from tests.cardkit import LLAMA_CONFIG, gptq_dir, write_json

    d = gptq_dir(tmp_path)
    qc = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True,
          "damp_percent": 0.05, "damp_auto_increment": 0.01, "mse": 2.4, "act_group_aware": False}
    write_json(d / "quantize_config.json", {**qc, "meta": {"branch": "gptq-4bit-32g-actorder_True"}})
    write_json(d / "config.json", {**LLAMA_CONFIG, "quantization_config": qc})  # as `hubtool quantize gptq` writes both
    release = {"repos": {"gptq": "acme/x-GPTQ"}, "gptq_variants": [
        {"branch": "main", "bits": 4, "group_size": 32, "desc_act": True},
        {"branch": "gptq-4bit-32g-gar", "bits": 4, "group_size": 32, "desc_act": False, "mse": 2.4, "act_group_aware": True},
        {"branch": "gptq-8bit-128g-actorder_True", "bits": 8, "group_size": 128, "desc_act": True, "mse": 0.0}]}
    body = split_front_matter(render_card("gptq", d, release=release))[1]
    assert "- main: each group's scale picked by GPTQModel's clipping search (least mean |error|^2.4, not plain min/max)." in body
    assert ("- gptq-4bit-32g-gar: each group's scale picked by GPTQModel's clipping search (least mean |error|^2.4, not plain "
            "min/max); group-aware act-order") in body
    assert "gptq-8bit-128g-actorder_True:" not in body  # plain GPTQ: no note
    plain = split_front_matter(render_card("gptq", gptq_dir(tmp_path / "plain")))[1]
    assert "How the weights were chosen" not in plain
