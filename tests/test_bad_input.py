"""Bad input, as a new user gives it, must end in one `error:` line naming the file and the fix:
non-zero exit, no traceback, nothing half-written (no temp leftovers beside the output or in the
temp folder), and the user's files unchanged.

Most cases run the CLI in-process (hubtool.cli.main). Read-only and full disks are simulated at the
OS boundary in-process (os.mkdir / os.open / the shard writer's open raising EROFS / ENOSPC, and
shutil.disk_usage reporting little space), because the tests run as root where chmod stops nothing
and `mount -o ro` needs privileges CI may not have. Signals are sent to a real subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubtool.cli import main
from tests.peft_helpers import make_adapter
from tests.tiny import make_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_" + "Zx9" * 10


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_cli(args: list[str]) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return Result(rc, out.getvalue(), err.getvalue())


def assert_one_error(res: Result, code: int, *needles: str) -> str:
    """Exit CODE, exactly one `error:` line containing every needle, no traceback, no token."""
    assert res.rc == code, (res.rc, res.err[-2000:])
    errors = [line for line in res.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.err[-2000:]
    assert "Traceback" not in res.err and "Traceback" not in res.out
    assert TOKEN not in res.err + res.out
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def leftovers(*roots: Path) -> list[Path]:
    """Temp outputs a failed run must not leave: `.X.tmp-*`, `.X.old-*`, `.hubtool-*`."""
    found = []
    for root in roots:
        if root.exists():
            found += [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name or p.name.startswith(".hubtool-")]
    return found


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ROOT with its content hash: the user's files must come through unchanged."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def adapter(tiny_llama: Path, tmp_path_factory) -> Path:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("bad-input") / "adapter", target_modules=["q_proj", "v_proj"])


@pytest.fixture
def user_adapter(adapter: Path, tmp_path: Path) -> Path:
    """A copy of the adapter the test may corrupt."""
    return Path(shutil.copytree(adapter, tmp_path / "adapter"))


@pytest.fixture
def base_copy(tiny_llama: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_llama, tmp_path / "base"))


# ---- merge: adapter config values ---------------------------------------------------------------

@pytest.mark.parametrize(("edit", "needle"), [
    (lambda c: [c], "expected a JSON object"),
    (lambda c: {**c, "r": "eight"}, "r = 'eight'"),
    (lambda c: {**c, "lora_alpha": "sixteen"}, "lora_alpha = 'sixteen'"),
    (lambda c: {**c, "lora_alpha": None}, "lora_alpha = None"),
    (lambda c: {**c, "r": 0}, "r = 0"),
    (lambda c: {**c, "rank_pattern": {"q_proj": "x"}}, "rank_pattern['q_proj']"),
    (lambda c: {**c, "alpha_pattern": [16, 32]}, "alpha_pattern must be a mapping"),
    (lambda c: {**c, "alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern['q_proj']"),
    (lambda c: {**c, "use_rslora": "yes"}, "use_rslora"),
])
def test_merge_bad_adapter_config(tiny_llama, user_adapter, tmp_path, edit, needle):
    cfg = user_adapter / "adapter_config.json"
    cfg.write_text(json.dumps(edit(json.loads(cfg.read_text()))))
    before = snapshot(user_adapter)
    res = run_cli(["merge", tiny_llama, user_adapter, "-o", tmp_path / "out"])
    assert_one_error(res, 2, str(cfg), needle)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    assert snapshot(user_adapter) == before


@pytest.mark.parametrize("spec", ["linear:nan", "linear:inf", "linear:1e309", "linear:-inf", "yarn:2,original_max_position_embeddings=4096,beta_fast=nan"])
def test_merge_rope_non_finite(tiny_llama, adapter, tmp_path, spec):
    res = run_cli(["merge", tiny_llama, adapter, "-o", tmp_path / "out", "--rope", spec])
    assert_one_error(res, 2, f"--rope {spec}", "finite")
    assert not (tmp_path / "out").exists()


def test_merge_max_position_embeddings_zero(tiny_llama, adapter, tmp_path):
    res = run_cli(["merge", tiny_llama, adapter, "-o", tmp_path / "out", "--rope", "linear:2", "--max-position-embeddings", "0"])
    assert_one_error(res, 2, "--max-position-embeddings", ">= 1")
    assert not (tmp_path / "out").exists()


def test_rope_api_keeps_explicit_context():
    """apply_to_config must not treat 0 as 'unset' and silently write the default context."""
    from hubtool.errors import InputError
    from hubtool.merge.rope import apply_to_config, parse_rope_arg

    with pytest.raises(InputError, match="below the base context"):
        apply_to_config({"max_position_embeddings": 2048}, parse_rope_arg("linear:2"), max_position_embeddings=0)


@pytest.mark.parametrize("which", ["base", "adapter", "inside-base"])
def test_merge_overwrite_refuses_input_folder(base_copy, user_adapter, which):
    out = {"base": base_copy, "adapter": user_adapter, "inside-base": base_copy / "merged"}[which]
    before_base, before_adapter = snapshot(base_copy), snapshot(user_adapter)
    res = run_cli(["merge", base_copy, user_adapter, "-o", out, "--overwrite"])
    assert_one_error(res, 2, str(out), "input")
    assert snapshot(base_copy) == before_base and snapshot(user_adapter) == before_adapter
    assert not leftovers(base_copy.parent)


def test_quantize_gptq_overwrite_refuses_input_folder(base_copy):
    before = snapshot(base_copy)
    res = run_cli(["quantize", "gptq", base_copy, "-o", base_copy, "--overwrite"])
    assert_one_error(res, 2, str(base_copy), "input")
    assert snapshot(base_copy) == before and not leftovers(base_copy.parent)


# ---- output locations: read-only, full, wrong kind -----------------------------------------------

@contextlib.contextmanager
def read_only(root: Path, err: int = errno.EROFS):
    """Every create under ROOT fails with ERR, as on a read-only mount (reads still work)."""
    real_mkdir, real_open = os.mkdir, os.open
    root_s = str(root)

    def mkdir(path, *a, **k):
        if os.path.isdir(path):  # the kernel reports EEXIST before EROFS
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
        if os.fspath(path).startswith(root_s):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_mkdir(path, *a, **k)

    def open_(path, flags, *a, **k):
        if os.fspath(path).startswith(root_s) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_open(path, flags, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "mkdir", mkdir)
        mp.setattr(os, "open", open_)
        yield


def test_merge_read_only_output(tiny_llama, adapter, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        res = run_cli(["merge", tiny_llama, adapter, "-o", ro / "merged"])
    assert_one_error(res, 2, str(ro), "read-only")
    assert list(ro.iterdir()) == []


def test_merge_disk_full_midway(tiny_llama, adapter, tmp_path, monkeypatch):
    """ENOSPC from the shard writer's thread: one line naming the output and the free space, temp folder gone."""
    import hubtool.merge.shard_writer as sw

    class FullDisk(io.RawIOBase):
        def __init__(self, path, mode):
            self._f = open(path, mode)
            self.written = 0

        def write(self, data):
            self.written += len(data)
            if self.written > 20_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def close(self):
            self._f.close()

    monkeypatch.setattr(sw, "open", FullDisk, raising=False)
    res = run_cli(["merge", tiny_llama, adapter, "-o", tmp_path / "merged"])
    assert_one_error(res, 2, str(tmp_path / "merged"), "disk full", "free")
    assert not (tmp_path / "merged").exists() and not leftovers(tmp_path)


