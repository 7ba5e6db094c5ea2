"""Streamed merge vs PEFT's merge_and_unload, RoPE scaling, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubtool.errors import InputError, MergeError
from hubtool.merge import merge_adapter
from tests.peft_helpers import logits, make_adapter, peft_reference

IDS = torch.tensor([[1, 290, 338, 291, 292, 303, 297, 296, 270, 290, 304, 266, 302, 275]])


def _load(path: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def _state(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _assert_matches_peft(base: Path, adapter: Path, merged: Path, vocab: int | None = None) -> None:
    ref = peft_reference(base, adapter, vocab=vocab)
    ours = _state(merged)
    ref_state = {k: v for k, v in ref.state_dict().items()}
    assert set(ours) == set(ref_state), set(ours) ^ set(ref_state)
    for name, t in ours.items():
        assert t.dtype == torch.float16, name
        expected = ref_state[name].to(torch.float16).float()
        # identical up to one fp16 rounding step
        torch.testing.assert_close(t.float(), expected, atol=2e-3, rtol=2e-3, msg=name)
    ref_logits = logits(ref, IDS)
    our_logits = logits(_load(merged), IDS)
    assert (our_logits - ref_logits).abs().max() < 2e-2
    assert torch.equal(our_logits.argmax(-1), ref_logits.argmax(-1))


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("lora", {}),
        ("rslora", {"use_rslora": True, "r": 8, "lora_alpha": 16}),
        ("patterns", {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"layers.1.self_attn.q_proj": 3}}),
        ("dora", {"use_dora": True}),
        ("modules_to_save", {"modules_to_save": ["lm_head"], "target_modules": ["q_proj", "v_proj", "embed_tokens"]}),
    ],
)
def test_merge_matches_peft(tiny_llama: Path, tmp_path: Path, kind: str, kwargs: dict) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", **kwargs)
    out = tmp_path / "merged"
    summary = merge_adapter(tiny_llama, adapter, out)
    assert summary.merged_modules > 0
    _assert_matches_peft(tiny_llama, adapter, out)
    # sharding mirrors the base; index lists every tensor
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in out.glob("*.safetensors"))
    assert (out / "tokenizer.model").is_file() and (out / "chat_template.jinja").is_file()
    prov = json.loads((out / "hubtool.json").read_text())
    assert prov["adapter"]["files"]["adapter_model.safetensors"]
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_merge_resized_vocab_carries_tokenizer(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(
        tiny_llama, tmp_path / "adapter", resize_vocab=392, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]
    )
    out = tmp_path / "merged"
    summary = merge_adapter(tiny_llama, adapter, out)
    assert summary.config_changes["vocab_size"] == 392
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 392
    _assert_matches_peft(tiny_llama, adapter, out, vocab=392)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 392
    assert tok.convert_tokens_to_ids("<extra_3>") >= 384


def test_merge_lora_on_embeddings(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["embed_tokens", "q_proj"])
    merge_adapter(tiny_llama, adapter, tmp_path / "merged")
    _assert_matches_peft(tiny_llama, adapter, tmp_path / "merged")


def test_bfloat16_output(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj"])
    merge_adapter(tiny_llama, adapter, tmp_path / "merged", dtype="bfloat16")
    state = _state(tmp_path / "merged")
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"


def test_rope_linear_scaled_merge_loads_scaled(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj", "v_proj"])
    out = tmp_path / "merged"
    summary = merge_adapter(tiny_llama, adapter, out, rope="linear:4")
    assert summary.rope == {"type": "linear", "factor": 4.0}
    cfg = json.loads((out / "config.json").read_text())
    # both key styles: transformers 5 (rope_parameters) and 4.x (rope_scaling + rope_theta)
    assert cfg["rope_parameters"]["rope_type"] == "linear" and cfg["rope_parameters"]["factor"] == 4.0
    assert cfg["rope_scaling"] == {"type": "linear", "rope_type": "linear", "factor": 4.0}
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]
    assert cfg["max_position_embeddings"] == 4 * 256

    loaded = AutoConfig.from_pretrained(out)
    assert loaded.rope_parameters["rope_type"] == "linear"
    ids = torch.randint(3, 384, (1, 128), generator=torch.Generator().manual_seed(0))
    scaled = logits(_load(out), ids)
    # a reference configured the same way: PEFT merge, then linear scaling set on its config
    ref_cfg = AutoConfig.from_pretrained(tiny_llama)
    ref_cfg.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": ref_cfg.rope_parameters["rope_theta"]}
    ref = peft_reference(tiny_llama, adapter)
    ref_scaled = AutoModelForCausalLM.from_config(ref_cfg, dtype=torch.float32).eval()
    ref_scaled.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    same = (scaled - logits(ref_scaled, ids)).abs().max()
    # and it is really scaled: the unscaled model gives clearly different logits
    unscaled = (scaled - logits(ref, ids)).abs().max()
    assert same < 2e-3
    assert unscaled > max(1e-3, 10 * same), (same, unscaled)


def test_rope_from_adapter_config(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj"])
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}
    (adapter / "config.json").write_text(json.dumps(cfg))
    merge_adapter(tiny_llama, adapter, tmp_path / "merged")
    out_cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert out_cfg["rope_parameters"]["rope_type"] == "yarn"
    assert out_cfg["rope_parameters"]["original_max_position_embeddings"] == 256
    assert out_cfg["max_position_embeddings"] == 1024


@pytest.mark.parametrize(
    "spec,message",
    [
        ("linear", "expected TYPE:FACTOR"),
        ("ntk:2", "unknown RoPE type"),
        ("linear:0.5", "would shrink the context"),
        ("yarn:4,beta_fast=1,beta_slow=32", "beta_fast > beta_slow"),
        ("llama3:8", "needs low_freq_factor"),
        ("linear:4,original_max_position_embeddings=2048", "has no field"),
    ],
)
def test_rope_validation(tiny_llama: Path, tmp_path: Path, spec: str, message: str) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(InputError, match=message):
        merge_adapter(tiny_llama, adapter, tmp_path / "merged", rope=spec)
    assert not (tmp_path / "merged").exists()


def _corrupt_adapter(adapter: Path, edit) -> None:
    path = adapter / "adapter_model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def _first(state: dict, suffix: str) -> str:
    return next(k for k in sorted(state) if k.endswith(suffix))


@pytest.mark.parametrize(
    "case,exc,message",
    [
        ("missing_target", MergeError, "does not have"),
        ("shape", MergeError, "shape mismatch"),
        ("rank", MergeError, "rank"),
        ("nan", MergeError, "NaN/Inf"),
        ("bin_only", InputError, "pickle adapter weights"),
        ("not_peft", InputError, "no adapter_config.json"),
    ],
)
def test_bad_adapters(tiny_llama: Path, tmp_path: Path, case: str, exc: type, message: str) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj", "v_proj"])
    if case == "missing_target":
        _corrupt_adapter(adapter, lambda s: s.update({"base_model.model.model.layers.7.mlp.fc9.lora_A.weight": torch.zeros(4, 64), "base_model.model.model.layers.7.mlp.fc9.lora_B.weight": torch.zeros(64, 4)}))
    elif case == "shape":
        _corrupt_adapter(adapter, lambda s: s.update({(k := _first(s, "q_proj.lora_B.weight")): torch.zeros(48, 4)}))
    elif case == "rank":
        _corrupt_adapter(adapter, lambda s: s.update({(k := _first(s, "q_proj.lora_B.weight")): torch.zeros(64, 3)}))
    elif case == "nan":
        def poison(s):
            k = _first(s, "v_proj.lora_A.weight")
            s[k] = s[k].clone()
            s[k][0, 0] = float("nan")
        _corrupt_adapter(adapter, poison)
    elif case == "bin_only":
        (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    elif case == "not_peft":
        (adapter / "adapter_config.json").unlink()
    with pytest.raises(exc, match=message):
        merge_adapter(tiny_llama, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged*"))


def test_fp16_overflow_from_bf16_base(tmp_path: Path, tokenizer_dir: Path) -> None:
    from tests.tiny import make_tiny_llama

    base = make_tiny_llama(tmp_path / "bf16", tokenizer_dir, dtype=torch.bfloat16)
    state = load_file(base / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"][0, 0] = 1.0e5
    save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(MergeError, match=r"model.layers.1.mlp.down_proj.weight .*--dtype bfloat16"):
        merge_adapter(base, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    merge_adapter(base, adapter, tmp_path / "merged", dtype="bfloat16")  # the fix the error names works


def test_bad_base_inputs(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj"])
    bin_only = tmp_path / "binbase"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((tiny_llama / "config.json").read_text())
    (bin_only / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="only pickle weights"):
        merge_adapter(bin_only, adapter, tmp_path / "m1")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{}")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="not a valid safetensors file"):
        merge_adapter(corrupt, adapter, tmp_path / "m2")
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        merge_adapter(corrupt, adapter, tmp_path / "m3")


def test_existing_output_is_kept(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj"])
    out = tmp_path / "merged"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        merge_adapter(tiny_llama, adapter, out)
    assert (out / "precious.txt").read_text() == "mine"
    merge_adapter(tiny_llama, adapter, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "config.json").exists()


def test_cli_merge_and_errors(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_llama, tmp_path / "adapter", target_modules=["q_proj"])
    out = tmp_path / "merged"
    ok = subprocess.run([sys.executable, "-m", "hubtool", "merge", str(tiny_llama), str(adapter), "-o", str(out), "--rope", "linear:2", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["rope"] == {"type": "linear", "factor": 2.0} and summary["tensors"] == 21
    bad = subprocess.run([sys.executable, "-m", "hubtool", "merge", str(tiny_llama), str(tmp_path / "nope"), "-o", str(tmp_path / "m2")], capture_output=True, text=True)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'nope'}: adapter directory not found"]
