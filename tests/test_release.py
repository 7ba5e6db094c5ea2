"""`hubtool release` end to end against the local Hub with the real huggingface_hub client.

One tiny release (base + LoRA adapter + RoPE linear x4 -> fp16, peft, GPTQ, GGUF Q8_0) runs once
(Xet uploads); every other test re-uses its stage cache, so the LFS-mode release, re-runs,
interrupted pushes and Hub errors cost only the push.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, snapshot_download
from safetensors.torch import load_file

from hubtool.cli import main
from hubtool.demo import BASE_REPO, download_and_check, release_config, train_lora
from hubtool.hub_server import serve_in_thread
from hubtool.release import build_config
from tests.peft_helpers import make_adapter
from tests.test_hub_server import TOKEN
from tests.tiny import make_tiny_llama

NAME = "tiny-chat"
BRANCH = "gptq-4bit-64g-actorder_True"  # the second GPTQ variant's branch
REPOS = {"fp16": "acme/tiny-chat", "adapter": "acme/tiny-chat-peft", "gptq": "acme/tiny-chat-GPTQ", "gguf": "acme/tiny-chat-GGUF"}
RELEASE_YAML = """\
name: tiny-chat
namespace: acme
quants: [gptq, gguf]
gptq: {presets: [gptq-4bit-32g-actorder], samples: 8, seq_len: 64}
gguf: {types: [q8_0]}
verify: {max_tokens: 256, context: 64}
serve: {prompts: ["Say hi."], max_tokens: 8}
card:
  license: apache-2.0
  base_model: acme/tiny-base
  datasets: [acme/chat-data]
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("release-inputs")
    base = make_tiny_llama(root / "base", tokenizer_dir, max_shard_size="60KB")
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# tiny base\n\nA tiny test model.\n")
    adapter = make_adapter(base, root / "adapter", r=4, lora_alpha=8)
    preset = root / "g4-64g.yaml"  # a user preset: a second GPTQ variant, pushed to its own branch
    preset.write_text("base: gptq-4bit-32g-actorder\ngroup_size: 64\n")
    text = RELEASE_YAML.replace("presets: [gptq-4bit-32g-actorder]", f"presets: [gptq-4bit-32g-actorder, {preset}]")
    heldout = root / "eval" / "heldout.txt"  # a verify text given as a path: cards must name the file, not the path
    heldout.parent.mkdir()
    from hubtool.quality.texts import builtin_text

    heldout.write_text(builtin_text("heldout"), encoding="utf-8")
    text = text.replace("verify: {max_tokens: 256, context: 64}", f"verify: {{text: {heldout}, max_tokens: 256, context: 64}}")
    config = root / "release.yaml"
    config.write_text(text)
    return {"base": base, "adapter": adapter, "config": config, "work": root / "work", "yaml": text, "root": root, "heldout": heldout}


def release_args(inputs: dict[str, Path], *extra: str) -> list[str]:
    return ["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--rope", "linear:4",
            "--config", str(inputs["config"]), "--work-dir", str(inputs["work"]), "--json", *extra]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def hub_env(root: Path, mode: str, users=None):
    """A local Hub in MODE (xet/lfs) with a private download cache; HF_TOKEN set to the test token."""
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp, serve_in_thread(root / "hub", users=users) as hub:
        mp.setattr(constants, "HF_HUB_DISABLE_XET", mode == "lfs")
        mp.setattr(constants, "HF_HUB_CACHE", str(root / "hf-cache"))
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        mp.setenv("HF_TOKEN", TOKEN)
        mp.delenv("HF_ENDPOINT", raising=False)
        hub.mode = mode
        yield hub


def remote_state(url: str, repo_id: str, revision: str = "main") -> dict[str, str]:
    return {e.path: (e.lfs.sha256 if e.lfs else e.blob_id)
            for e in HfApi(endpoint=url).list_repo_tree(repo_id, revision=revision, recursive=True) if hasattr(e, "blob_id")}


def all_state(url: str, summary: dict) -> dict[str, dict[str, str]]:
    return {f"{r['repo_id']}@{r['branch']}": remote_state(url, r["repo_id"], r["branch"]) for r in summary["repos"]}


@pytest.fixture(scope="module")
def released(inputs, tmp_path_factory):
    """The release, run once (Xet uploads); yields what it printed and the Hub it pushed to."""
    root = tmp_path_factory.mktemp("release-xet")
    from hubtool.quality import reference

    with hub_env(root, "xet") as hub:
        before = reference.COMPUTE_CALLS[0]
        rc, out, err = run_cli(release_args(inputs, "--endpoint", hub.url))
        assert rc == 0, err[-3000:]
        yield {"hub": hub, "summary": json.loads(out), "stdout": out, "stderr": err, "root": root,
               "reference_computations": reference.COMPUTE_CALLS[0] - before}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the release itself -----------------------------------------------------------------------

