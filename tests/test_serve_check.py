"""The release's serve check (hubtool/serve/): every artifact answers prompts as users run it (transformers
generate for fp16, llama.cpp's OpenAI-compatible server for GGUF), checked before anything is pushed.

One small release (a tiny Llama, GGUF Q8_0, on a local Hub folder) runs once; the GPTQ and adapter paths
run in tests/test_release.py's release."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from tests.extras import require_extra

require_extra("llama_cpp.server.app", "gguf")  # llama-cpp-python[server]: skipped locally without it, a failure in CI

from hubtool.artifacts import Record, ServeAnswers, ServeSample
from hubtool.cli import main
from hubtool.errors import QuantizeError
from hubtool.serve.checks import TOLERANCE, check_answers, check_reference, common_words, complete_words, find_markers, template_markers

PROMPT = "Say hi."
CONFIG = f"""\
name: tiny-serve
namespace: acme
quants: [gguf]
gguf: {{types: [q8_0]}}
verify: {{max_tokens: 64, context: 32}}
serve: {{prompts: ["{PROMPT}"], max_tokens: 8}}
card: {{license: apache-2.0, base_model: acme/tiny-base}}
"""


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def release_args(model: Path, config: Path, work: Path, *extra: str) -> list[str]:
    return ["release", str(model), "--config", str(config), "--work-dir", str(work), "--json", *extra]


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("serve")
    config = root / "release.yaml"
    config.write_text(CONFIG)
    rc, out, err = run_cli(release_args(tiny_llama, config, root / "work", "--local-hub", str(root / "hub")))
    assert rc == 0, err[-3000:]
    return {"root": root, "config": config, "summary": json.loads(out), "stderr": err}


def _answers(what: str, bits: float, *samples: ServeSample) -> ServeAnswers:
    return ServeAnswers(Path("."), artifact="gguf", variant="Q4_K_M", what=what, bits=bits, samples=samples)


# ---- the plan -------------------------------------------------------------------------------------

def test_serve_stages_are_in_the_plan_and_plan_json(tiny_llama, tmp_path, capsys):
    config = tmp_path / "release.yaml"
    config.write_text(CONFIG)
    rc = main(release_args(tiny_llama, config, tmp_path / "work", "--plan-json"))
    plan = json.loads(capsys.readouterr().out)
    assert rc == 0
    stages = {s["name"]: s for s in plan["stages"]}
    assert stages["serve:fp16"]["needs"] == [] and stages["serve:fp16"]["resource"] == "cpu"
    assert stages["serve:gguf:Q8_0"]["needs"] == ["gguf:Q8_0", "serve:fp16"]
    assert plan["matrix"]["verify"].split(",")[-2:] == ["serve:fp16", "serve:gguf:Q8_0"]
    rc = main(["release", str(tiny_llama), "--config", str(config), "--work-dir", str(tmp_path / "work"), "--dry-run"])
    printed = "".join(capsys.readouterr())
    assert rc == 0 and "stage    serve:gguf:Q8_0" in printed and "serve:fp16" in printed
    assert "check    serve: llama-cpp-python's server installed" in printed


def test_serve_key_follows_prompts_and_can_be_turned_off(tiny_llama, tmp_path, capsys):
    keys = {}
    for label, serve in (("a", '{prompts: ["Say hi."], max_tokens: 8}'), ("b", '{prompts: ["Say bye."], max_tokens: 8}'),
                         ("c", '{prompts: ["Say hi."], max_tokens: 9}'), ("off", "false")):
        config = tmp_path / f"{label}.yaml"
        config.write_text(CONFIG.replace(f'{{prompts: ["{PROMPT}"], max_tokens: 8}}', serve))
        assert main(release_args(tiny_llama, config, tmp_path / "work", "--plan-json")) == 0
        keys[label] = {s["name"]: s["key"] for s in json.loads(capsys.readouterr().out)["stages"]}
    assert len({keys[k]["serve:fp16"] for k in "abc"}) == 3 and len({keys[k]["serve:gguf:Q8_0"] for k in "abc"}) == 3
    assert keys["a"]["gguf:Q8_0"] == keys["b"]["gguf:Q8_0"]  # the artifacts themselves don't change
    assert not any(name.startswith("serve:") for name in keys["off"])


@pytest.mark.parametrize(("serve", "message"), [
    ("{prompts: []}", "serve.prompts must be a non-empty list"),
    ("{prompts: [1]}", "serve.prompts must be a non-empty list"),
    ("{max_tokens: 0}", "serve.max_tokens = 0 must be an integer >= 1"),
    ("{prompt: [hi]}", "unknown key 'serve.prompt'"),
    ("yes please", "serve must be true, false or a mapping"),
])
def test_bad_serve_config_is_one_line(tiny_llama, tmp_path, serve, message):
    config = tmp_path / "release.yaml"
    config.write_text(CONFIG.replace(f'{{prompts: ["{PROMPT}"], max_tokens: 8}}', serve))
    rc, _, err = run_cli(release_args(tiny_llama, config, tmp_path / "work", "--dry-run"))
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {config}")


# ---- the release --------------------------------------------------------------------------------

def test_a_missing_server_extra_is_refused_before_any_work(tiny_llama, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sse_starlette" else real(name, *a))
    config = tmp_path / "release.yaml"
    config.write_text(CONFIG)
    rc, _, err = run_cli(release_args(tiny_llama, config, tmp_path / "work", "--dry-run"))
    assert rc == 2 and err.strip() == ("error: serve check: llama.cpp's server needs sse_starlette; pip install 'llama-cpp-python[server]' "
                                       "(part of hubtool[gguf]), or set `serve: false` in release.yaml")


def test_every_artifact_is_served_and_its_answers_recorded(released):
    s = released["summary"]
    ran = {st["name"]: st for st in s["stages"]}
    assert not ran["serve:fp16"]["cached"] and not ran["serve:gguf:Q8_0"]["cached"]
    samples = s["samples"]
    assert [(r["artifact"], r["variant"], r["what"], r["prompt"]) for r in samples] == [
        ("fp16", "fp16", "acme/tiny-serve", PROMPT), ("gguf", "Q8_0", "tiny-serve.Q8_0.gguf", PROMPT)]
    assert all(r["answer"] and r["finish"] in ("stop", "length") and r["tokens"] >= 1 for r in samples)
    assert samples[0]["tokens"] <= 8  # max_tokens (llama-cpp-python's usage counts a split UTF-8 character's tokens apart)
    record = Record.from_dir(Path(ran["serve:gguf:Q8_0"]["out"]).parent)  # the cached stage record, typed
    assert isinstance(record, ServeAnswers) and record.samples[0].answer == samples[1]["answer"]
    assert record.how.startswith("llama.cpp server /v1/chat/completions")
    quality = json.loads((released["root"] / "work" / "quality.json").read_text())
    assert quality["samples"] == samples and {r["kind"] for r in quality["rows"]} == {"gguf"}


def test_cards_show_a_sample_answer(released):
    from hubtool.hub_server import serve_in_thread
    from huggingface_hub import hf_hub_download

    samples = {r["artifact"]: r for r in released["summary"]["samples"]}
    with serve_in_thread(released["root"] / "hub") as hub:  # what --local-hub stored, through the real client
        for repo, artifact in (("acme/tiny-serve", "fp16"), ("acme/tiny-serve-GGUF", "gguf")):
            card = Path(hf_hub_download(repo, "README.md", endpoint=hub.url, token=False,
                                        cache_dir=released["root"] / "dl")).read_text(encoding="utf-8")
            section = card.split("## Sample output", 1)[1].split("\n## ", 1)[0]
            assert f"User: {PROMPT}" in section and f"Assistant: {samples[artifact]['answer']}" in section and "```text" in section


def test_rerun_serves_nothing_again(released, tiny_llama):
    root = released["root"]
    rc, out, err = run_cli(release_args(tiny_llama, released["config"], root / "work", "--local-hub", str(root / "hub")))
    assert rc == 0, err[-2000:]
    s = json.loads(out)
    assert all(st["cached"] for st in s["stages"]) and not any(r["changed"] for r in s["repos"])
    assert s["samples"] == released["summary"]["samples"]


def _rewrite_chat_template(path: Path, template: str) -> None:
    """PATH with another `tokenizer.chat_template` (gguf-py's gguf_new_metadata, as a user editing a file would)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata, get_field_data

    reader = gguf.GGUFReader(str(path), "r")
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch=get_field_data(reader, gguf.Keys.General.ARCHITECTURE), endianess=reader.endianess)
    alignment = get_field_data(reader, gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment
    copy_with_new_metadata(reader, writer, {gguf.Keys.Tokenizer.CHAT_TEMPLATE: MetadataDetails(gguf.GGUFValueType.STRING, template)}, [])
    del reader
    os.replace(tmp, path)


def test_broken_gguf_chat_template_stops_the_release_before_any_push(tiny_llama, tmp_path, monkeypatch):
    """A GGUF whose chat template calls a function no runtime provides: llama.cpp's server refuses every chat
    request, so the release stops with one line naming the file and the prompt, and nothing is pushed.
    (Verification off: `verify:gguf` would refuse the changed template first.)"""
    from hubtool.release import execute
    from hubtool.release.graph import StageKind

    original = execute.RUNNERS[StageKind.GGUF]

    def broken(stage, ctx, out):
        record = original(stage, ctx, out)
        for f in record.files:
            _rewrite_chat_template(record.folder / f.file, "{{ render_turns(messages) }}<|im_start|>assistant\n")
        return record

    monkeypatch.setitem(execute.RUNNERS, StageKind.GGUF, broken)
    config = tmp_path / "release.yaml"
    config.write_text(CONFIG.replace("verify: {max_tokens: 64, context: 32}", "verify: {enabled: false}"))
    rc, out, err = run_cli(release_args(tiny_llama, config, tmp_path / "work", "--local-hub", str(tmp_path / "hub")))
    assert rc == 4
    assert json.loads(out)["exit_code"] == 4
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f'error: serve-check: tiny-serve.Q8_0.gguf: prompt "{PROMPT}": no answer (HTTP 500')
    assert "render_turns" in lines[0] and lines[0].endswith('answer ""')
    assert not list((tmp_path / "hub").rglob("*.gguf")) and not list((tmp_path / "hub").rglob("README.md"))  # nothing pushed
    assert not any(p.name.startswith("serve-gguf") for p in (tmp_path / "work" / "stages").iterdir())  # the failed check is not cached


