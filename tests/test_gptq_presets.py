"""GPTQ presets, overrides, calibration windows and the RTN baseline (no gptqmodel needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hubtool.cli import main
from hubtool.errors import InputError
from hubtool.gptq import DEFAULT_PRESET, list_presets, load_preset
from hubtool.gptq.calibration import calibration_dataset, load_calibration_text, token_windows
from hubtool.gptq.presets import branch_name, presets_dir
from hubtool.gptq.rtn import rtn_dequantized
from tests.extras import require_extra

EXPECTED = {
    "gptq-4bit-32g-actorder": (4, 32, True, "gptq-4bit-32g-actorder_True"),
    "gptq-4bit-128g-actorder": (4, 128, True, "gptq-4bit-128g-actorder_True"),
    "gptq-4bit-128g": (4, 128, False, "gptq-4bit-128g-actorder_False"),
    "gptq-8bit-128g-actorder": (8, 128, True, "gptq-8bit-128g-actorder_True"),
}


def test_builtin_presets_match_their_names():
    assert set(EXPECTED) <= set(list_presets())
    assert DEFAULT_PRESET == "gptq-4bit-32g-actorder"
    for name, (bits, group, act, branch) in EXPECTED.items():
        p = load_preset(name)
        assert (p.bits, p.group_size, p.desc_act, p.branch, p.sym) == (bits, group, act, branch, True)
        assert p.branch == branch_name(p.bits, p.group_size, p.desc_act)
        assert 0 < p.damp_percent < 1 and p.samples == 128 and p.seq_len == 2048


def test_default_preset_uses_the_measured_clipping_search():
    """Issue 18: chosen by bench/gptq.py (results in bench/results/gptq-issue18.md); layout fields unchanged."""
    p = load_preset(DEFAULT_PRESET)
    assert (p.mse, p.mse_grid, p.damp_percent, p.damp_auto_increment, p.act_group_aware) == (2.4, 40, 0.01, 0.01, False)
    assert (p.bits, p.group_size, p.desc_act, p.sym, p.static_groups) == (4, 32, True, True, False)
    assert all((load_preset(n).mse, load_preset(n).mse_grid) == (0.0, 100) for n in EXPECTED if n != DEFAULT_PRESET)  # not measured


def test_package_data_link_points_at_repo_presets():
    link = Path(__import__("hubtool.gptq", fromlist=["x"]).__file__).parent / "quant_configs"
    assert link.resolve() == presets_dir().resolve()
    assert sorted(p.name for p in link.glob("*.yaml")) == sorted(p.name for p in presets_dir().glob("*.yaml"))


def test_overrides_rederive_branch_unless_given():
    p = load_preset(DEFAULT_PRESET, {"group_size": 128, "damp_percent": 0.05, "samples": 16})
    assert (p.group_size, p.damp_percent, p.samples, p.branch) == (128, 0.05, 16, "gptq-4bit-128g-actorder_True")
    assert load_preset(DEFAULT_PRESET, {"bits": 8, "branch": "mine"}).branch == "mine"
    assert load_preset(DEFAULT_PRESET, {"samples": 8}).branch == "gptq-4bit-32g-actorder_True"
    assert load_preset(DEFAULT_PRESET, {"bits": None}).bits == 4  # unset CLI flags are ignored


def test_user_yaml_starts_from_base(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: gptq-4bit-128g\nbits: 8\ncalibration:\n  samples: 32\n")
    p = load_preset(str(f))
    assert (p.name, p.bits, p.group_size, p.desc_act, p.samples, p.seq_len) == ("mine", 8, 128, False, 32, 2048)
    assert p.branch == "gptq-8bit-128g-actorder_False"
    g = tmp_path / "plain.yml"
    g.write_text("group_size: 64\n")
    q = load_preset(str(g))
    assert (q.bits, q.group_size, q.desc_act, q.branch) == (4, 64, True, "gptq-4bit-64g-actorder_True")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bits: 5\n", "bits = 5 is invalid"),
        ("group_size: 48\n", "group_size = 48 is invalid"),
        ("damp_percent: 1.5\n", "damp_percent = 1.5 is invalid"),
        ("desc_act: maybe\n", "desc_act = 'maybe' is invalid"),
        ("bitz: 4\n", "unknown setting 'bitz'"),
        ("calibration: 12\n", "'calibration' must be a mapping"),
        ("calibration:\n  samples: 0\n", "samples = 0 is invalid"),
        ("branch: 'bad branch'\n", "branch = 'bad branch' is invalid"),
        ("mse: 0.5\n", "mse = 0.5 is invalid"),
        ("mse: yes\n", "mse = True is invalid"),
        ("mse_grid: 2\n", "mse_grid = 2 is invalid"),
        ("mse_grid: 20.5\n", "mse_grid = 20.5 is invalid"),
        ("damp_auto_increment: -0.01\n", "damp_auto_increment = -0.01 is invalid"),
        ("act_group_aware: true\n", "act_group_aware = true needs desc_act = false"),
        ("desc_act: false\nact_group_aware: true\ngroup_size: -1\n", "act_group_aware = True is invalid"),
        ("base: nope\n", "nope: unknown GPTQ preset"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("bits: [4\n", "bad.yaml:2: invalid YAML"),
    ],
)
def test_bad_user_configs_error_clearly(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_preset(str(f))
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    if "base" not in text:
        assert str(f) in msg


def test_bad_names_and_overrides_error_clearly(tmp_path):
    with pytest.raises(InputError, match=r"gptq-3bit: unknown GPTQ preset; choose one of .*gptq-4bit-32g-actorder"):
        load_preset("gptq-3bit")
    with pytest.raises(InputError, match="not found"):
        load_preset(str(tmp_path / "missing.yaml"))
    with pytest.raises(InputError, match=r"with overrides: group_size = 7 is invalid"):
        load_preset(DEFAULT_PRESET, {"group_size": 7})
    with pytest.raises(InputError, match="'colour' is not a GPTQ setting"):
        load_preset(DEFAULT_PRESET, {"colour": 1})


def test_group_aware_and_clipping_options():
    p = load_preset(DEFAULT_PRESET, {"desc_act": False, "act_group_aware": True, "mse": 2})
    assert (p.desc_act, p.act_group_aware, p.mse, p.branch) == (False, True, 2.0, "gptq-4bit-32g-gar")
    assert isinstance(p.mse, float) and branch_name(4, 32, False, True) == "gptq-4bit-32g-gar"
    assert load_preset(DEFAULT_PRESET, {"mse": 0}).branch == load_preset(DEFAULT_PRESET).branch  # not a layout change
    assert load_preset(DEFAULT_PRESET, {"mse_grid": 40}).branch == load_preset(DEFAULT_PRESET).branch
    with pytest.raises(InputError, match="act_group_aware = true needs desc_act = false"):
        load_preset(DEFAULT_PRESET, {"act_group_aware": True})


def test_cli_passes_new_options(tiny_llama, tmp_path, capsys):
    rc = main(["quantize", "gptq", str(tiny_llama), "-o", str(tmp_path / "out"), "--act-group-aware", "true"])
    assert rc == 2 and "act_group_aware = true needs desc_act = false" in capsys.readouterr().err
    rc = main(["quantize", "gptq", str(tiny_llama), "-o", str(tmp_path / "out"), "--mse", "9"])
    assert rc == 2 and "mse = 9.0 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_reports_bad_preset(tiny_llama, tmp_path, capsys):
    rc = main(["quantize", "gptq", str(tiny_llama), "-o", str(tmp_path / "out"), "--preset", "gptq-4bit-999g"])
    assert rc == 2
    assert "unknown GPTQ preset" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    rc = main(["quantize", "gptq", str(tiny_llama), "-o", str(tmp_path / "out"), "--bits", "6"])
    assert rc == 2 and "bits = 6 is invalid" in capsys.readouterr().err


def test_calibration_windows_and_record(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    examples, desc = calibration_dataset("builtin", tok, samples=6, seq_len=64)
    assert len(examples) == 6 and desc["samples"] == 6 and desc["seq_len"] == 64 and desc["tokens"] == 6 * 64
    assert desc["source"] == "builtin" and len(desc["sha256"]) == 64
    assert all(len(e["input_ids"]) == 64 and e["input_ids"][0] == tok.bos_token_id for e in examples)
    assert len({tuple(e["input_ids"]) for e in examples}) == 6  # spread over the corpus, no repeats

    jl = tmp_path / "cal.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"Sentence number {i} talks about files and paths."}) for i in range(50)))
    ex, d = calibration_dataset(str(jl), tok, samples=1000, seq_len=32)
    assert d["source"] == "file" and d["name"] == "cal.jsonl" and str(tmp_path) not in json.dumps(d)
    assert 1 <= len(ex) == d["samples"] < 1000  # fewer windows than asked: uses what there is

    tiny = tmp_path / "tiny.txt"
    tiny.write_text("too short")
    with pytest.raises(InputError, match="fewer than one window"):
        token_windows(tiny.read_text(), tok, 4, 512)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(InputError, match="empty.txt: calibration text is empty"):
        load_calibration_text(str(empty))
    with pytest.raises(InputError, match="not found"):
        load_calibration_text(str(tmp_path / "nope.txt"))


def test_rtn_grid_is_symmetric_and_close():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    dq = rtn_dequantized(w, 4, 32)
    for g in range(2):
        block, qb = w[:, g * 32 : (g + 1) * 32], dq[:, g * 32 : (g + 1) * 32]
        scale = 2 * block.abs().amax(dim=1, keepdim=True) / 15
        levels = qb / scale
        assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the grid
        assert levels.min() >= -8 - 1e-4 and levels.max() <= 7 + 1e-4
        assert ((block - qb).abs() <= scale * 0.5 + 1e-5).logical_or(levels.round() == 7).all()
    rel = (w - dq).norm() / w.norm()
    assert 0.02 < rel < 0.15
    assert (w - rtn_dequantized(w, 8, 32)).norm() / w.norm() < 0.01


def test_calibration_from_a_saved_dataset(tmp_path):
    datasets = require_extra("datasets", "gptq")  # installed with gptqmodel
    ds = datasets.Dataset.from_dict({"text": ["First paragraph about files.", "Second one about paths."], "id": [1, 2]})
    ds.save_to_disk(str(tmp_path / "ds"))
    text, desc = load_calibration_text(str(tmp_path / "ds"))
    assert text == "First paragraph about files.\n\nSecond one about paths."
    assert desc["source"] == "dataset" and desc["name"] == "ds"
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match="no 'train' split"):
        load_calibration_text(str(tmp_path / "dd"))
    ds.rename_column("text", "body").save_to_disk(str(tmp_path / "nt"))
    with pytest.raises(InputError, match="no 'text' column"):
        load_calibration_text(str(tmp_path / "nt"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="not a dataset saved with datasets.save_to_disk"):
        load_calibration_text(str(tmp_path / "plain"))