def test_release_layout_and_summary(released, inputs):
    s = released["summary"]
    assert s["ok"] and [(r["repo_id"], r["branch"]) for r in s["repos"]] == [(REPOS[k], "main") for k in ("fp16", "adapter", "gptq", "gguf")] + [
        (REPOS["gptq"], BRANCH)]
    assert all(r["changed"] and r["files_uploaded"] == len(r["files"]) for r in s["repos"][:4])
    # the branch starts as a copy of main: only what differs (weights, configs, card) is uploaded
    assert s["repos"][4]["changed"] and 3 <= s["repos"][4]["files_uploaded"] < len(s["repos"][4]["files"])
    files = {r["key"]: set(r["files"]) for r in s["repos"]}
    assert {"README.md", "config.json", "hubtool.json", "model.safetensors.index.json"} <= files["fp16"]
    assert files["adapter"] == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    assert {"README.md", "model.safetensors", "quantize_config.json", "tokenizer.json"} <= files["gptq"]
    assert files["gguf"] == {"README.md", f"{NAME}.Q8_0.gguf"}
    main, branch = s["repos"][2]["files"], s["repos"][4]["files"]
    assert set(branch) == set(main) and branch["model.safetensors"] != main["model.safetensors"]
    kinds = {(q["kind"], q["variant"]) for q in s["quality"]}
    assert {("gptq", "gptq-4bit-32g-actorder_True"), ("rtn", "rtn-4bit-32g-sym"), ("gptq", BRANCH), ("gguf", "Q8_0")} <= kinds
    # the plan printed to stderr before the work, and the stages ran in order
    err = released["stderr"]
    assert err.index("release plan:") < err.index("merge: running") < err.index("push: uploading")
    assert [st["name"] for st in s["stages"]][:5] == ["merge", "gptq:gptq-4bit-32g-actorder", "gptq:g4-64g", "gguf:F16-base", "gguf:Q8_0"]
    assert not any(st["cached"] for st in s["stages"])
    # one collection of the release's repos, in the order users pick them
    col = s["collection"]
    assert col["created"] and col["slug"].startswith("acme/tiny-chat-")
    items = HfApi(endpoint=released["hub"].url).get_collection(col["slug"]).items
    assert [i.item_id for i in items] == [REPOS[k] for k in ("fp16", "adapter", "gptq", "gguf")] and all(i.note for i in items)


def test_every_artifact_is_served_before_publishing_and_its_card_shows_an_answer(released):
    """fp16 and base + adapter (PEFT) and both GPTQ variants through transformers' generate, the GGUF through
    llama.cpp's server: one answer each (in quality.json's samples), and each card shows its own artifact's."""
    s = released["summary"]
    served = [(r["artifact"], r["variant"], r["what"]) for r in s["samples"]]
    assert served == [("fp16", "fp16", REPOS["fp16"]), ("adapter", "adapter", REPOS["adapter"]),
                      ("gptq", "gptq-4bit-32g-actorder", f"{REPOS['gptq']} (gptq-4bit-32g-actorder)"),
                      ("gptq", "g4-64g", f"{REPOS['gptq']} (g4-64g)"), ("gguf", "Q8_0", f"{NAME}.Q8_0.gguf")]
    assert all(r["prompt"] == "Say hi." and r["answer"] and r["finish"] in ("stop", "length") for r in s["samples"])
    seconds = {st["name"]: st["seconds"] for st in s["stages"] if st["name"].startswith("serve:")}
    assert len(seconds) == 5 and all(not st["cached"] for st in s["stages"])
    print(f"serve stages: {seconds} ({sum(seconds.values()):.1f} s of {sum(st['seconds'] for st in s['stages']):.1f} s of stages)")
    api = HfApi(endpoint=released["hub"].url)
    answers = {(r["artifact"], r["variant"]): r["answer"] for r in s["samples"]}
    for repo, revision, key in ((REPOS["fp16"], "main", ("fp16", "fp16")), (REPOS["adapter"], "main", ("adapter", "adapter")),
                                (REPOS["gptq"], "main", ("gptq", "gptq-4bit-32g-actorder")), (REPOS["gptq"], BRANCH, ("gptq", "g4-64g")),
                                (REPOS["gguf"], "main", ("gguf", "Q8_0"))):
        card = Path(api.hf_hub_download(repo, "README.md", revision=revision, cache_dir=released["root"] / "dl")).read_text()
        assert card.count("## Sample output") == 1 and f"Assistant: {answers[key]}\n" in card, (repo, revision)


def test_plan_size_estimates_are_within_15_percent_of_the_files(released):
    s = released["summary"]
    planned = {(t["repo_id"], t["branch"], f["path"]): f["size_bytes"] for t in s["plan"]["targets"] for f in t["files"]}
    gguf = next(r for r in s["quality"] if r["kind"] == "gguf")
    estimate = planned[(REPOS["gguf"], "main", f"{NAME}.Q8_0.gguf")]
    assert abs(estimate / gguf["size_bytes"] - 1) < 0.15, (estimate, gguf["size_bytes"])
    for branch, group in (("main", 32), (BRANCH, 64)):
        real = next(r for r in s["quality"] if r["kind"] == "gptq" and r["group_size"] == group)
        estimate = planned[(REPOS["gptq"], branch, "model.safetensors")]
        assert abs(estimate / real["size_bytes"] - 1) < 0.15, (branch, estimate, real["size_bytes"])


def test_one_fp16_reference_serves_every_quality_row(released):
    """Two GPTQ variants (each with an RTN row) and a GGUF: the fp16 model runs once, as its own stage."""
    s = released["summary"]
    assert released["reference_computations"] == 1
    names = [st["name"] for st in s["stages"]]
    assert names.count("verify:reference") == 1
    assert names.index("verify:reference") < min(i for i, n in enumerate(names) if n.startswith("verify:") and n != "verify:reference")
    rows = s["quality"]
    assert len(rows) == 5  # gptq x2, rtn x2, gguf
    # one fp16 baseline per table: GPTQ, RTN and GGUF rows are measured on the same windows and tokens
    assert len({round(r["ref_perplexity"], 3) for r in rows}) == 1 and len({r["tokens"] for r in rows}) == 1, rows
    import re

    n, tokens = map(int, re.search(r"fp16 reference: (\d+) window\(s\), (\d+) tokens", released["stderr"]).groups())
    assert n == 256 // 64 and tokens <= 256  # verify.max_tokens 256, context 64: never more tokens than asked for


