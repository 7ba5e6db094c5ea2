"""`hubtool card render` / `hubtool card check` end to end through the CLI entry point."""

from __future__ import annotations

import json

import yaml

from hubtool.cli import main
from hubtool.frontmatter import read_front_matter
from tests.cardkit import RELEASE, RESULTS, gptq_dir


def release_yaml(tmp_path):
    path = tmp_path / "release.yaml"
    config = {**RELEASE, "license": "apache-2.0", "datasets": ["ns/data: v2"], "quantized_by": "acme"}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_render_then_check(tmp_path, capsys):
    model = gptq_dir(tmp_path)
    results = tmp_path / "quality.json"
    results.write_text(json.dumps(RESULTS), encoding="utf-8")
    out = tmp_path / "card" / "README.md"
    rc = main(["card", "render", "gptq", str(model), "--meta", str(release_yaml(tmp_path)), "--results", str(results),
               "--set", "tags=[gptq, llama]", "--set", "model_name=Bagel 8k", "-o", str(out)])
    assert rc == 0 and out.is_file()
    meta, body = read_front_matter(out)
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["ns/data: v2"] and meta["tags"] == ["gptq", "llama"]
    # with measured results the name lives in model-index (huggingface_hub reads model_name from there)
    assert "model_name" not in meta and meta["model-index"][0]["name"] == "Bagel 8k" and meta["base_model"] == RELEASE["repos"]["fp16"]
    assert "| main | gptq | 10.21 |" in body and "repos" not in meta and "gptq_variants" not in meta
    assert not list(out.parent.glob(".README.md.tmp-*"))  # staged write left nothing behind
    capsys.readouterr()
    assert main(["card", "check", str(out)]) == 0
    assert "ok (license=apache-2.0, base_model=acme/bagel-8k, base_model_relation=quantized)" in capsys.readouterr().out


def test_render_refuses_to_overwrite(tmp_path, capsys):
    model = gptq_dir(tmp_path)
    out = tmp_path / "README.md"
    out.write_text("mine\n", encoding="utf-8")
    assert main(["card", "render", "gptq", str(model), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main(["card", "render", "gptq", str(model), "-o", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("---\n")


def test_check_reports_one_line_error(tmp_path, capsys):
    bad = tmp_path / "README.md"
    bad.write_text("---\nlicense: other\nbase_model: ./merged\n---\n# x\n", encoding="utf-8")
    assert main(["card", "check", str(bad)]) == 5
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: license 'other' needs") and "\n" not in err


def test_render_errors_are_card_errors(tmp_path, capsys):
    model = gptq_dir(tmp_path)
    meta = tmp_path / "release.yaml"
    meta.write_text("license: other\nname: a: b\n", encoding="utf-8")
    assert main(["card", "render", "gptq", str(model), "--meta", str(meta), "-o", str(tmp_path / "o.md")]) == 5
    assert "release.yaml:2: invalid YAML" in capsys.readouterr().err
    assert main(["card", "render", "gptq", str(model), "--set", "base_model=/abs/merged", "-o", str(tmp_path / "o.md")]) == 5
    assert "is a local path" in capsys.readouterr().err
    assert not (tmp_path / "o.md").exists()