def test_card_render_read_only(tiny_llama, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        res = run_cli(["card", "render", "merged", tiny_llama, "--set", "license=mit", "-o", ro / "README.md"])
    assert_one_error(res, 2, "read-only")
    assert list(ro.iterdir()) == []


def test_card_render_output_is_existing_dir(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run_cli(["card", "render", "merged", tiny_llama, "--set", "license=mit", "-o", out, "--overwrite"])
    assert_one_error(res, 2, str(out), "is a folder")
    assert snapshot(out) == {"keep.txt": hashlib.sha256(b"mine").hexdigest()} and not leftovers(tmp_path)


def test_staged_file_cleans_up_when_replace_fails(tmp_path, monkeypatch):
    """os.replace failing (e.g. target became a folder) must not leave the temp file behind."""
    from hubtool.atomic import staged_file

    target = tmp_path / "card.md"
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == target:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(Exception), staged_file(target) as tmp:
        tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_restores_previous_output_when_replace_fails(tmp_path, monkeypatch):
    from hubtool.atomic import staged_dir

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == target and ".tmp-" in str(src):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError), staged_dir(target, overwrite=True) as tmp:
        (tmp / "weights").write_text("new")
    assert (target / "weights").read_text() == "old" and not leftovers(tmp_path)


def test_quantize_gguf_output_is_a_file(tiny_llama, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_text("mine")
    res = run_cli(["quantize", "gguf", tiny_llama, "-o", out, "--types", "q8_0"])
    assert_one_error(res, 2, str(out), "is a file")
    assert out.read_text() == "mine"


def test_quantize_gguf_read_only(tiny_llama, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        res = run_cli(["quantize", "gguf", tiny_llama, "-o", ro / "gguf", "--types", "q8_0"])
    assert_one_error(res, 2, str(ro / "gguf"), "read-only")
    assert list(ro.iterdir()) == []


def test_quantize_gguf_disk_full_blames_the_disk(tiny_llama, tmp_path, monkeypatch):
    """Not 'llama.cpp converter failed ... fix the model folder': the disk, with the space needed."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    before = snapshot(tiny_llama)
    res = run_cli(["quantize", "gguf", tiny_llama, "-o", tmp_path / "gguf", "--types", "q8_0"])
    line = assert_one_error(res, 2, str(tmp_path / "gguf"), "disk space", "needs about", "10.0 kB free")
    assert "model folder" not in line
    assert not (tmp_path / "gguf").exists() and snapshot(tiny_llama) == before


def test_describe_os_error_full_disk_says_free_space(tmp_path):
    from hubtool.errors import describe_os_error

    text = describe_os_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "out", need_bytes=3_000_000_000)
    assert text.startswith(f"{tmp_path / 'out'}: disk full (needs about 3.0 GB, ") and "free)" in text


def test_release_stage_disk_error_blames_the_disk(tmp_path):
    """A stage failing with ENOSPC reports the disk, not '<stage>: failed (OSError ...)'; the stage folder is gone."""
    from hubtool.errors import QuantizeError
    from hubtool.release.cache import Hasher
    from hubtool.release.graph import Stage
    from hubtool.release.store import StageStore

    cache = StageStore(tmp_path / "work", Hasher(tmp_path / "work"))

    def fill(out: Path):
        out.mkdir(parents=True)
        (out / "partial.gguf").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "partial.gguf"))

    with pytest.raises(QuantizeError, match="disk full") as exc:
        cache.run(Stage("gguf:Q8_0", "gguf", "k1", ()), fill)
    assert "failed (OSError" not in str(exc.value)
    assert [p.name for p in (tmp_path / "work" / "stages").iterdir()] == ["locks"]
    assert list((tmp_path / "work" / "stages" / "locks").iterdir()) == []


def test_release_stage_reruns_clean_after_a_killed_attempt(tmp_path):
    """A stage folder without stage.json (SIGKILL, power loss) is wiped before the stage runs again."""
    from hubtool.artifacts import STAGE_RECORD, GGUFFiles
    from hubtool.release.cache import Hasher
    from hubtool.release.graph import Stage
    from hubtool.release.store import StageStore

    stage = Stage("gguf:Q8_0", "gguf", "k1", ())

    def first(out: Path):
        out.mkdir(parents=True)
        (out.parent / ".hubtool-gguf-abc").mkdir()
        return GGUFFiles(out)

    store = StageStore(tmp_path / "work", Hasher(tmp_path / "work"))
    done = store.run(stage, first)
    (done.folder.parent / STAGE_RECORD).unlink()  # as if killed before the stage finished
    seen = []
    again = StageStore(tmp_path / "work", Hasher(tmp_path / "work"))
    again.run(stage, lambda out: seen.append(sorted(p.name for p in out.parent.iterdir())) or GGUFFiles(out))
    assert seen == [[]] and not again.ran[0]["cached"] and not leftovers(tmp_path)


@pytest.mark.parametrize("flag", ["--work-dir", "--local-hub"])
def test_release_folder_option_is_a_file(tiny_llama, tmp_path, flag):
    f = tmp_path / "a-file"
    f.write_text("mine")
    args = ["release", tiny_llama, "--namespace", "me", "--quants", "gguf", flag, f, "--dry-run"]
    if flag == "--local-hub":
        args += ["--work-dir", tmp_path / "work"]
    assert_one_error(run_cli(args), 2, str(f), flag, "is a file")
    assert f.read_text() == "mine"


@pytest.mark.parametrize("flag", ["--work-dir", "--local-hub"])
def test_release_folder_option_read_only(tiny_llama, tmp_path, flag):
    ro = tmp_path / "ro"
    ro.mkdir()
    args = ["release", tiny_llama, "--namespace", "me", "--quants", "gguf", "--gguf-types", "q8_0", flag, ro / "x"]
    if flag == "--local-hub":
        args += ["--work-dir", tmp_path / "work"]
    with read_only(ro):
        res = run_cli(args)
    assert_one_error(res, 2, str(ro / "x"), "read-only")
    assert list(ro.iterdir()) == []


# ---- text inputs: binary, UTF-16, folders --------------------------------------------------------

BAD_TEXT = {
    "utf16": "license: mit\n".encode("utf-16"),
    "binary": bytes(range(256)) * 4,
    "latin1": "license: caf\xe9\n".encode("latin-1"),
}


@pytest.mark.parametrize("kind", list(BAD_TEXT))
def test_card_check_not_utf8(tmp_path, kind):
    card = tmp_path / "README.md"
    card.write_bytes(BAD_TEXT[kind])
    assert_one_error(run_cli(["card", "check", card]), 5, str(card), {"utf16": "UTF-16", "binary": "binary", "latin1": "not UTF-8"}[kind])


@pytest.mark.parametrize("kind", list(BAD_TEXT))
def test_card_render_meta_not_utf8(tiny_llama, tmp_path, kind):
    meta = tmp_path / "meta.yaml"
    meta.write_bytes(BAD_TEXT[kind])
    res = run_cli(["card", "render", "merged", tiny_llama, "--meta", meta, "-o", tmp_path / "README.md"])
    assert_one_error(res, 5, str(meta))
    assert not (tmp_path / "README.md").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("key", ["config", "verify.text", "gptq.calibration"])
@pytest.mark.parametrize("kind", ["utf16", "binary"])
def test_release_text_files_not_utf8(tiny_llama, tmp_path, key, kind):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(BAD_TEXT[kind])
    cfg = tmp_path / "release.yaml"
    if key == "config":
        cfg = bad
    elif key == "verify.text":
        cfg.write_text(f"verify: {{text: {bad}}}\n")
    else:
        cfg.write_text(f"gptq: {{calibration: {bad}}}\n")
    res = run_cli(["release", tiny_llama, "--namespace", "me", "--config", cfg, "--work-dir", tmp_path / "work", "--dry-run"])
    assert_one_error(res, 2, str(bad), "UTF-16" if kind == "utf16" else "binary")
    assert not (tmp_path / "work").exists()


def test_quantize_gguf_calibration_not_utf8(tiny_llama, tmp_path):
    bad = tmp_path / "calib.txt"
    bad.write_bytes(BAD_TEXT["utf16"])
    res = run_cli(["quantize", "gguf", tiny_llama, "-o", tmp_path / "gguf", "--types", "iq4_xs", "--calibration", bad])
    assert_one_error(res, 2, str(bad), "UTF-16")
    assert not (tmp_path / "gguf").exists() and not leftovers(tmp_path)


def test_text_source_jsonl_not_utf8_and_wrong_field(tmp_path):
    from hubtool.errors import InputError
    from hubtool.quality.texts import read_text_source

    bad = tmp_path / "t.jsonl"
    bad.write_bytes(BAD_TEXT["latin1"])
    with pytest.raises(InputError, match=r"t\.jsonl:1: text file is not UTF-8"):
        read_text_source(str(bad))
    bad.write_text('{"text": 5}\n')
    with pytest.raises(InputError, match="'text' field"):
        read_text_source(str(bad))


# ---- YAML: aliases, duplicates; JSON of the wrong shape; templates -------------------------------

def test_meta_self_referencing_alias(tiny_llama, tmp_path):
    meta = tmp_path / "meta.yaml"
    meta.write_text("license: mit\ntags: &t [a, *t]\n")
    res = run_cli(["card", "render", "merged", tiny_llama, "--meta", meta, "-o", tmp_path / "README.md"])
    assert_one_error(res, 5, f"{meta}:2", "refers to the node that contains it")


def test_meta_alias_bomb_refused_fast(tiny_llama, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    meta = tmp_path / "meta.yaml"
    meta.write_text("license: mit\n" + "\n".join(lines) + "\n")
    start = time.monotonic()
    res = run_cli(["card", "render", "merged", tiny_llama, "--meta", meta, "-o", tmp_path / "README.md"])
    assert time.monotonic() - start < 20
    assert_one_error(res, 5, str(meta), "expand to more than")


def test_few_aliases_still_work():
    from hubtool.yamlfile import load_yaml_text

    assert load_yaml_text("base: &b {x: 1}\nother: *b\n") == {"base": {"x": 1}, "other": {"x": 1}}


def test_meta_duplicate_key(tiny_llama, tmp_path):
    meta = tmp_path / "meta.yaml"
    meta.write_text("license: mit\ndatasets: [a/b]\nlicense: apache-2.0\n")
    res = run_cli(["card", "render", "merged", tiny_llama, "--meta", meta, "-o", tmp_path / "README.md"])
    assert_one_error(res, 5, f"{meta}:3", "duplicate key 'license'")
    assert not (tmp_path / "README.md").exists()


def test_card_check_duplicate_key(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: mit\nlicense: apache-2.0\n---\n# model\n\nText.\n")
    assert_one_error(run_cli(["card", "check", card]), 5, str(card), "duplicate key 'license'")


def test_release_config_duplicate_key(tiny_llama, tmp_path):
    cfg = tmp_path / "release.yaml"
    cfg.write_text("name: a\nname: b\n")
    res = run_cli(["release", tiny_llama, "--namespace", "me", "--config", cfg, "--dry-run"])
    assert_one_error(res, 2, f"{cfg}:2", "duplicate key 'name'")


def test_template_recursive_macro(tiny_llama, tmp_path):
    tdir = tmp_path / "templates"
    tdir.mkdir()
    (tdir / "merged.md.j2").write_text("{% macro loop(n) %}{{ loop(n + 1) }}{% endmacro %}{{ loop(0) }}\n")
    res = run_cli(["card", "render", "merged", tiny_llama, "--set", "license=mit", "--template-dir", tdir, "-o", tmp_path / "README.md"])
    assert_one_error(res, 5, "merged.md.j2", "recursion")
    assert not (tmp_path / "README.md").exists()


@pytest.mark.parametrize("content", ["[1, 2]", '{"rows": {"a": 1}}', '{"rows": [1]}', '"text"'])
def test_card_render_results_wrong_shape(tiny_llama, tmp_path, content):
    results = tmp_path / "quality.json"
    results.write_text(content)
    res = run_cli(["card", "render", "gguf", tiny_llama, "--set", "license=mit", "--results", results, "-o", tmp_path / "README.md"])
    assert_one_error(res, 2, str(results), "quality.json")


# ---- cards: silent passes --------------------------------------------------------------------------

def test_local_path_base_model_tag(tiny_llama, tmp_path):
    """PEFT's README carries `base_model:adapter:/local/path`: not carried into our card, refused by check."""
    model = Path(shutil.copytree(tiny_llama, tmp_path / "merged"))
    (model / "README.md").write_text(f"---\nlibrary_name: peft\ntags:\n- base_model:adapter:{tiny_llama}\n- lora\n---\n# x\n")
    out = tmp_path / "card.md"
    res = run_cli(["card", "render", "merged", model, "--set", "license=mit", "-o", out])
    assert res.rc == 0, res.err
    assert "base_model:adapter" not in out.read_text() and "- lora" in out.read_text()
    bad = tmp_path / "bad.md"
    bad.write_text(f"---\nlicense: mit\ntags:\n- base_model:adapter:{tiny_llama}\n---\n# x\n\nText.\n")
    assert_one_error(run_cli(["card", "check", bad]), 5, str(bad), "local path")
    ok = tmp_path / "ok.md"
    ok.write_text("---\nlicense: mit\ntags:\n- base_model:adapter:org/base\n---\n# x\n\nText.\n")
    assert run_cli(["card", "check", ok]).rc == 0


# ---- release.yaml values and --dry-run -------------------------------------------------------------

@pytest.mark.parametrize(("yaml_text", "needles"), [
    ("rope: linear:nan\n", ["release.yaml: rope linear:nan", "finite"]),
    ("rope: 4\n", ["release.yaml: rope", "TYPE:FACTOR"]),
    ("rope: 'linear:0.5'\n", ["release.yaml: rope", "factor"]),
    ("dtype: float99\n", ["release.yaml: dtype", "float99", "float16"]),
    ("gguf: {split_max_size: lots}\n", ["release.yaml: gguf.split_max_size", "'lots'"]),
    ("gguf: {split_max_size: -1G}\n", ["release.yaml: gguf.split_max_size"]),
    ("gguf: {types: q4_k_m}\nmax_position_embeddings: 0\nrope: 'linear:2'\n", ["release.yaml: max_position_embeddings", ">= 1"]),
    ("gguf: {types: [q9_9]}\n", ["release.yaml: gguf.types", "q9_9"]),
    ("gguf: {types: 5}\n", ["release.yaml: gguf.types"]),
    ("gptq: {damp_percent: 2}\nquants: [gptq]\n", ["gptq.damp_percent"]),
    ("verify: {text: /nonexistent/heldout.txt}\n", ["release.yaml: verify.text", "/nonexistent/heldout.txt", "not found"]),
    ("gptq: {calibration: /nonexistent/cal.txt}\nquants: [gptq]\n", ["release.yaml: gptq.calibration", "not found"]),
    ("verify: {text: 'builtin:nope'}\n", ["verify.text"]),
    ("verify: {rtn: maybe}\n", ["verify.rtn"]),
    ("verify: {gates: {min_top1: 2}}\n", ["release.yaml: verify.gates.min_top1"]),
    ("verify: {gates: {max_kl: fast}}\n", ["release.yaml: verify.gates.max_kl"]),
    ("verify: {gates: {top5: 0.9}}\n", ["release.yaml: verify.gates", "top5"]),
    ("name: a..b\n", ["release.yaml: name", "'a..b'"]),
    ("name: a--b\n", ["release.yaml: name", "'a--b'"]),
    ("name: x.\n", ["release.yaml: name", "'x.'"]),
    ("name: ok\nrepos: {gguf: '{name}-'}\n", ["repos.gguf", "'ok-'"]),
])
def test_release_yaml_values_fail_before_work(tiny_llama, adapter, tmp_path, yaml_text, needles):
    """Validated up front, in --dry-run too, naming release.yaml's key, never a flag `release` lacks."""
    cfg = tmp_path / "release.yaml"
    cfg.write_text(yaml_text.replace("release.yaml", str(cfg)))
    work = tmp_path / "work"
    for dry in (["--dry-run"], []):
        res = run_cli(["release", "--base", tiny_llama, "--adapter", adapter, "--namespace", "me", "--config", cfg,
                       "--work-dir", work, "--local-hub", tmp_path / "hub", *dry])
        line = assert_one_error(res, 2, *[n.replace("release.yaml", str(cfg)) for n in needles])
        for flag in ("--dtype", "--split-max-size", "--set", "--types"):
            assert flag not in line
        assert not work.exists() and not (tmp_path / "hub").exists()


@pytest.mark.parametrize(("args", "needles"), [
    (["--rope", "linear:nan"], ["--rope linear:nan", "finite"]),
    (["--rope", "linear:2", "--max-position-embeddings", "0"], ["--max-position-embeddings", ">= 1"]),
    (["--name", "a..b"], ["--name", "'a..b'"]),
    (["--name", "x."], ["--name", "'x.'"]),
    (["--namespace", "a--b"], ["--namespace", "'a--b'"]),
    (["--gguf-types", "q9"], ["--gguf-types", "'q9'"]),
])
def test_release_flags_name_the_flag(tiny_llama, adapter, tmp_path, args, needles):
    res = run_cli(["release", "--base", tiny_llama, "--adapter", adapter, "--namespace", "me", "--work-dir", tmp_path / "w", "--dry-run", *args])
    assert_one_error(res, 2, *needles)


@pytest.mark.parametrize(("card", "code", "needle"), [
    ("{license: not-a-license}", 5, "license 'not-a-license'"),
    (f"{{license: mit, description: 'token {TOKEN}'}}", 5, "token"),
    ("{license: mit, base_model: /home/me/base}", 5, "local path"),
    ("{license: mit, language: [english]}", 5, "language"),
])
def test_release_dry_run_checks_cards(tiny_llama, adapter, tmp_path, card, code, needle):
    """A green dry run must mean a valid release: card metadata is checked too (and no token is echoed)."""
    cfg = tmp_path / "release.yaml"
    cfg.write_text(f"card: {card}\n")
    res = run_cli(["release", "--base", tiny_llama, "--adapter", adapter, "--namespace", "me", "--config", cfg,
                   "--work-dir", tmp_path / "w", "--dry-run"])
    assert_one_error(res, code, needle)


def test_release_dry_run_passes_when_valid(tiny_llama, adapter, tmp_path):
    cfg = tmp_path / "release.yaml"
    cal = tmp_path / "cal.txt"
    cal.write_text("Some calibration text.\n" * 50)
    cfg.write_text(f"card: {{license: mit, base_model: acme/base}}\ngptq: {{calibration: {cal}}}\ngguf: {{split_max_size: 2G}}\nrope: 'linear:2'\n"
                   "verify: {gates: {min_top1: 0.9, max_kl: null}}\n")
    res = run_cli(["release", "--base", tiny_llama, "--adapter", adapter, "--namespace", "me", "--config", cfg,
                   "--work-dir", tmp_path / "w", "--dry-run"])
    assert res.rc == 0, res.err
    assert "release plan:" in res.out and not (tmp_path / "w").exists()


def test_gates_config_parsing():
    from hubtool.quality.gates import DEFAULT_GATES, gates_from_config

    g = gates_from_config({"min_top1": 0.9, "max_kl": None}, source="x")
    assert (g.min_top1, g.max_kl, g.max_ppl_ratio, g.enabled) == (0.9, None, DEFAULT_GATES.max_ppl_ratio, True)
    assert gates_from_config(False, source="x").enabled is False
    assert gates_from_config(None, source="x") == DEFAULT_GATES


# ---- verify: options and quality gates -------------------------------------------------------------

@pytest.mark.parametrize(("cmd", "flag", "value"), [
    ("gguf", "--context", "0"), ("gguf", "--max-tokens", "-5"), ("gptq", "--context", "0"), ("gptq", "--tokens", "0"),
    ("gptq", "--max-tokens", "0"),
])
def test_verify_bad_numbers(tiny_llama, tmp_path, cmd, flag, value):
    res = run_cli(["verify", cmd, tmp_path, "--reference", tiny_llama, flag, value])
    assert_one_error(res, 2, flag, ">=")


@pytest.mark.parametrize(("flag", "value"), [("--min-top1", "1.5"), ("--max-kl", "-1"), ("--max-ppl-ratio", "0.5"), ("--max-kl", "nan")])
def test_verify_bad_gate_flags(tiny_llama, tmp_path, flag, value):
    assert_one_error(run_cli(["verify", "gguf", tmp_path, "--reference", tiny_llama, flag, value]), 2, flag)


def test_gate_messages_carry_the_numbers():
    from hubtool.errors import QuantizeError
    from hubtool.quality.gates import DEFAULT_GATES, check_rows

    good = {"kind": "gguf", "variant": "Q4_K_M", "top1": 0.93, "kl_div": 0.03, "perplexity": 12.0, "ref_perplexity": 11.8}
    rtn = {"kind": "rtn", "variant": "rtn-2bit", "top1": 0.01, "kl_div": 9.0, "perplexity": 900.0, "ref_perplexity": 11.8}
    check_rows([good, rtn], DEFAULT_GATES, how_to_change="flags")  # a sound quant and an ungated baseline pass
    bad = {"kind": "gguf", "variant": "Q4_K_M", "top1": 0.0, "kl_div": 7.5, "perplexity": 400.0, "ref_perplexity": 11.8}
    with pytest.raises(QuantizeError, match=r"gguf Q4_K_M: top-1 0\.000 < 0\.45, KL 7\.5000 > 1, perplexity 400\.000 = 33\.90x"):
        check_rows([good, bad], DEFAULT_GATES, how_to_change="flags")
    nan = {**good, "kl_div": float("nan")}
    with pytest.raises(QuantizeError, match="KL nan"):
        check_rows([nan], DEFAULT_GATES, how_to_change="flags")


def test_low_bit_types_get_the_low_bit_floor_unless_the_user_sets_gates():
    from hubtool.errors import QuantizeError
    from hubtool.quality.gates import DEFAULT_GATES, LOW_BIT_GATES, check_rows, gates_from_config

    iq2 = {"kind": "gguf", "variant": "IQ2_XS", "top1": LOW_BIT_GATES.min_top1 + 0.05, "kl_div": LOW_BIT_GATES.max_kl - 0.1,
           "perplexity": 30.0, "ref_perplexity": 20.0}
    assert iq2["top1"] < DEFAULT_GATES.min_top1  # would fail the standard floor
    check_rows([iq2], DEFAULT_GATES, how_to_change="x")
    with pytest.raises(QuantizeError, match="IQ2_XS: top-1"):
        check_rows([iq2], gates_from_config({"min_top1": DEFAULT_GATES.min_top1}, source="x"), how_to_change="x")
    q4 = {**iq2, "variant": "Q4_K_M"}
    with pytest.raises(QuantizeError, match="Q4_K_M: top-1"):
        check_rows([q4], DEFAULT_GATES, how_to_change="x")
    gptq3 = {**iq2, "kind": "gptq", "variant": "gptq-3bit-128g", "bits": 3}
    check_rows([gptq3], DEFAULT_GATES, how_to_change="x")


@pytest.fixture(scope="module")
def tiny_q8(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q8") / "gguf"
    res = run_cli(["quantize", "gguf", tiny_llama, "-o", out, "--types", "q8_0", "--name", "tiny"])
    assert res.rc == 0, res.err
    return out


@pytest.mark.parametrize("kind", ["utf16", "binary"])
def test_verify_gguf_text_not_utf8(tiny_q8, tiny_llama, tmp_path, kind):
    bad = tmp_path / "heldout.txt"
    bad.write_bytes(BAD_TEXT[kind])
    res = run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--text", bad])
    assert_one_error(res, 2, str(bad), "UTF-16" if kind == "utf16" else "binary")


def test_verify_gguf_wrong_reference_fails_the_gate(tiny_q8, tiny_llama, tokenizer_dir, tmp_path):
    other = make_tiny_llama(tmp_path / "other", tokenizer_dir, seed=7)
    res = run_cli(["verify", "gguf", tiny_q8, "--reference", other, "--max-tokens", "256", "--context", "64", "--json"])
    line = assert_one_error(res, 4, "quality gate failed", "Q8_0", "top-1 0.0", "wrong reference")
    assert json.loads(res.out)[0]["top1"] < 0.1  # the numbers are still reported
    ok = run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--max-tokens", "256", "--context", "64", "--json"])
    assert ok.rc == 0, ok.err
    assert json.loads(ok.out)[0]["top1"] > 0.9
    relaxed = run_cli(["verify", "gguf", tiny_q8, "--reference", other, "--max-tokens", "256", "--context", "64", "--no-gates"])
    assert relaxed.rc == 0 and "--no-gates" in line


# ---- signals ----------------------------------------------------------------------------------------

SLOW_MERGE = """
import sys, time
import hubtool.merge.shard_writer as sw
_write = sw.ShardWriter.write
def slow(self, *a, **k):
    time.sleep(0.3)
    return _write(self, *a, **k)
sw.ShardWriter.write = slow
from hubtool.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _env(tmp: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if tmp is not None:  # a private temp folder, so the test can see what the run left in it
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp)
    return env


def _wait_for(pred, proc, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out waiting for the run to start writing"
        time.sleep(0.05)


def _exists(root: Path, pattern: str) -> bool:
    try:
        return any(True for _ in root.rglob(pattern))
    except OSError:  # the tree changes under us
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_mid_merge_leaves_nothing(tiny_llama, adapter, tmp_path, sig):
    out = tmp_path / "work" / "merged"
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, "merge", str(tiny_llama), str(adapter), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path / "tmp"), cwd=tmp_path)
    _wait_for(lambda: any(p.name.startswith(".merged.tmp-") and any(p.iterdir()) for p in out.parent.iterdir()), proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert not out.exists() and not leftovers(tmp_path) and list(out.parent.iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


STARTUP = """
import os, pathlib, signal, sys
import hubtool
code = compile((pathlib.Path(hubtool.__file__).parent / "__main__.py").read_text(), "hubtool/__main__.py", "exec")
sys.argv = ["hubtool", *sys.argv[1:]]
# the interpreter's own start-up (site, .pth files, stdlib imports) is over; hubtool's starts now. The few
# bytecodes before __main__'s first statement installs its handlers are the interpreter's, not hubtool's.
os.write(1, b"ready" + bytes([10]))
exec(code, {"__name__": "__main__"})
"""


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.3])
def test_sigint_during_startup_no_traceback(tmp_path, delay):
    """Ctrl-C while hubtool imports its commands and builds the parser (before any work): no traceback."""
    proc = subprocess.Popen([sys.executable, "-c", STARTUP, "merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    assert proc.stdout.readline() == "ready\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")], err
    assert not (tmp_path / "o").exists()


def test_sigterm_mid_release_then_resume(tiny_llama, adapter, tmp_path):
    """SIGTERM while the GGUF stage works: no `.hubtool-gguf-*`/temp folders remain, and a re-run completes cleanly."""
    work, hub = tmp_path / "work", tmp_path / "hub"
    cfg = tmp_path / "release.yaml"
    cfg.write_text("card: {license: mit, base_model: acme/base}\nverify: {enabled: false}\n")
    args = ["release", "--base", str(tiny_llama), "--adapter", str(adapter), "--namespace", "acme", "--name", "tiny",
            "--quants", "gguf", "--gguf-types", "q8_0", "--config", str(cfg), "--work-dir", str(work), "--local-hub", str(hub)]
    proc = subprocess.Popen([sys.executable, "-m", "hubtool", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path / "tmp"), cwd=tmp_path)
    _wait_for(lambda: _exists(work, ".hubtool-gguf-*"), proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "error: stopped by SIGTERM" in err
    assert not leftovers(work) and list((tmp_path / "tmp").iterdir()) == []
    again = subprocess.run([sys.executable, "-m", "hubtool", *args], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not leftovers(work)


# ---- round 2 (issue 23): outputs into inputs, refused by one shared check before anything is written ----

def test_card_render_overwrite_refuses_a_model_file(base_copy):
    """`card render fp16 MODEL -o MODEL/config.json --overwrite` must not replace the model's config."""
    before = snapshot(base_copy)
    out = base_copy / "config.json"
    res = run_cli(["card", "render", "fp16", base_copy, "--set", "license=mit", "-o", out, "--overwrite"])
    assert_one_error(res, 2, str(out), "is the input", "-o")
    assert snapshot(base_copy) == before and not leftovers(base_copy)


def test_card_render_into_the_model_folder_readme_still_works(base_copy):
    """The documented use, -o MODEL/README.md, is the card's place in the folder, not an input."""
    res = run_cli(["card", "render", "fp16", base_copy, "--set", "license=mit", "-o", base_copy / "README.md"])
    assert res.rc == 0, res.err
    assert (base_copy / "README.md").read_text().startswith("---\n")


@pytest.mark.parametrize("where", ["same", "inside"])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_quantize_gguf_refuses_output_in_the_input(base_copy, where, overwrite):
    out = base_copy if where == "same" else base_copy / "gguf"
    before = snapshot(base_copy)
    res = run_cli(["quantize", "gguf", base_copy, "-o", out, "--types", "q8_0", *overwrite])
    assert_one_error(res, 2, str(out), "input", "-o")
    assert snapshot(base_copy) == before and sorted(p.name for p in base_copy.iterdir()) == sorted(before)
    assert not leftovers(base_copy)


def test_check_apart_is_the_shared_rule(tmp_path):
    from hubtool.atomic import check_apart
    from hubtool.errors import InputError

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out, word in [(model, "is the input"), (model / "sub", "is inside the input"), (tmp_path, "holds the input"),
                      (model / "config.json", "is inside the input")]:
        with pytest.raises(InputError, match=word):
            check_apart({"--x": out}, [model])
    with pytest.raises(InputError, match="is the input"):
        check_apart({"-o": model / "config.json"}, [model / "config.json"])
    check_apart({"--x": tmp_path / "elsewhere", "--y": None}, [model, None, tmp_path / "missing"])


@pytest.mark.parametrize(("flag", "where"), [("--local-hub", "base"), ("--local-hub", "base/hub"), ("--local-hub", "adapter"),
                                             ("--work-dir", "base/wd"), ("--work-dir", "adapter"), ("--work-dir", "base")])
@pytest.mark.parametrize("dry", [["--dry-run"], []])
def test_release_refuses_work_dir_or_local_hub_in_an_input(base_copy, user_adapter, tmp_path, flag, where, dry):
    """Refused before anything is written: no hashes.json, stages/locks, blobs/, repos/ or xet-cas/ in the inputs."""
    roots = {"base": base_copy, "adapter": user_adapter}
    first, _, rest = where.partition("/")
    target = roots[first] / rest if rest else roots[first]
    before_base, before_adapter = snapshot(base_copy), snapshot(user_adapter)
    names = sorted(p.name for p in base_copy.iterdir()), sorted(p.name for p in user_adapter.iterdir())
    args = ["release", "--base", base_copy, "--adapter", user_adapter, "--namespace", "me", "--quants", "gguf",
            "--gguf-types", "q8_0", flag, target, *dry]
    if flag == "--local-hub":
        args += ["--work-dir", tmp_path / "work"]
    assert_one_error(run_cli(args), 2, str(target), flag, "input")
    assert snapshot(base_copy) == before_base and snapshot(user_adapter) == before_adapter
    assert (sorted(p.name for p in base_copy.iterdir()), sorted(p.name for p in user_adapter.iterdir())) == names
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
def test_release_unwritable_work_dir_leaves_no_local_hub_skeleton(tiny_llama, tmp_path, err):
    """A read-only or full --work-dir fails before the local Hub makes its folders, naming the user's path."""
    ro = tmp_path / "ro"
    ro.mkdir()
    hub = tmp_path / "hub"
    with read_only(ro, err):
        res = run_cli(["release", tiny_llama, "--namespace", "me", "--quants", "gguf", "--gguf-types", "q8_0",
                       "--work-dir", ro / "work", "--local-hub", hub])
    line = assert_one_error(res, 2, str(ro / "work"))
    assert "stages" not in line and ".tmp" not in line and ".hubtool-probe" not in line
    assert not hub.exists() and list(ro.iterdir()) == []


def test_release_stage_disk_error_names_the_work_dir(tmp_path):
    from hubtool.errors import QuantizeError
    from hubtool.release.cache import Hasher
    from hubtool.release.graph import Stage
    from hubtool.release.store import StageStore

    def fill(out: Path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "x.gguf"))

    with pytest.raises(QuantizeError) as exc:
        StageStore(tmp_path / "work", Hasher(tmp_path / "work")).run(Stage("gguf:Q8_0", "gguf", "k1", ()), fill)
    assert str(exc.value).startswith(f"{tmp_path / 'work'}: disk full")


# ---- round 2: inputs that lie (headers, adapters, config values, tokenizer files) ------------------

def rewrite_header(path: Path, edit) -> None:
    """Edit a safetensors file's JSON header in place (bytes untouched): a header that lies about them."""
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


def shard_of(model: Path, name: str) -> Path:
    index = model / "model.safetensors.index.json"
    return model / (json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors")


def load_weights(model: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(model.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("cmd", ["merge", "release-dry-run", "quantize-gguf"])
def test_bf16_header_over_f16_bytes_is_refused(base_copy, user_adapter, tmp_path, cmd):
    """Same byte length, so safetensors opens it; a checkpoint with one tensor of another 16-bit type is refused, naming it."""
    shard = shard_of(base_copy, Q_PROJ)
    rewrite_header(shard, lambda h: h[Q_PROJ].update(dtype="BF16"))
    before = snapshot(base_copy)
    args = {"merge": ["merge", base_copy, user_adapter, "-o", tmp_path / "out"],
            "release-dry-run": ["release", "--base", base_copy, "--adapter", user_adapter, "--namespace", "me", "--work-dir",
                                tmp_path / "w", "--dry-run"],
            "quantize-gguf": ["quantize", "gguf", base_copy, "-o", tmp_path / "out", "--types", "q8_0"]}[cmd]
    assert_one_error(run_cli(args), 2, str(shard), Q_PROJ, "BF16", "F16")
    assert not (tmp_path / "out").exists() and snapshot(base_copy) == before


def test_i32_header_over_f16_bytes_is_refused(base_copy, user_adapter, tmp_path):
    """A dtype whose size does not match the bytes (I32 over F16): safetensors' own length check, named and one line."""
    shard = shard_of(base_copy, Q_PROJ)
    rewrite_header(shard, lambda h: h[Q_PROJ].update(dtype="I32"))
    assert_one_error(run_cli(["merge", base_copy, user_adapter, "-o", tmp_path / "out"]), 2, str(shard))


def test_adapter_integer_lora_a_blames_the_adapter(tiny_llama, user_adapter, tmp_path):
    weights = user_adapter / "adapter_model.safetensors"
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    rewrite_header(weights, lambda h: h[key].update(dtype="I32"))  # F32 bytes: same length
    for args in (["merge", tiny_llama, user_adapter, "-o", tmp_path / "out"],
                 ["release", "--base", tiny_llama, "--adapter", user_adapter, "--namespace", "me", "--work-dir", tmp_path / "w", "--dry-run"]):
        line = assert_one_error(run_cli(args), 2, str(weights), key, "I32")
        assert "--dtype" not in line and str(tiny_llama) not in line.replace(str(weights), "")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["factors", "lora_alpha"])
def test_adapter_scaled_absurdly_blames_the_adapter(tiny_llama, user_adapter, tmp_path, how):
    from safetensors.torch import load_file, save_file

    weights = user_adapter / "adapter_model.safetensors"
    if how == "factors":
        tensors = load_file(weights)
        save_file({k: v * 1e6 if ".lora_B." in k else v for k, v in tensors.items()}, weights)
    else:
        cfg = user_adapter / "adapter_config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "lora_alpha": 8e6}))
    line = assert_one_error(run_cli(["merge", tiny_llama, user_adapter, "-o", tmp_path / "out"]), 3, str(weights), "lora_alpha")
    assert "--dtype bfloat16" not in line
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


@pytest.fixture(scope="module")
def dora_adapter(tiny_llama, tmp_path_factory) -> Path:
    return make_adapter(tiny_llama, tmp_path_factory.mktemp("dora") / "adapter", target_modules=["q_proj", "v_proj"], use_dora=True)


def test_dora_without_magnitude_vectors_is_refused(tiny_llama, dora_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = Path(shutil.copytree(dora_adapter, tmp_path / "adapter"))
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    assert any("lora_magnitude_vector" in k for k in tensors)  # what PEFT stores for DoRA
    save_file({k: v for k, v in tensors.items() if "lora_magnitude_vector" not in k}, weights)
    for args in (["merge", tiny_llama, adapter, "-o", tmp_path / "out"],
                 ["release", "--base", tiny_llama, "--adapter", adapter, "--namespace", "me", "--work-dir", tmp_path / "w", "--dry-run"]):
        assert_one_error(run_cli(args), 2, str(weights), "use_dora", "lora_magnitude_vector")
    assert not (tmp_path / "out").exists()


def test_dora_with_magnitude_vectors_matches_peft(tiny_llama, dora_adapter, tmp_path):
    from tests.peft_helpers import peft_reference

    res = run_cli(["merge", tiny_llama, dora_adapter, "-o", tmp_path / "out", "--dtype", "float16"])
    assert res.rc == 0, res.err
    ours = load_weights(tmp_path / "out")
    ref = peft_reference(tiny_llama, dora_adapter)
    ref = ref.state_dict() if hasattr(ref, "state_dict") else ref
    diff = (ours[Q_PROJ].float() - ref[Q_PROJ].float()).abs().max().item()
    base = load_weights(tiny_llama)[Q_PROJ].float()
    assert diff < 2e-3 and (ours[Q_PROJ].float() - base).abs().max().item() > 10 * diff


BAD_LAYERS = [1e9, 10**9, "2", True, -1, None]


@pytest.mark.parametrize("value", BAD_LAYERS[:5], ids=["1e9", "10**9", "string", "bool", "negative"])
@pytest.mark.parametrize("cmd", ["merge", "release-dry-run", "quantize-gguf", "quantize-gptq"])
def test_config_layer_count_that_lies_is_refused(base_copy, user_adapter, tmp_path, cmd, value):
    cfg = base_copy / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "num_hidden_layers": value}))
    args = {"merge": ["merge", base_copy, user_adapter, "-o", tmp_path / "out"],
            "release-dry-run": ["release", "--base", base_copy, "--adapter", user_adapter, "--namespace", "me", "--work-dir",
                                tmp_path / "w", "--dry-run"],
            "quantize-gguf": ["quantize", "gguf", base_copy, "-o", tmp_path / "out", "--types", "q8_0"],
            "quantize-gptq": ["quantize", "gptq", base_copy, "-o", tmp_path / "out", "--device", "cpu"]}[cmd]
    start = time.monotonic()
    assert_one_error(run_cli(args), 2, str(cfg), "num_hidden_layers")
    assert time.monotonic() - start < 60 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("junk", ["random", "brace"])
def test_junk_tokenizer_json_is_refused_at_plan_time(base_copy, user_adapter, tiny_q8, tmp_path, junk):
    tok = base_copy / "tokenizer.json"
    data = os.urandom(20_000_000)
    tok.write_bytes(b"{" + data if junk == "brace" else b"\x00" + data)
    res = run_cli(["release", "--base", base_copy, "--adapter", user_adapter, "--namespace", "me", "--work-dir", tmp_path / "w", "--dry-run"])
    assert_one_error(res, 2, str(tok), "tokenizer.json")
    res = run_cli(["verify", "gguf", tiny_q8, "--reference", base_copy, "--max-tokens", "64", "--context", "32"])
    assert_one_error(res, 2, str(tok), "tokenizer.json")


@pytest.mark.parametrize("name", ["a\nb", "a\tb", " a", "a/b"])
def test_quantize_gguf_name_must_be_one_printable_line(tiny_llama, tmp_path, name):
    res = run_cli(["quantize", "gguf", tiny_llama, "-o", tmp_path / "out", "--types", "q8_0", "--name", name])
    assert_one_error(res, 2, "--name")
    assert not (tmp_path / "out").exists()


# ---- round 2: sizes and places a user sets ----------------------------------------------------------

@pytest.mark.parametrize("port", ["70000", "-1"])
def test_hub_serve_port_out_of_range(tmp_path, port):
    res = run_cli(["hub", "serve", "--root", tmp_path / "root", "--port", port])
    assert_one_error(res, 2, f"--port {port}", "0-65535")
    assert not (tmp_path / "root").exists()


def test_hub_serve_root_is_a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("mine")
    line = assert_one_error(run_cli(["hub", "serve", "--root", f, "--port", "0"]), 2, str(f), "--root", "is a file")
    assert "--port" not in line and f.read_text() == "mine"


@pytest.mark.parametrize("context", ["100000000", "257"])
def test_verify_gguf_context_bounded_by_trained_context(tiny_q8, tiny_llama, tmp_path, context, monkeypatch):
    import hubtool.quality.reference as reference

    monkeypatch.setattr(reference, "compute_reference", lambda *a, **k: pytest.fail("evaluation started"))
    trained = json.loads((tiny_llama / "config.json").read_text())["max_position_embeddings"]
    assert int(context) > trained
    res = run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--context", context, "--max-tokens", "64"])
    assert_one_error(res, 2, f"--context {context}", str(trained), "--force-context")


def test_verify_gguf_force_context_goes_past_the_trained_context(tiny_q8, tiny_llama):
    trained = json.loads((tiny_llama / "config.json").read_text())["max_position_embeddings"]
    res = run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--context", str(trained * 2), "--max-tokens", "64",
                   "--force-context", "--no-gates", "--json"])
    assert res.rc == 0, res.err
    assert json.loads(res.out)[0]["tokens"] <= 64


def test_verify_gguf_max_tokens_bounded_by_the_text(tiny_q8, tiny_llama, tmp_path, monkeypatch):
    import hubtool.quality.reference as reference

    monkeypatch.setattr(reference, "compute_reference", lambda *a, **k: pytest.fail("evaluation started"))
    text = tmp_path / "short.txt"
    text.write_text("A short held-out text of a few words.\n")
    res = run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--text", text, "--max-tokens", "100000", "--context", "32"])
    assert_one_error(res, 2, "--max-tokens 100000", "holds only", str(text))


def test_verify_gguf_results_not_writable_fails_before_work(tiny_q8, tiny_llama, tmp_path, monkeypatch):
    import hubtool.quality.reference as reference

    monkeypatch.setattr(reference, "compute_reference", lambda *a, **k: pytest.fail("evaluation started"))
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        res = run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--results", ro / "q.json", "--max-tokens", "64",
                       "--context", "32"])
    line = assert_one_error(res, 2, str(ro / "q.json"), "read-only")
    assert ".tmp" not in line and ".probe" not in line and list(ro.iterdir()) == []
    missing = tmp_path / "nope" / "q.json"
    assert_one_error(run_cli(["verify", "gguf", tiny_q8, "--reference", tiny_llama, "--results", missing]), 2, str(missing), "does not exist")