# ---- the checks ---------------------------------------------------------------------------------

def test_template_tokens_are_found_and_name_the_artifact(tiny_llama):
    from transformers import AutoTokenizer

    markers = template_markers(AutoTokenizer.from_pretrained(tiny_llama))
    assert "<|im_start|>" in markers and "[INST]" in markers and "</s>" in markers
    assert "<s>" not in markers and "<unk>" not in markers  # BOS/UNK are not turn markers
    assert find_markers("Hello<|im_end|>\n<|im_start|>user", markers) == ("<|im_start|>", "<|im_end|>")
    assert find_markers("Hello there.", markers) == ()
    leak = ServeSample(PROMPT, "Hi!<|im_end|> <|im_start|>user more", "length", 8, find_markers("Hi!<|im_end|> <|im_start|>user more", markers))
    with pytest.raises(QuantizeError, match=r'^serve-check: m.Q4_K_M.gguf: prompt "Say hi.": chat-template token\(s\) <\|im_start\|>, '
                                            r'<\|im_end\|> in the answer .*: answer "Hi!<\|im_end\|> <\|im_start\|>user more"$'):
        check_answers(_answers("m.Q4_K_M.gguf", 4.85, leak), _answers("acme/m", 16, ServeSample(PROMPT, "Hi!", "stop", 3)))
    with pytest.raises(QuantizeError, match=r'^serve-check: acme/m: prompt "Say hi.": empty answer: answer ""$'):
        check_reference(_answers("acme/m", 16, ServeSample(PROMPT, "", "stop", 1)))


