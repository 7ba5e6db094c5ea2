"""User template directories, sandboxing, and errors that name template, line and variable."""

from __future__ import annotations

import pytest

from hubtool.card import render_card
from hubtool.card.render import builtin_template_dir, code_block
from hubtool.errors import CardError
from tests.cardkit import RELEASE, gguf_dir


def write(d, name, text):
    path = d / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_templates_exist_for_every_kind():
    names = sorted(p.name for p in builtin_template_dir().glob("*.md.j2"))
    from hubtool.artifacts import ArtifactKind

    assert names == sorted(f"{k.value}.md.j2" for k in ArtifactKind)  # one template per artifact kind, named for it


def test_user_template_overrides_one_partial(tmp_path):
    tdir = tmp_path / "tpl"
    write(tdir, "partials/_title.md.j2", "# Custom title for {{ model_name }} ({{ gguf_files | length }} files)\n")
    text = render_card("gguf", gguf_dir(tmp_path), release=RELEASE, template_dir=tdir)
    assert "# Custom title for bagel-8k (3 files)" in text
    assert "## Provided files" in text  # the rest still comes from the built-ins


def test_missing_variable_names_template_line_and_variable(tmp_path):
    tdir = tmp_path / "tpl"
    path = write(tdir, "gguf.md.j2", "# {{ model_name }}\n\nfine line\n{{ licence_url }}\n")
    with pytest.raises(CardError) as err:
        render_card("gguf", gguf_dir(tmp_path), release=RELEASE, template_dir=tdir)
    msg = str(err.value)
    assert f"{path}:4" in msg and "'licence_url' is undefined" in msg and "\n" not in msg


def test_missing_attribute_in_partial_names_the_partial(tmp_path):
    tdir = tmp_path / "tpl"
    path = write(tdir, "partials/_rope.md.j2", "{% if rope %}\nscaled by {{ rope.scale_factor }}\n{% endif %}\n")
    with pytest.raises(CardError) as err:
        render_card("gguf", gguf_dir(tmp_path), release=RELEASE, template_dir=tdir)
    assert f"{path}:2" in str(err.value) and "scale_factor" in str(err.value)


def test_syntax_error_names_template_and_line(tmp_path):
    tdir = tmp_path / "tpl"
    path = write(tdir, "gguf.md.j2", "ok\n{% if model_name %}\nno endif\n")
    with pytest.raises(CardError, match="template syntax error") as err:
        render_card("gguf", gguf_dir(tmp_path), release=RELEASE, template_dir=tdir)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("expr", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ header.__class__.__init__.__globals__ }}",
    "{{ header.update({'license': 'mit'}) }}",
    "{{ gguf_files.append({}) }}",
])
def test_sandbox_blocks_escapes(expr, tmp_path):
    tdir = tmp_path / "tpl"
    write(tdir, "gguf.md.j2", f"# x\n{expr}\n")
    with pytest.raises(CardError) as err:
        render_card("gguf", gguf_dir(tmp_path), release=RELEASE, template_dir=tdir)
    assert "gguf.md.j2:2" in str(err.value) and "unsafe operation" in str(err.value)


def test_missing_template_dir_and_unknown_kind(tmp_path):
    with pytest.raises(CardError, match="template directory not found"):
        render_card("gguf", gguf_dir(tmp_path), release=RELEASE, template_dir=tmp_path / "nope")
    with pytest.raises(CardError, match="use one of fp16, adapter, gptq, gguf"):
        render_card("awq", gguf_dir(tmp_path))


def test_merged_is_the_fp16_kind_and_old_merged_templates_still_apply(tiny_llama, tmp_path):
    """`merged` (the fp16 kind's older name) renders the fp16 card; a --template-dir written with a
    merged.md.j2 keeps being used for it rather than silently ignored."""
    meta = {"license": "apache-2.0", "base_model": "acme/base"}
    assert render_card("merged", tiny_llama, meta=meta) == render_card("fp16", tiny_llama, meta=meta)
    write(tmp_path / "tpl", "merged.md.j2", "# {{ model_name }}: our own fp16 card\n")
    assert "our own fp16 card" in render_card("fp16", tiny_llama, meta=meta, template_dir=tmp_path / "tpl")