@pytest.fixture
def gptq_settings_only(tmp_path) -> Path:
    """A folder with only a GPTQ quantize_config.json: every bound below must refuse before the weights are read."""
    q = tmp_path / "gptq"
    q.mkdir()
    (q / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 32, "desc_act": True, "sym": True}))
    return q


@pytest.mark.parametrize("context", ["100000000", "257"])
def test_verify_gptq_context_bounded_by_trained_context(gptq_settings_only, tiny_llama, context):
    trained = json.loads((tiny_llama / "config.json").read_text())["max_position_embeddings"]
    assert int(context) > trained
    res = run_cli(["verify", "gptq", gptq_settings_only, "--reference", tiny_llama, "--context", context, "--max-tokens", "64"])
    assert_one_error(res, 2, f"--context {context}", str(trained), "--force-context")


def test_verify_gptq_max_tokens_bounded_by_the_text(gptq_settings_only, tiny_llama, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("A short held-out text of a few words.\n")
    res = run_cli(["verify", "gptq", gptq_settings_only, "--reference", tiny_llama, "--text", text, "--max-tokens", "100000",
                   "--context", "32"])
    assert_one_error(res, 2, "--max-tokens 100000", "holds only", str(text))
    old = run_cli(["verify", "gptq", gptq_settings_only, "--reference", tiny_llama, "--text", text, "--tokens", "100000",
                   "--context", "32"])  # the old spelling is the same option
    assert_one_error(old, 2, "--max-tokens 100000", "holds only", str(text))


def test_verify_gptq_results_not_writable_fails_before_work(gptq_settings_only, tiny_llama, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        res = run_cli(["verify", "gptq", gptq_settings_only, "--reference", tiny_llama, "--results", ro / "q.json",
                       "--max-tokens", "64", "--context", "32"])
    line = assert_one_error(res, 2, str(ro / "q.json"), "read-only")
    assert ".tmp" not in line and ".probe" not in line and list(ro.iterdir()) == []
    missing = tmp_path / "nope" / "q.json"
    assert_one_error(run_cli(["verify", "gptq", gptq_settings_only, "--reference", tiny_llama, "--results", missing]), 2,
                     str(missing), "does not exist")


def test_write_results_disk_error_names_the_users_path(tmp_path, monkeypatch):
    from hubtool.errors import InputError
    from hubtool.quality.results import write_results

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(InputError) as exc:
        write_results(tmp_path / "q.json", [{"kind": "gguf", "variant": "Q8_0"}])
    assert str(exc.value).startswith(f"{tmp_path / 'q.json'}: disk full") and ".tmp" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []
