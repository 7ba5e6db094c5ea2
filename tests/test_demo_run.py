"""README's first command, `hubtool demo`, end to end (smaller training and calibration than the
default, same steps): SmolLM2 exported from its package, a LoRA trained, the whole release to an
in-process local Hub, every repo downloaded back and checked, the GGUF answering a prompt."""

from __future__ import annotations

from hubtool.demo import run_demo


def test_demo_releases_every_repo_and_checks_them(tmp_path, capsys):
    summary = run_demo(tmp_path / "demo", train_steps=2, gptq_samples=4, gptq_seq_len=64)
    assert summary["ok"] and [r["key"] for r in summary["repos"]] == ["fp16", "adapter", "gptq", "gguf"]
    assert all(r["changed"] and r["files_uploaded"] == len(r["files"]) for r in summary["repos"])
    assert {q["kind"] for q in summary["quality"]} == {"gptq", "rtn", "gguf"}
    assert {q["variant"] for q in summary["quality"] if q["kind"] == "gguf"} == {"Q4_K_M", "Q8_0"}
    assert 1.0 < summary["base_perplexity"] < 1000
    out = capsys.readouterr().out
    assert "Quality of each quant vs the fp16 merge:" in out and "Q4_K_M GGUF (downloaded, llama.cpp) answers" in out
    answer = out.split("answers", 1)[1].split("\n", 2)[1].strip()
    assert len(answer) > 10  # the downloaded GGUF produced text


def test_demo_jobs_is_checked_before_any_work(tmp_path, capsys):
    from hubtool.cli import main

    rc = main(["demo", "--work-dir", str(tmp_path / "demo"), "--jobs", "0"])
    assert rc == 2
    assert "--jobs: 0 must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # refused before the export
