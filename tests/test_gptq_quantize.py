"""GPTQ on a tiny RoPE-scaled Llama through gptqmodel: the standard format, exactly, and that it loads."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hubtool.cli import main
from hubtool.errors import InputError, QuantizeError
from hubtool.gptq import load_preset, quantize_gptq, read_gptq_info, verify_gptq
from tests.tiny import make_tiny_llama

from tests.extras import require_extra

require_extra("gptqmodel", "gptq")  # skipped locally without the extra; a failure in CI

MODULES = {  # name -> (in_features, out_features) for the tiny config (hidden 64, 4 heads, 2 kv heads, mlp 128)
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (64, 32),
    "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (64, 128),
    "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}
ROPE = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


@pytest.fixture(scope="module")
def rope_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """Tiny Llama with linear RoPE scaling written in both key styles (transformers 5 and 4.x)."""
    path = make_tiny_llama(tmp_path_factory.mktemp("gptq-src") / "tiny-rope", tokenizer_dir, seed=1)
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_parameters"] = dict(ROPE)
    cfg["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": 2.0}
    cfg["rope_theta"] = 10000.0
    cfg["max_position_embeddings"] = 512
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.7, "do_sample": True}))
    return path


@pytest.fixture(scope="module")
def gptq_dir(rope_llama, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gptq-out") / "tiny-gptq"
    preset = load_preset("gptq-4bit-32g-actorder", {"samples": 16, "seq_len": 64})
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        summary = quantize_gptq(rope_llama, out, preset, device="cpu")
    # gptqmodel writes ./logs in the caller's cwd unless redirected; a user's folder must stay untouched
    assert list(cwd.iterdir()) == []
    return out, summary


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _source(path: Path) -> dict[str, torch.Tensor]:
    return _tensors(path)


def dequantize(qweight, qzeros, scales, g_idx, bits=4) -> torch.Tensor:
    """Reference GPTQ v1 dequantization -> [out, in] weight: w = scale[g] * (q - (z[g] + 1))."""
    per = 32 // bits
    mask = (1 << bits) - 1
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    q = ((qweight.unsqueeze(1) >> shifts.view(1, per, 1)) & mask).reshape(-1, qweight.shape[1])  # [in, out]
    z = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, per)) & mask).reshape(qzeros.shape[0], -1)  # [groups, out]
    g = g_idx.long()
    w = scales[g].float() * (q.float() - (z[g].float() + 1))
    return w.t()


def test_summary_and_record(gptq_dir):
    out, summary = gptq_dir
    assert summary["preset"]["bits"] == 4 and summary["preset"]["group_size"] == 32 and summary["preset"]["desc_act"] is True
    assert summary["calibration"]["samples"] == 16 and summary["calibration"]["seq_len"] == 64
    assert summary["size_bytes"] == sum(p.stat().st_size for p in out.glob("*.safetensors")) > 0
    assert summary["seconds"] > 0 and summary["device"] == "cpu"
    info = read_gptq_info(out)
    assert info["meta"]["calibration"]["source"] == "builtin" and info["meta"]["calibration"]["samples"] == 16
    assert info["meta"]["branch"] == "gptq-4bit-32g-actorder_True"
    assert any(q.startswith("gptqmodel:") for q in info["meta"]["quantizer"])


def test_exact_tensor_format(gptq_dir, rope_llama):
    out, _ = gptq_dir
    t = _tensors(out)
    for layer in range(2):
        for mod, (fin, fout) in MODULES.items():
            p = f"model.layers.{layer}.{mod}"
            assert f"{p}.weight" not in t
            assert t[f"{p}.qweight"].dtype == torch.int32 and list(t[f"{p}.qweight"].shape) == [fin // 8, fout]
            assert t[f"{p}.qzeros"].dtype == torch.int32 and list(t[f"{p}.qzeros"].shape) == [fin // 32, fout // 8]
            assert t[f"{p}.scales"].dtype == torch.float16 and list(t[f"{p}.scales"].shape) == [fin // 32, fout]
            assert t[f"{p}.g_idx"].dtype == torch.int32 and list(t[f"{p}.g_idx"].shape) == [fin]
            # v1 zero points: symmetric 4-bit stores zero 8 as 7 in every nibble (0x77777777)
            assert (t[f"{p}.qzeros"] == 0x77777777).all()
            g = t[f"{p}.g_idx"]
            counts = torch.bincount(g.long(), minlength=fin // 32)
            assert counts.tolist() == [32] * (fin // 32)  # a permutation-consistent group map
            assert not torch.equal(g, torch.arange(fin, dtype=torch.int32) // 32)  # act-order reordered it
    src = _source(rope_llama)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert t[name].dtype == torch.float16 and torch.equal(t[name], src[name])


def test_dequantized_weights_close_to_original(gptq_dir, rope_llama):
    out, _ = gptq_dir
    t, src = _tensors(out), _source(rope_llama)
    for layer in range(2):
        for mod in MODULES:
            p = f"model.layers.{layer}.{mod}"
            w = dequantize(t[f"{p}.qweight"], t[f"{p}.qzeros"], t[f"{p}.scales"], t[f"{p}.g_idx"])
            orig = src[f"{p}.weight"].float()
            assert w.shape == orig.shape
            rel = ((w - orig).norm() / orig.norm()).item()
            assert rel < 0.2, (p, rel)
            # on the 4-bit grid: every column is scale * integer in [-8, 7]
            levels = w.t() / t[f"{p}.scales"][t[f"{p}.g_idx"].long()].float()
            assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.min() >= -8 and levels.max() <= 7


def test_configs_rope_and_aux_files(gptq_dir, rope_llama):
    out, _ = gptq_dir
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "checkpoint_format", "bits", "group_size", "desc_act", "sym")} == {
        "quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": True}
    assert "meta" not in qc
    assert cfg["rope_parameters"] == ROPE and cfg["rope_scaling"]["factor"] == 2.0 and cfg["rope_theta"] == 10000.0
    assert cfg["max_position_embeddings"] == 512
    qfile = json.loads((out / "quantize_config.json").read_text())
    assert {k: qfile[k] for k in qc} == qc
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (rope_llama / name).read_bytes(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_no_temp_paths_or_machine_details(gptq_dir):
    out, _ = gptq_dir
    needles = ["/tmp", "/root", "/home", "/var/", str(Path.home()), "offload", socket.gethostname()]
    blobs = {p.name: p.read_text() for p in out.glob("*.json")}
    for shard in out.glob("*.safetensors"):  # safetensors header: 8-byte length + JSON
        raw = shard.read_bytes()
        blobs[shard.name] = raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]].decode()
    for name, text in blobs.items():
        for needle in needles:
            assert needle not in text, f"{name} leaks {needle!r}"


def _assert_loads_with_sane_logits(out: Path, rope_llama: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.quality.metrics import compare_logits
    from hubtool.quality.texts import builtin_text

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(builtin_text("heldout")[:2000], return_tensors="pt")["input_ids"][:, :128]
    q = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float16).eval()
    assert q.config.quantization_config is not None
    rope = q.config.rope_parameters
    assert rope["rope_type"] == "linear" and rope["factor"] == 2.0
    ref = AutoModelForCausalLM.from_pretrained(rope_llama, dtype=torch.float32).eval()
    other = AutoModelForCausalLM.from_config(ref.config, dtype=torch.float32).eval()  # a different random model
    with torch.inference_mode():
        lq = q(ids).logits[0].float().numpy()
        lr = ref(ids).logits[0].float().numpy()
        lo = other(ids).logits[0].float().numpy()
    m = compare_logits(lr, lq, ids[0].numpy())
    base = compare_logits(lr, lo, ids[0].numpy())
    assert m["kl_div"] < 0.1 * base["kl_div"], (m, base)
    assert m["top1"] > 0.6 and m["top1"] > base["top1"] + 0.3, (m, base)


def test_transformers_loads_it_with_sane_logits(gptq_dir, rope_llama, tokenizer_dir):
    _assert_loads_with_sane_logits(gptq_dir[0], rope_llama)


@pytest.fixture(scope="module")
def gar_dir(rope_llama, tmp_path_factory) -> tuple[Path, dict]:
    """Group-aware act-order with the clipping search and a non-default damping: every option issue 18 added."""
    out = tmp_path_factory.mktemp("gptq-gar") / "tiny-gar"
    preset = load_preset("gptq-4bit-32g-actorder", {"desc_act": False, "act_group_aware": True, "mse": 2.4, "damp_percent": 0.03,
                                                     "damp_auto_increment": 0.02, "samples": 16, "seq_len": 64})
    return out, quantize_gptq(rope_llama, out, preset, device="cpu")


def test_new_options_reach_gptqmodel_and_output_stays_standard(gar_dir, rope_llama):
    out, summary = gar_dir
    assert summary["preset"]["branch"] == "gptq-4bit-32g-gar"
    used = summary["gptqmodel_settings"]  # read back from the QuantizeConfig gptqmodel quantized with
    assert {k: used[k] for k in ("desc_act", "act_group_aware", "mse", "damp_percent", "damp_auto_increment", "sym", "group_size")} == {
        "desc_act": False, "act_group_aware": True, "mse": 2.4, "damp_percent": 0.03, "damp_auto_increment": 0.02, "sym": True, "group_size": 32}
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "checkpoint_format", "bits", "group_size", "desc_act", "sym")} == {
        "quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": True}
    qfile = json.loads((out / "quantize_config.json").read_text())
    assert (qfile["mse"], qfile["act_group_aware"], qfile["damp_percent"], qfile["damp_auto_increment"]) == (2.4, True, 0.03, 0.02)
    assert qfile["meta"]["branch"] == "gptq-4bit-32g-gar"
    assert qfile["meta"]["mse_grid"] == summary["preset"]["mse_grid"]  # the search's grid: no QuantizeConfig field, so recorded here
    assert "mse_grid" not in qc  # loaders never see it
    t, src = _tensors(out), _source(rope_llama)
    for layer in range(2):
        for mod, (fin, fout) in MODULES.items():
            p = f"model.layers.{layer}.{mod}"
            # GAR keeps every column in its natural group: the plain desc_act=false layout, read by every GPTQ kernel
            assert torch.equal(t[f"{p}.g_idx"], torch.arange(fin, dtype=torch.int32) // 32)
            assert (t[f"{p}.qzeros"] == 0x77777777).all() and list(t[f"{p}.scales"].shape) == [fin // 32, fout]
            w = dequantize(t[f"{p}.qweight"], t[f"{p}.qzeros"], t[f"{p}.scales"], t[f"{p}.g_idx"])
            assert ((w - src[f"{p}.weight"].float()).norm() / src[f"{p}.weight"].float().norm()).item() < 0.2


def test_gar_checkpoint_loads_in_transformers(gar_dir, rope_llama):
    _assert_loads_with_sane_logits(gar_dir[0], rope_llama)


def test_clipping_search_changes_the_scales(gptq_dir, gar_dir, rope_llama, tmp_path):
    """mse > 0 must reach the quantizer, not just the record: the same settings with mse 0 give other scales."""
    out, summary = gar_dir
    plain = load_preset("gptq-4bit-32g-actorder", {**{k: summary["preset"][k] for k in ("desc_act", "act_group_aware", "damp_percent",
                                                   "damp_auto_increment", "samples", "seq_len")}, "mse": 0.0})
    quantize_gptq(rope_llama, tmp_path / "plain", plain, device="cpu")
    a, b = _tensors(out), _tensors(tmp_path / "plain")
    scales = [k for k in a if k.endswith(".scales")]
    changed = [k for k in scales if not torch.equal(a[k], b[k])]
    assert len(changed) == len(scales), sorted(set(scales) - set(changed))
    # the search only ever shrinks the min/max range: on average, the clipped scales are smaller
    assert sum(a[k].float().mean() for k in scales) < sum(b[k].float().mean() for k in scales)


def test_settings_gptqmodel_changed_are_an_error():
    from hubtool.gptq.quantize import _check_settings_used

    _check_settings_used({"mse": 2.4, "desc_act": True}, {"mse": 2.4, "desc_act": True})
    with pytest.raises(QuantizeError, match=r"mse 2.4 -> 0.0"):
        _check_settings_used({"mse": 2.4, "desc_act": True}, {"mse": 0.0, "desc_act": True})
    with pytest.raises(QuantizeError, match="act_group_aware"):
        _check_settings_used({"act_group_aware": False}, {})


def test_verify_rows_and_results_file(gptq_dir, rope_llama, tmp_path):
    out, _ = gptq_dir
    results = tmp_path / "quality.json"
    rows = verify_gptq(out, rope_llama, results_path=results, context=64, max_tokens=512)
    kinds = {r["kind"]: r for r in rows}
    assert set(kinds) == {"gptq", "rtn"}
    for r in rows:
        assert r["tokens"] == 8 * 63 and r["perplexity"] > 1 and 0 <= r["top1"] <= 1 and r["kl_div"] >= 0
    assert kinds["gptq"]["variant"] == "gptq-4bit-32g-actorder_True" and kinds["gptq"]["size_bytes"] > 0
    assert kinds["gptq"]["ref_perplexity"] == kinds["rtn"]["ref_perplexity"]
    data = json.loads(results.read_text())
    assert data["reference"] == "fp16" and {r["kind"] for r in data["rows"]} == {"gptq", "rtn"}


def test_block_by_block_gptq_matches_gptqmodel_kernels(gptq_dir):
    """The streaming path dequantizes each block's packed linears; gptqmodel's own CPU kernel must agree."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from hubtool.quality.stream import StreamingModel, gptq_weights, stream_logprobs

    out, _ = gptq_dir
    windows = [list(range(1, 60)), list(range(100, 140))]
    q = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32).eval()
    with torch.inference_mode():
        want = [torch.log_softmax(q(torch.tensor([w])).logits[0].double(), -1).numpy() for w in windows]
    got = stream_logprobs(StreamingModel(out, gptq_weights(out)), windows)
    for g, w in zip(got, want):  # the aten int4 kernel rounds a little differently from an fp32 matmul
        np.testing.assert_allclose(g, w, atol=5e-3)
        assert np.abs(g - w).mean() < 1e-3