# fp16's answer, each leading word chosen by a wide margin (nats of top-1 over the runner-up), its end too
REF = ServeSample("What is the capital of France?", "The capital of France is Paris.", "stop", 8,
                  word_margins=(4.0, 4.0, 4.0, 4.0, 4.0, 4.0), stop_margin=3.5)


def test_an_answer_diverging_from_fp16_fails_within_its_tolerance():
    same = ServeSample(REF.prompt, "The capital of France is Paris, a city of art.", "stop", 12)
    check_answers(_answers("m.Q4_K_M.gguf", 4.85, same), _answers("acme/m", 16, REF))  # passes: begins the same
    other = ServeSample(REF.prompt, "Paris is the capital of France.", "stop", 8)
    with pytest.raises(QuantizeError, match=r'm.Q8_0.gguf: prompt "What is the capital of France\?": begins unlike the fp16 model\'s '
                                            r'answer "The capital of France is Paris." \(0 of the first 6 word\(s\) agree; 8-bit: up to 8 '
                                            r'words fp16 chose by >= 0.7 nats\): answer "Paris is the capital of France."'):
        check_answers(_answers("m.Q8_0.gguf", 8.5, other), _answers("acme/m", 16, REF))
    late = ServeSample(REF.prompt, "The capital of France, Paris.", "stop", 8)  # 4 words agree: a 4-bit answer may
    assert common_words(late.answer, REF.answer) == 4 == TOLERANCE["4-bit"][0]
    check_answers(_answers("m.Q4_K_M.gguf", 4.85, late), _answers("acme/m", 16, REF))
    with pytest.raises(QuantizeError, match="4 of the first 6 word"):
        check_answers(_answers("m.Q8_0.gguf", 8.5, late), _answers("acme/m", 16, REF))  # an 8-bit one may not
    with pytest.raises(QuantizeError, match=r"0 of the first 2 word\(s\) agree; low-bit"):
        check_answers(_answers("m.IQ2_XS.gguf", 2.3, other), _answers("acme/m", 16, REF))  # nor a 2-bit one at the first word