def test_lfs_mode_release_has_identical_content(released, inputs, tmp_path):
    with hub_env(tmp_path, "lfs") as hub:
        rc, out, err = run_cli(release_args(inputs, "--endpoint", hub.url))
        assert rc == 0, err[-2000:]
        s = json.loads(out)
        assert all(st["cached"] for st in s["stages"])  # only the push ran
        assert any("/_hubtool/lfs/" in p for _, p in hub.requests) and not any("xet" in p for _, p in hub.requests)
        assert all_state(hub.url, s) == all_state(released["hub"].url, released["summary"])
        assert [r["files"] for r in s["repos"]] == [r["files"] for r in released["summary"]["repos"]]


def test_every_repo_downloads_back_identical(released):
    hub, s = released["hub"], released["summary"]
    for r in s["repos"]:
        local = Path(snapshot_download(r["repo_id"], revision=r["branch"], endpoint=hub.url, cache_dir=released["root"] / "dl"))
        got = {p.relative_to(local).as_posix(): sha256(p) for p in local.rglob("*") if p.is_file() and p.name != ".gitattributes"}
        assert got == r["files"], r["repo_id"]


def test_cards_link_the_release(released):
    from hubtool.card import check_card

    hub = released["hub"]
    api = HfApi(endpoint=hub.url)
    gguf_card = Path(api.hf_hub_download(REPOS["gguf"], "README.md", cache_dir=released["root"] / "dl")).read_text()
    meta = check_card(gguf_card)
    assert meta["base_model"] == REPOS["fp16"] and meta["base_model_relation"] == "quantized" and meta["license"] == "apache-2.0"
    assert f"{NAME}.Q8_0.gguf" in gguf_card and REPOS["gptq"] in gguf_card
    # released to a local Hub: the links to the release's repos stay on that Hub (root-relative), not huggingface.co
    assert f"](/{REPOS['gptq']})" in gguf_card and f"](/{REPOS['fp16']})" in gguf_card
    assert f"huggingface.co/{REPOS['gptq']}" not in gguf_card
    # the verify stage's numbers are in the header as model-index
    metrics = {m["type"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics == {"perplexity", "kl_divergence", "top1_agreement"}
    gptq_card = Path(api.hf_hub_download(REPOS["gptq"], "README.md", cache_dir=released["root"] / "dl")).read_text()
    assert BRANCH in gptq_card
    adapter_card = Path(api.hf_hub_download(REPOS["adapter"], "README.md", cache_dir=released["root"] / "dl")).read_text()
    assert check_card(adapter_card)["base_model"] == "acme/tiny-base"


def _ref_model(base: Path, adapter: Path):
    """PEFT's own merge of the adapter into the base with RoPE linear x4, in float32: the reference."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    theta = float(config.rope_parameters.get("rope_theta", 10000.0))
    config.rope_parameters = {"rope_type": "linear", "factor": 4.0, "rope_theta": theta}
    model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def _logits(model, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def test_downloaded_artifacts_load_and_match_reference(released, inputs):
    """fp16 + peft (transformers/PEFT), GPTQ (transformers + optimum + gptqmodel), GGUF (llama.cpp) vs the reference."""
    import llama_cpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtool.quality.metrics import compare_logits
    from hubtool.quality.texts import builtin_text

    hub = released["hub"]
    dl = {k: Path(snapshot_download(repo, endpoint=hub.url, cache_dir=released["root"] / "dl")) for k, repo in REPOS.items()}
    tok = AutoTokenizer.from_pretrained(dl["fp16"])
    ids = [tok.bos_token_id] + tok(builtin_text("heldout"), add_special_tokens=False)["input_ids"][:127]
    ref = _logits(_ref_model(inputs["base"], inputs["adapter"]), ids)

    fp16 = AutoModelForCausalLM.from_pretrained(dl["fp16"], dtype=torch.float32).eval()
    assert fp16.config.rope_parameters["rope_type"] == "linear" and fp16.config.rope_parameters["factor"] == 4.0
    np.testing.assert_allclose(_logits(fp16, ids), ref, atol=2e-2)  # fp16 rounding of the merged weights only
    peft_dl = _ref_model(inputs["base"], dl["adapter"])  # the published adapter reproduces the published merge
    np.testing.assert_allclose(_logits(peft_dl, ids), ref, atol=1e-5)

    gptq = AutoModelForCausalLM.from_pretrained(dl["gptq"], device_map="cpu", dtype=torch.float16).eval()
    assert gptq.config.quantization_config.bits == 4
    branch_dir = Path(snapshot_download(REPOS["gptq"], revision=BRANCH, endpoint=hub.url, cache_dir=released["root"] / "dl"))
    assert json.loads((dl["gptq"] / "config.json").read_text())["quantization_config"]["group_size"] == 32
    assert json.loads((branch_dir / "config.json").read_text())["quantization_config"]["group_size"] == 64
    m = compare_logits(ref, _logits(gptq, ids), np.asarray(ids))
    assert m["kl_div"] < 0.01 and m["top1"] > 0.6, m

    gguf = next(dl["gguf"].glob("*.Q8_0.gguf"))
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_batch=256, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        test = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    m = compare_logits(ref, test, np.asarray(ids))
    assert m["kl_div"] < 1e-3 and m["top1"] > 0.9, m


def test_rerun_is_noop(released, inputs):
    hub = released["hub"]
    api = HfApi(endpoint=hub.url)
    commits = {r: len(api.list_repo_commits(r)) for r in REPOS.values()}
    mark = len(hub.requests)
    rc, out, err = run_cli(release_args(inputs, "--endpoint", hub.url))
    assert rc == 0, err[-2000:]
    s = json.loads(out)
    assert all(st["cached"] for st in s["stages"]) and len(s["stages"]) == len(released["summary"]["stages"])
    assert not any(r["changed"] or r["files_uploaded"] for r in s["repos"])
    assert [r["commit"] for r in s["repos"]] == [r["commit"] for r in released["summary"]["repos"]]
    assert (s["collection"]["slug"], s["collection"]["created"], s["collection"]["changes"]) == (released["summary"]["collection"]["slug"], False, 0)
    assert {r: len(api.list_repo_commits(r)) for r in REPOS.values()} == commits
    sent = [(m, p) for m, p in hub.requests[mark:] if m in ("PUT", "POST") and ("/commit/" in p or "/_hubtool/lfs/" in p or "xorb" in p)]
    assert sent == []


@pytest.mark.parametrize("mode", ["xet", "lfs"])
def test_interrupted_release_resumes_to_identical_content(released, inputs, tmp_path, mode):
    with hub_env(tmp_path, mode) as hub:
        rule = hub.inject_fault("POST", r"/api/models/acme/tiny-chat-GPTQ/commit/", 507, times=1)  # not retried
        rc, out, err = run_cli(release_args(inputs, "--endpoint", hub.url))
        assert rc == 6 and rule.hits == 1
        summary = json.loads(out)
        assert set(summary) == {"ok", "error", "exit_code"} and summary["ok"] is False and summary["exit_code"] == 6
        # the JSON error is the same sentence the user reads on stderr, and it says what failed and what to do
        last = [line for line in err.splitlines() if line.startswith("error:")]
        assert last == [f"error: {summary['error']}"]
        assert "507" in summary["error"] and "re-run" in summary["error"]
        assert set(remote_state(hub.url, REPOS["fp16"])) > {"README.md"}  # pushed before the failure
        assert set(remote_state(hub.url, REPOS["gptq"])) == {".gitattributes"}  # nothing committed
        rc, out, err = run_cli(release_args(inputs, "--endpoint", hub.url))
        assert rc == 0, err[-2000:]
        s = json.loads(out)
        assert [r["changed"] for r in s["repos"]] == [False, False, True, True, True]
        assert all_state(hub.url, s) == all_state(released["hub"].url, released["summary"])


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("401", r"rejected the token \(401"),
        ("403", r"no write access to namespace 'bigcorp' \(403"),
        ("409", r"conflict \(409"),
        ("503", r"failed with 503"),
    ],
)
def test_hub_errors_are_clear_with_exit_code(released, inputs, tmp_path, case, expected):
    import re

    with hub_env(tmp_path, "lfs", users={TOKEN: ("alice", ["acme"])}) as hub:
        extra = ["--endpoint", hub.url]
        bad = "hf_BADbadBADbadBAD0000000000"
        if case == "401":
            os.environ["HF_TOKEN"] = bad
        elif case == "403":
            extra += ["--namespace", "bigcorp"]
        elif case == "409":
            hub.inject_fault("POST", r"/commit/", 409, times=1)
        else:
            hub.inject_fault("POST", r"/api/repos/create", 503, times=5)  # the Hub is down from the first call
        rc, out, err = run_cli(release_args(inputs, *extra))
        assert rc == 6
        assert re.search(expected, err) and re.search(expected, json.loads(out)["error"])
        last = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(last) == 1 and re.search(expected, last[0])
        assert TOKEN not in out + err and bad not in out + err


def test_token_never_in_output_or_uploaded_files(released, inputs):
    assert TOKEN not in released["stdout"] + released["stderr"]
    for root in (released["hub"].root, inputs["work"]):
        for p in Path(root).rglob("*"):
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p


def _machine_paths(inputs) -> list[str]:
    paths = {str(inputs["root"]), str(Path(inputs["root"]).resolve()), str(inputs["heldout"])}
    return sorted(paths | {str(p) for p in (inputs["base"], inputs["adapter"], inputs["work"])})


def test_nothing_machine_local_in_any_published_file(released, inputs):
    """Every file of every published repo (text and GGUF metadata) is free of this machine's paths; configs
    that name the base name the configured Hub id; the verify text is named by its file name."""
    import gguf

    from hubtool.card import check_card

    hub, s = released["hub"], released["summary"]
    needles = _machine_paths(inputs)
    assert json.loads((inputs["adapter"] / "adapter_config.json").read_text())["base_model_name_or_path"] in needles  # PEFT's own
    checked = 0
    for r in s["repos"]:
        local = Path(snapshot_download(r["repo_id"], revision=r["branch"], endpoint=hub.url, cache_dir=released["root"] / "dl"))
        for p in local.rglob("*"):
            if not p.is_file():
                continue
            if p.suffix == ".gguf":
                reader = gguf.GGUFReader(p)
                data = " ".join(str(f.contents()) for f in reader.fields.values() if not f.name.startswith("tokenizer.ggml."))
            else:
                data = p.read_bytes().decode("utf-8", errors="replace")
            assert not [n for n in needles if n in data], (r["repo_id"], p.name)
            checked += 1
        if (local / "adapter_config.json").is_file():
            assert json.loads((local / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny-base"
        if (local / "hubtool.json").is_file():
            assert json.loads((local / "hubtool.json").read_text())["adapter"]["config"]["base_model_name_or_path"] == "acme/tiny-base"
        meta = check_card((local / "README.md").read_text())
        for result in meta["model-index"][0]["results"]:
            assert result["dataset"]["type"] == "heldout.txt" and "heldout.txt" in result["dataset"]["name"]
    assert checked > 20
    assert any("hubtool.json" in r["files"] for r in s["repos"])


def test_gguf_general_metadata_is_the_cards(released):
    """general.* comes from the GGUF card's own front matter (not the PEFT README in the merged folder),
    and the check that runs after writing tells a disagreeing card from an agreeing one."""
    from hubtool.card import check_card
    from hubtool.gguf.facts import general_mismatches, general_metadata

    hub = released["hub"]
    api = HfApi(endpoint=hub.url)
    path = Path(api.hf_hub_download(REPOS["gguf"], f"{NAME}.Q8_0.gguf", cache_dir=released["root"] / "dl"))
    card = check_card(Path(api.hf_hub_download(REPOS["gguf"], "README.md", cache_dir=released["root"] / "dl")).read_text())
    got = general_metadata(path)
    assert got["general.license"] == card["license"] == "apache-2.0"
    assert card["base_model"] == REPOS["fp16"] and got["general.base_model.count"] == 1
    assert got["general.base_model.0.repo_url"] == f"https://huggingface.co/{REPOS['fp16']}"
    assert got["general.name"] == NAME and "gguf" in got["general.tags"]
    assert not [t for t in got["general.tags"] if t.startswith("base_model:")]  # PEFT's README tags are not the card's
    assert general_mismatches(path, {"license": "apache-2.0", "base_model": REPOS["fp16"], "model_name": NAME, "tags": ["gguf"]}) == []
    wrong = general_mismatches(path, {"license": "mit", "base_model": "acme/other", "tags": ["extra"]})
    assert len(wrong) == 3 and "general.license" in wrong[0]


def test_publish_refuses_a_folder_holding_a_local_path(released, inputs, tmp_path):
    """A card field that carries a local path stops the release before any push (exit 5, the Hub untouched)."""
    cfg = tmp_path / "r.yaml"
    cfg.write_text(inputs["yaml"].replace("license: apache-2.0", f"license: apache-2.0\n  description: trained from {inputs['base']}"))
    with hub_env(tmp_path, "lfs") as hub:
        args = release_args(inputs, "--endpoint", hub.url)
        args[args.index("--config") + 1] = str(cfg)
        rc, out, err = run_cli(args)
        assert rc == 5 and json.loads(out)["exit_code"] == 5
        assert "contains the local path" in json.loads(out)["error"] and "README.md" in json.loads(out)["error"]
        assert list(HfApi(endpoint=hub.url).list_models()) == []


# ---- planning and input errors (no Hub needed) -------------------------------------------------

def test_dry_run_plans_without_work(inputs, tmp_path):
    work = tmp_path / "never"
    rc, out, err = run_cli(["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--config", str(inputs["config"]),
                            "--gptq-presets", "gptq-4bit-32g-actorder,gptq-8bit-128g-actorder", "--gguf-types", "q4_k_m,q8_0",
                            "--work-dir", str(work), "--endpoint", "http://127.0.0.1:9", "--dry-run", "--json"])
    assert rc == 0, err
    plan = json.loads(out)["plan"]
    targets = [(t["repo_id"], t["branch"]) for t in plan["targets"]]
    assert targets == [(REPOS["fp16"], "main"), (REPOS["adapter"], "main"), (REPOS["gptq"], "main"),
                       (REPOS["gptq"], "gptq-8bit-128g-actorder_True"), (REPOS["gguf"], "main")]
    gguf = plan["targets"][-1]
    # two measured GGUF files: the repo also gets the size-vs-KL picture the card embeds
    assert [f["path"] for f in gguf["files"]] == [f"{NAME}.Q4_K_M.gguf", f"{NAME}.Q8_0.gguf", "frontier.png", "README.md"]
    assert all(f["size_bytes"] > 1000 for t in plan["targets"] for f in t["files"])  # no file planned at "~0.0 kB"
    q4, q8 = gguf["files"][0]["size_bytes"], gguf["files"][1]["size_bytes"]
    # 64-wide rows: every k-quant falls back to a legacy block type (Q4_K -> Q5_0, Q6_K -> Q8_0), as llama.cpp does
    assert 0.7 < q4 / q8 < 0.85 and plan["targets"][2]["files"][0]["size_bytes"] < plan["targets"][3]["files"][0]["size_bytes"]
    assert not work.exists()
    assert plan["warnings"] == []  # the config sets a license
    rc, text, _ = run_cli(["release", str(inputs["base"]), "--namespace", "me", "--quants", "gguf", "--dry-run"])
    assert rc == 0 and "me/base-GGUF@main" in text and "GPTQ" not in text and "merge " not in text
    assert "warning" not in text  # the base's own card has a license


def test_dry_run_warns_when_cards_would_have_no_license(inputs, tmp_path):
    import shutil

    source = tmp_path / "nolicense"
    shutil.copytree(inputs["base"], source)
    (source / "README.md").write_text("# a model\n\nNo header at all.\n", encoding="utf-8")
    rc, text, err = run_cli(["release", str(source), "--namespace", "me", "--quants", "gguf", "--dry-run"])
    assert rc == 0, err
    warnings = [line.strip() for line in text.splitlines() if line.strip().startswith("warning")]
    assert len(warnings) == 1 and "no license" in warnings[0] and "license" in warnings[0].split("set one")[1]


def test_custom_repo_names_from_config(inputs, tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text(inputs["yaml"] + "repos: {fp16: '{name}-fp16', gguf: 'gguf-{name}'}\nprivate: true\n")
    rc, out, _ = run_cli(["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--config", str(cfg), "--dry-run", "--json"])
    assert rc == 0
    ids = [t["repo_id"] for t in json.loads(out)["plan"]["targets"]]
    assert ids == ["acme/tiny-chat-fp16", "acme/tiny-chat-peft", "acme/tiny-chat-GPTQ", "acme/tiny-chat-GPTQ", "acme/gguf-tiny-chat"]


@pytest.mark.parametrize(
    ("yaml_text", "args", "code", "message"),
    [
        ("namse: x\n", [], 2, "unknown key 'namse'"),
        ("name: x\n", ["--quants", "gptq,awq"], 2, "--quants 'awq'"),
        ("name: x\ngguf: {types: [q9_9]}\n", [], 2, "unknown GGUF type"),
        ("name: x\nrepos: {gguf: '{name}', fp16: '{name}'}\n", [], 2, "share a name"),
        ("name: x\ngptq: {presets: [nope]}\n", [], 2, "unknown GPTQ preset"),
        ("name: x\ncard: {license: not-a-license}\n", [], 5, "license"),
    ],
)
def test_config_errors_fail_before_work(inputs, tmp_path, yaml_text, args, code, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text + "namespace: acme\n")
    work = tmp_path / "work"
    rc, out, err = run_cli(["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--config", str(cfg),
                            "--work-dir", str(work), "--endpoint", "http://127.0.0.1:9", *args])
    assert rc == code and message in err, err
    assert not (work / "stages").exists()


def test_source_or_base_adapter(inputs, tmp_path):
    rc, _, err = run_cli(["release", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--namespace", "a", "--dry-run"])
    assert rc == 2 and "not both" in err
    rc, _, err = run_cli(["release", "--base", str(inputs["base"]), "--namespace", "a", "--dry-run"])
    assert rc == 2 and "--adapter" in err
    rc, _, err = run_cli(["release", str(inputs["base"]), "--dry-run"])
    assert rc == 2 and "--namespace" in err


def test_card_only_change_recomputes_only_what_carries_the_card(released, inputs, tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text(inputs["yaml"].replace("license: apache-2.0", "license: mit"))
    with hub_env(tmp_path, "lfs") as hub:
        args = release_args(inputs, "--endpoint", hub.url)
        rc, out, err = run_cli(args)
        assert rc == 0, err[-2000:]
        args[args.index("--config") + 1] = str(cfg)
        rc, out, err = run_cli(args)
        assert rc == 0, err[-2000:]
        s = json.loads(out)
        # the license is in the GGUF files' general.license too: only the GGUF chain re-exports (and is re-verified)
        assert [st["name"] for st in s["stages"] if not st["cached"]] == ["gguf:F16-base", "gguf:Q8_0", "verify:gguf", "serve:gguf:Q8_0"]
        assert all(r["changed"] and r["files_uploaded"] == (2 if r["repo_id"] == REPOS["gguf"] else 1) for r in s["repos"])
        api = HfApi(endpoint=hub.url)
        card = api.hf_hub_download(REPOS["gguf"], "README.md", cache_dir=tmp_path / "dl")
        assert "license: mit" in Path(card).read_text()
        from hubtool.gguf.facts import general_metadata

        assert general_metadata(Path(api.hf_hub_download(REPOS["gguf"], f"{NAME}.Q8_0.gguf", cache_dir=tmp_path / "dl")))["general.license"] == "mit"


def test_source_mode_release_gguf_only(inputs, tmp_path):
    with hub_env(tmp_path, "lfs") as hub:
        rc, out, err = run_cli(["release", str(inputs["base"]), "--namespace", "me", "--quants", "gguf", "--gguf-types", "q8_0",
                                "--config", str(inputs["config"]), "--work-dir", str(tmp_path / "work"), "--endpoint", hub.url, "--json"])
        assert rc == 0, err[-2000:]
        s = json.loads(out)
        assert [(r["repo_id"], r["branch"]) for r in s["repos"]] == [("me/tiny-chat", "main"), ("me/tiny-chat-GGUF", "main")]
        assert [st["name"] for st in s["stages"]] == ["gguf:F16-base", "gguf:Q8_0", "verify:reference", "verify:gguf", "serve:fp16",
                                                      "serve:gguf:Q8_0"]
        assert "frontier.png" not in s["repos"][1]["files"]  # one GGUF file: no size-vs-KL picture to draw
        base_files = {p.name for p in inputs["base"].iterdir() if p.is_file()}
        assert set(s["repos"][0]["files"]) == base_files  # the source as is, with our card as README.md
        assert s["repos"][0]["files"]["config.json"] == sha256(inputs["base"] / "config.json")
        assert set(remote_state(hub.url, "me/tiny-chat")) == base_files | {".gitattributes"}


# ---- pieces of `hubtool demo` (the full demo on SmolLM2 takes minutes: run it by hand) -------------

def test_train_lora_is_trained_on_top_layers_with_hub_base(tiny_llama, tmp_path):
    out = train_lora(tiny_llama, tmp_path / "lora", steps=3, seq_len=32)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == BASE_REPO and cfg["layers_to_transform"] == [1] and cfg["r"] == 8
    weights = load_file(out / "adapter_model.safetensors")
    b = [t for k, t in weights.items() if "lora_B" in k]
    assert b and all(".layers.1." in k for k in weights)
    assert any(torch.count_nonzero(t) for t in b)  # PEFT initialises B to zero: non-zero means it trained
    mtime = (out / "adapter_model.safetensors").stat().st_mtime_ns
    assert train_lora(tiny_llama, out, steps=3) == out and (out / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_demo_release_config_is_valid_and_small():
    cfg = build_config(release_config(16, 256), {}, default_name="x")
    assert cfg.gptq_presets == ["gptq-4bit-32g-actorder"] and cfg.gptq_overrides == {"samples": 16, "seq_len": 256}
    assert cfg.gguf_types == ["Q4_K_M", "Q8_0"] and cfg.repo_id("gguf") == "demo/SmolLM2-135M-Instruct-demo-LoRA-32k-GGUF"
    # Llama-3-style scaling x4 of SmolLM2's 8k context: the "32k" in the name, short-range dimensions untouched
    from hubtool.merge.rope import parse_rope_arg

    rope = parse_rope_arg(cfg.rope, original_ctx=8192)
    assert rope.rope_type == "llama3" and rope.factor == 4.0 and rope.effective_context(8192) == 32768
    assert rope.extra["high_freq_factor"] > rope.extra["low_freq_factor"]


def test_download_and_check_matches_pushed_hashes(released, tmp_path):
    got = download_and_check(released["summary"], released["hub"].url, tmp_path / "dl")
    assert [(repo, branch, n) for repo, branch, _, n in got] == [(r["repo_id"], r["branch"], len(r["files"])) for r in released["summary"]["repos"]]
    assert all(Path(local, "README.md").is_file() for _, _, local, _ in got)


def test_library_failure_in_a_stage_is_one_line_with_its_exit_code(released, inputs, monkeypatch):
    import hubtool.gguf

    def boom(*args, **kwargs):
        raise RuntimeError("converter exploded\nsecond line")

    monkeypatch.setattr(hubtool.gguf, "export_gguf", boom)
    rc, out, err = run_cli(release_args(inputs, "--gguf-types", "q4_0", "--endpoint", "http://127.0.0.1:9"))
    assert rc == 4
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert "gguf:Q4_0: failed (RuntimeError: converter exploded)" in line and "re-run to resume" in line
    assert "second line" not in err and json.loads(out)["exit_code"] == 4
    assert "[1/16] merge: cached" in err and "gptq:gptq-4bit-32g-actorder: cached" in err


def test_local_hub_rehearsal(released, inputs, tmp_path):
    rc, out, err = run_cli(release_args(inputs, "--local-hub", str(tmp_path / "rehearsal")))
    assert rc == 0, err[-2000:]
    s = json.loads(out)
    assert all(r["changed"] for r in s["repos"]) and all(st["cached"] for st in s["stages"])
    with serve_in_thread(tmp_path / "rehearsal") as hub:  # the repos stay on disk for `hubtool hub serve`
        assert all_state(hub.url, s) == all_state(released["hub"].url, released["summary"])
    with pytest.raises(SystemExit) as usage:  # argparse: --local-hub and --endpoint exclude each other
        run_cli(release_args(inputs, "--local-hub", str(tmp_path / "x"), "--endpoint", "http://h"))
    assert usage.value.code == 2 and not (tmp_path / "x").exists()


def test_release_create_pr_rehearsal(released, inputs, tmp_path):
    """`--create-pr`: a changed release reaches existing repos as pull requests; main is untouched."""
    from hubtool.cli.release_cmd import format_summary

    args = release_args(inputs, "--local-hub", str(tmp_path / "hub"), "--create-pr")
    rc, out, err = run_cli(args)
    assert rc == 0, err[-2000:]
    first = json.loads(out)  # the repos did not exist: created and pushed directly
    assert all(r["changed"] and r["pr_url"] is None for r in first["repos"])
    cfg = tmp_path / "r.yaml"
    cfg.write_text(inputs["yaml"].replace("license: apache-2.0", "license: mit"))
    args[args.index("--config") + 1] = str(cfg)
    rc, out, err = run_cli(args)
    assert rc == 0, err[-2000:]
    s = json.loads(out)
    assert all(st["cached"] for st in s["stages"] if not st["name"].startswith(("gguf:", "verify:gguf")))  # GGUF carries the license
    assert len({r["pr_url"] for r in s["repos"]}) == len(s["repos"])  # one PR per repo and branch
    with serve_in_thread(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url)
        for r in s["repos"]:
            # the rehearsal Hub was on another port: compare the path
            # the license is in the GGUF files' general.license too: the GGUF PR changes its card and its file
            assert r["pr_url"].split("/", 3)[3].startswith(f"{r['repo_id']}/discussions/")
            assert r["files_uploaded"] == (2 if r["repo_id"] == REPOS["gguf"] else 1)
            num = int(r["pr_url"].rsplit("/", 1)[1])
            assert api.get_discussion_details(r["repo_id"], num).target_branch == f"refs/heads/{r['branch']}"
            assert "license: mit" in Path(api.hf_hub_download(r["repo_id"], "README.md", revision=f"refs/pr/{num}",
                                                               cache_dir=str(tmp_path / "dl"))).read_text()
        assert all_state(hub.url, first) == all_state(released["hub"].url, released["summary"])  # main and branches unchanged
    text = format_summary(s)
    assert all(f"pull request {r['pr_url']}" in text for r in s["repos"])


def test_examples_are_valid(inputs):
    import yaml

    root = Path(__file__).resolve().parents[1] / "examples"
    rc, out, err = run_cli(["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]),
                            "--config", str(root / "release.yaml"), "--dry-run", "--json"])
    assert rc == 0, err
    targets = [(t["repo_id"], t["branch"]) for t in json.loads(out)["plan"]["targets"]]
    assert targets == [("my-org/my-model-32k", "main"), ("my-org/my-model-32k-peft", "main"), ("my-org/my-model-32k-GPTQ", "main"),
                       ("my-org/my-model-32k-GPTQ", "gptq-4bit-128g-actorder_True"), ("my-org/my-model-32k-GPTQ", "gptq-8bit-128g-actorder_True"),
                       ("my-org/my-model-32k-GGUF", "main")]
    workflow = yaml.safe_load((root / "github-release.yml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    jobs = workflow["jobs"]
    assert {k: v.get("needs") for k, v in jobs.items()} == {
        "plan": None, "prepare": "plan", "quantize": ["plan", "prepare"], "verify": ["plan", "quantize"], "publish": ["plan", "verify"]}
    assert "--cache hf://" in workflow["env"]["RELEASE"] and workflow["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    runs = {k: [st["run"] for st in v["steps"] if "hubtool" in st.get("run", "")] for k, v in jobs.items()}
    assert runs["prepare"] == ['hubtool $RELEASE --stage "${{ needs.plan.outputs.prepare }}"']
    assert runs["quantize"] == ['hubtool $RELEASE --stage "${{ matrix.stages }}"']
    assert "--publish" in runs["publish"][0] and "gpu" in jobs["quantize"]["runs-on"]
    # the plan job's script, run on this release's real --plan-json, gives the outputs the other jobs read
    script = runs["plan"][0]
    program = script.split("<<'EOF' >> \"$GITHUB_OUTPUT\"\n", 1)[1].rsplit("EOF", 1)[0]
    rc, out, err = run_cli(["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]),
                            "--config", str(root / "release.yaml"), "--plan-json"])
    assert rc == 0, err
    work = inputs["work"].parent / "workflow-plan"
    work.mkdir(exist_ok=True)
    (work / "plan.json").write_text(out)
    import subprocess
    import sys
    import textwrap

    res = subprocess.run([sys.executable, "-c", textwrap.dedent(program)], cwd=work, capture_output=True, text=True, check=True)
    outputs = dict(line.split("=", 1) for line in res.stdout.splitlines())
    assert outputs["prepare"] == "merge"
    matrix = json.loads(outputs["quantize"])
    assert {m["stages"]: m["resource"] for m in matrix} == {
        "gptq:gptq-4bit-128g-actorder": "gpu", "gptq:gptq-4bit-32g-actorder": "gpu", "gptq:gptq-8bit-128g-actorder": "gpu",
        "gguf:F16-base,gguf:Q4_K_M,gguf:Q5_K_M,gguf:Q8_0": "cpu", "verify:reference": "memory"}, matrix
    verify = outputs["verify"].split(",")
    assert verify[verify.index("verify:gguf") + 1:] == ["serve:fp16", "serve:adapter", "serve:gptq:gptq-4bit-32g-actorder",
                                                         "serve:gptq:gptq-4bit-128g-actorder", "serve:gptq:gptq-8bit-128g-actorder",
                                                         "serve:gguf:Q4_K_M", "serve:gguf:Q5_K_M", "serve:gguf:Q8_0"]

def test_release_flags_for_calibration_size_and_verify_text(inputs, tmp_path):
    """`--gptq-samples N` and `--verify-text FILE` as the subcommands have them; flags win over release.yaml."""
    base = ["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--config", str(inputs["config"]),
            "--work-dir", str(tmp_path / "never"), "--dry-run", "--json"]
    keys = {}
    for extra in ([], ["--gptq-samples", "16"], ["--verify-text", "builtin:heldout"]):
        rc, out, err = run_cli(base + extra)
        assert rc == 0, err
        keys[tuple(extra)] = {s["name"]: s["key"] for s in json.loads(out)["plan"]["stages"]}
    plain, samples, text = keys[()], keys[("--gptq-samples", "16")], keys[("--verify-text", "builtin:heldout")]
    assert samples["gptq:gptq-4bit-32g-actorder"] != plain["gptq:gptq-4bit-32g-actorder"] and samples["merge"] == plain["merge"]
    assert text["verify:reference"] != plain["verify:reference"] and text["gptq:gptq-4bit-32g-actorder"] == plain["gptq:gptq-4bit-32g-actorder"]
    cfg = build_config({"gptq": {"samples": 8}}, {"namespace": "a", "gptq_samples": 16, "verify_text": str(inputs["heldout"]),
                                                 "verify_dataset": "acme/heldout"}, default_name="x")
    assert cfg.gptq_overrides["samples"] == 16 and cfg.verify_text == str(inputs["heldout"]) and cfg.verify_dataset == "acme/heldout"
    rc, out, err = run_cli(base + ["--gptq-samples", "0"])
    assert rc == 2 and "--gptq-samples" in err
    rc, out, err = run_cli(base + ["--verify-dataset", "/data/heldout"])
    assert rc == 2 and "--verify-dataset" in err


def test_a_mistyped_release_option_prints_the_release_usage(inputs, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["release", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--gptq-smaples", "16", "--dry-run"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: hubtool release" in err and "unrecognized arguments: --gptq-smaples" in err
    assert "{merge," not in err  # not the top-level usage listing every command
    with pytest.raises(SystemExit):
        main(["quantize", "gguf", "--nope"])
    assert "usage: hubtool quantize gguf" in capsys.readouterr().err