def test_gguf_card_needs_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CardError, match="no .gguf files"):
        render_card("gguf", empty)


def test_code_block_cannot_be_closed_by_content():
    block = code_block("a\n```\nb ````")
    assert block.startswith("`````\n") and block.endswith("\n`````")


def test_usage_snippets_follow_whether_a_chat_template_exists(tmp_path):
    """A model without a chat template gets plain-completion snippets (apply_chat_template and
    create_chat_completion would fail or fall back to another model's format); with one, chat snippets."""
    from tests.cardkit import LLAMA_CONFIG, model_folder

    files = {"bagel-8k.Q4_K_M.gguf": b"\0" * 1000}
    for chat in (None, "{{ messages[0]['content'] }}"):
        root = tmp_path / ("chat" if chat else "plain")
        gguf = render_card("gguf", model_folder(root, "g", config=LLAMA_CONFIG, chat_template=chat, files=files), release=RELEASE)
        fp16 = render_card("fp16", model_folder(root, "m", config=LLAMA_CONFIG, chat_template=chat), release=RELEASE)
        assert ("create_chat_completion" in gguf) == ("-cnv" in gguf.replace("-no-cnv", "")) == bool(chat)
        assert ("apply_chat_template(" in fp16) == bool(chat)
        if not chat:
            assert "print(llm(\"RoPE scaling" in gguf and "-no-cnv -p" in gguf
            assert "tokenizer(\"RoPE scaling" in fp16 and 'dtype="auto"' in fp16
    card = render_card("fp16", model_folder(tmp_path / "bf", "m", config=LLAMA_CONFIG), release={**RELEASE, "load_dtype": "bfloat16"})
    assert 'dtype="bfloat16"' in card and 'dtype="auto"' not in card


def test_demote_headings_moves_every_heading_kind_down_two_levels_outside_code():
    from hubtool.card.headings import demote_headings

    source = (
        "# Title\n"
        "text with a # inside\n"
        "## Overview\n"
        "##### Deep\n"
        "####### not a heading\n"
        "#hashtag\n"
        "\n"
        "Setext one\n"
        "==========\n"
        "\n"
        "Setext two\n"
        "over two lines\n"
        "---\n"
        "\n"
        "---\n"
        "\n"
        "```python\n"
        "# a comment, not a heading\n"
        "Not setext\n"
        "===\n"
        "```\n"
        "\n"
        "    # indented code\n"
        '<h1 align="center">Logo</h1>\n'
    )
    want = (
        "### Title\n"
        "text with a # inside\n"
        "#### Overview\n"
        "###### Deep\n"
        "####### not a heading\n"
        "#hashtag\n"
        "\n"
        "### Setext one\n"
        "\n"
        "#### Setext two over two lines\n"
        "\n"
        "---\n"
        "\n"
        "```python\n"
        "# a comment, not a heading\n"
        "Not setext\n"
        "===\n"
        "```\n"
        "\n"
        "    # indented code\n"
        '<h3 align="center">Logo</h3>\n'
    )
    assert demote_headings(source) == want
    assert demote_headings("# A\r\nb\r\n") == "### A\r\nb\r\n"


def test_original_card_section_demotes_the_source_cards_h1(tmp_path):
    from tests.cardkit import EXAMPLE_CARDS

    card = next(p for p in EXAMPLE_CARDS if p.name.startswith("bagel-dpo-14b"))
    body = render_card("gguf", gguf_dir(tmp_path), release={**RELEASE, "source_card": str(card)})
    original = body.split("## Original model card", 1)[1]
    assert "\n### A bagel, with everything\n" in original
    assert "\n#### Overview\n" in original
    assert not any(line.startswith(("# ", "## ")) for line in original.splitlines())