def test_prefix_is_held_only_to_what_fp16_chose_decisively():
    unsure = ServeSample(REF.prompt, REF.answer, "length", 8, word_margins=(1.0, 0.3, 0.3, 0.3, 0.3, 0.3))
    other = ServeSample(REF.prompt, "The city you mean is Paris.", "length", 8)
    check_answers(_answers("m.Q8_0.gguf", 8.5, other), _answers("acme/m", 16, unsure))  # "The" agrees; "capital" was a near tie
    with pytest.raises(QuantizeError, match="0 of the first 1 word"):
        check_answers(_answers("m.Q8_0.gguf", 8.5, ServeSample(REF.prompt, "Paris.", "stop", 2)), _answers("acme/m", 16, unsure))
    check_answers(_answers("m.Q4_K_M.gguf", 4.85, ServeSample(REF.prompt, "Paris.", "stop", 2)), _answers("acme/m", 16, unsure))  # 1 nat < 4-bit's 1.5
    random_model = ServeSample(REF.prompt, "qz vv kp", "length", 8, word_margins=(0.01, 0.0, 0.0))
    check_answers(_answers("m.Q8_0.gguf", 8.5, ServeSample(REF.prompt, "xx yy", "length", 8)), _answers("acme/m", 16, random_model))
    assert complete_words("The capital of Fr", "The capital of France is Paris.") == 3  # a cut word does not count
    assert complete_words("The capital of France", "The capital of France is Paris.") == 4
    assert complete_words("The capital of France is Paris", "The capital of France is Paris.") == 6


def test_an_answer_that_does_not_end_its_turn_fails_where_fp16_ended_decisively():
    rambling = ServeSample(REF.prompt, "The capital of France is Paris. Paris is", "length", 48)  # fp16's answer, then on and on
    with pytest.raises(QuantizeError, match=r"did not end its turn where the fp16 model's identical answer did \(after 8 tokens; went on "
                                            r"to 48, finish reason 'length'\)"):
        check_answers(_answers("m.Q4_K_M.gguf", 4.85, rambling), _answers("acme/m", 16, REF))
    hesitant = ServeSample(REF.prompt, REF.answer, "stop", 8, word_margins=REF.word_margins, stop_margin=0.2)
    check_answers(_answers("m.Q4_K_M.gguf", 4.85, rambling), _answers("acme/m", 16, hesitant))
    # another path (allowed past fp16's decisive words) may run longer, as long as the artifact ends some answer
    second = ServeSample("Name a colour.", "Red.", "stop", 2, word_margins=(0.2,), stop_margin=3.0)  # any colour will do
    wordy = ServeSample(REF.prompt, "The capital of France is a city called Paris, which", "length", 48)
    check_answers(_answers("m.Q4_K_M.gguf", 4.85, wordy, ServeSample(second.prompt, "Blue.", "stop", 2)), _answers("acme/m", 16, REF, second))
    with pytest.raises(QuantizeError, match=r'prompt "What is the capital of France\?": ended its turn within 48 tokens on none of the 2 '
                                            r"prompt\(s\) whose fp16 answer ended \(finish reason 'length'\)"):
        check_answers(_answers("m.Q4_K_M.gguf", 4.85, wordy, ServeSample(second.prompt, "Blue, then", "length", 48)),
                      _answers("acme/m", 16, REF, second))


def test_fp16_reference_answers_from_transformers(tiny_llama):
    from hubtool.release.load_check import load_transformers
    from hubtool.serve.generate import answers, stop_token_ids

    model, tok = load_transformers(tiny_llama, "float32")
    assert stop_token_ids(model, tok) == [2]
    first, again = answers(model, tok, [PROMPT], max_tokens=6, reference=True), answers(model, tok, [PROMPT], max_tokens=6, reference=True)
    assert first == again  # greedy: the same answer every time
    s = first[0]
    assert s.prompt == PROMPT and s.finish in ("stop", "length") and 1 <= s.tokens <= 6 and s.answer
    assert len(s.word_margins) <= len(s.answer.split()) and list(s.word_margins) == sorted(s.word_margins, reverse=True)
    assert all(m >= 0 for m in s.word_margins) and (s.stop_margin > 0) == (s.finish == "stop")