def test_refuses_to_overwrite_and_requantize(gptq_dir, rope_llama, tmp_path, capsys):
    out, _ = gptq_dir
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match="already exists; .*--overwrite"):
        quantize_gptq(rope_llama, out, load_preset("gptq-4bit-32g-actorder"))
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(InputError, match="already quantized"):
        quantize_gptq(out, tmp_path / "again", load_preset("gptq-4bit-32g-actorder"))
    with pytest.raises(InputError, match="is itself quantized"):
        verify_gptq(out, out)
    with pytest.raises(InputError, match="no quantize_config.json"):
        verify_gptq(rope_llama, rope_llama)
    rc = main(["quantize", "gptq", str(rope_llama), "-o", str(tmp_path / "x"), "--device", "cuda:0" if not torch.cuda.is_available() else "tpu"])
    assert rc == 2 and "--device" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_without_act_order_and_verify_json(rope_llama, tmp_path, capsys):
    out = tmp_path / "noact"
    cal = tmp_path / "cal.jsonl"
    from hubtool.quality.texts import builtin_text

    paras = [p for p in builtin_text("calibration").split("\n\n") if len(p) > 200][:80]
    cal.write_text("\n".join(json.dumps({"text": p}) for p in paras))
    rc = main(["quantize", "gptq", str(rope_llama), "-o", str(out), "--preset", "gptq-4bit-128g", "--group-size", "32",
               "--samples", "8", "--seq-len", "64", "--calibration", str(cal), "--device", "cpu", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["preset"]["branch"] == "gptq-4bit-32g-actorder_False" and summary["calibration"]["name"] == "cal.jsonl"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["desc_act"], qc["group_size"]) == (False, 32)
    t = _tensors(out)
    for layer in range(2):
        for mod, (fin, _) in MODULES.items():
            assert torch.equal(t[f"model.layers.{layer}.{mod}.g_idx"], torch.arange(fin, dtype=torch.int32) // 32)
    assert str(tmp_path) not in (out / "quantize_config.json").read_text()
    rc = main(["verify", "gptq", str(out), "--reference", str(rope_llama), "--context", "64", "--tokens", "256", "--no-rtn", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in rows] == ["gptq"] and rows[0]["variant"] == "gptq-4bit-32g-actorder_False"
    assert json.loads((out / "quality.json").read_text())["rows"][0]["top1"] == rows[0]["top1"]
