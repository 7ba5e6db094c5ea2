"""GGUF export/verify input errors: clear one-line messages, raised before any long work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hubtool.errors import InputError
from hubtool.gguf import export_gguf, verify_gguf
from hubtool.gguf.convert import converter_architectures
from hubtool.gguf.types import parse_size, parse_types
from tests.extras import require_extra


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_parse_types_and_sizes():
    assert parse_types("f16, q8_0,Q4_K_M,q8_0") == ["F16", "Q8_0", "Q4_K_M"]
    with pytest.raises(InputError, match="unknown GGUF type 'q4_k_x'.*Q4_K_M"):
        parse_types("q4_k_x")
    assert parse_size("48G") == 48 * 10**9 and parse_size("400K") == 400_000 and parse_size("0") == 0
    with pytest.raises(InputError, match="not a size"):
        parse_size("lots")


def test_missing_model_dir(tmp_path):
    with pytest.raises(InputError, match="not found"):
        export_gguf(tmp_path / "nope", tmp_path / "out", ["f16"])


def test_corrupt_safetensors(tiny_llama, tmp_path):
    model = _copy(tiny_llama, tmp_path / "m")
    shard = sorted(model.glob("*.safetensors"))[0]
    shard.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match=shard.name):
        export_gguf(model, tmp_path / "out", ["f16"])
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_supported(tiny_llama, tmp_path):
    model = _copy(tiny_llama, tmp_path / "m")
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="NoSuchModelForCausalLM is not supported") as err:
        export_gguf(model, tmp_path / "out", ["f16"])
    supported = converter_architectures()  # the converter's own registry, not a list of ours
    assert len(supported) > 100 and {"Gemma3ForCausalLM", "Phi3ForCausalLM", "QWenLMHeadModel"} <= set(supported)
    assert all(a in str(err.value) for a in supported)


def test_missing_tokenizer(tiny_llama, tmp_path):
    model = _copy(tiny_llama, tmp_path / "m")
    for f in ("tokenizer.json", "tokenizer.model"):
        (model / f).unlink()
    with pytest.raises(InputError, match=r"no tokenizer.json, tokenizer.model or \*.tiktoken"):
        export_gguf(model, tmp_path / "out", ["f16"])


def test_iq_type_without_imatrix_refused(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="IQ4_XS.*importance matrix"):
        export_gguf(tiny_llama, tmp_path / "out", ["q4_k_m", "iq4_xs"])
    assert not (tmp_path / "out").exists()  # refused before converting anything


def test_imatrix_and_calibration_exclusive(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="not both"):
        export_gguf(tiny_llama, tmp_path / "out", ["iq4_xs"], imatrix=tmp_path / "x.gguf", calibration="builtin")


def test_bad_imatrix_file_fails_before_converting(tiny_llama, tmp_path):
    require_extra("llama_cpp", "gguf")
    bad = tmp_path / "bad.imatrix.gguf"
    bad.write_bytes(b"junk")
    with pytest.raises(InputError, match="not a GGUF imatrix"):
        export_gguf(tiny_llama, tmp_path / "out", ["iq4_xs"], imatrix=bad)
    assert not (tmp_path / "out").exists()


def test_bad_imatrix_file(tmp_path):
    from hubtool.gguf.imatrix import load_imatrix

    with pytest.raises(InputError, match="not found"):
        load_imatrix(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(InputError, match="not a GGUF imatrix"):
        load_imatrix(bad)


def test_verify_rejects_non_gguf_and_missing_shards(tiny_llama, tmp_path):
    require_extra("llama_cpp", "gguf")
    bad = tmp_path / "model.Q4_K_M.gguf"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a valid GGUF"):
        verify_gguf([bad], tiny_llama, max_tokens=32, context=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .gguf files"):
        verify_gguf([tmp_path / "empty"], tiny_llama)
    first = tmp_path / "m.Q8_0-00001-of-00002.gguf"
    first.write_bytes(b"GGUF")
    from hubtool.gguf.verify import shard_paths

    with pytest.raises(InputError, match="00002-of-00002.gguf: shard missing"):
        shard_paths(first)


def test_cli_error_exit_code(tiny_llama, tmp_path, capsys):
    from hubtool.cli import main

    rc = main(["quantize", "gguf", str(tiny_llama), "-o", str(tmp_path / "out"), "--types", "iq2_xs"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: IQ2_XS") and "--calibration" in err and len(err.strip().splitlines()) == 1
