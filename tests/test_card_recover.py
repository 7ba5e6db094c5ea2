"""Cards from real-world input: a pipe-mangled source header, cards without a license, local-Hub links."""

from __future__ import annotations

import pytest

from hubtool.card import card_warnings, check_card, compose_card, render_card
from hubtool.card.recover import read_source_card, recover_pipe_mangled
from hubtool.cli import main
from hubtool.errors import CardError
from hubtool.frontmatter import read_front_matter, split_front_matter
from tests.cardkit import CARDS, EXAMPLE_CARDS, RELEASE, gguf_dir, merged_dir

# The airoboros card as it comes out of copying the rendered Hub page: the header table turned into
# lone `|` lines and ` |` line ends, under the page's "user's picture / Update README.md / sha" junk.
MANGLED = CARDS / "airoboros-pipe-mangled.copied.md"
AIROBOROS = next(p for p in EXAMPLE_CARDS if p.name.startswith("airoboros"))
RECOVERED = {
    "license": "other", "license_name": "llama-license",
    "license_link": "https://huggingface.co/huggyllama/llama-65b/blob/main/LICENSE",
    "language": ["en"], "datasets": ["jondurbin/airoboros-gpt4-1.4.1"],
}


def test_mangled_header_is_unreadable_as_yaml():
    # the reason recovery exists: read as plain front matter, the header is lost (an error here)
    with pytest.raises(CardError, match="invalid YAML front matter"):
        read_front_matter(MANGLED)


def test_mangled_header_is_recovered_into_the_derivative_card(tmp_path):
    source = read_source_card(MANGLED)
    assert source.meta == RECOVERED
    assert source.body.startswith("# RoPE Scaled QLoRA Finetune of airoboros-65b")
    assert len(source.notes) == 1 and "recovered" in source.notes[0] and "license" in source.notes[0]
    card = compose_card("gguf", gguf_dir(tmp_path), release={**RELEASE, "source_card": str(MANGLED)})
    meta, body = split_front_matter(card.text)
    for key, value in RECOVERED.items():
        assert meta[key] == value, key
    assert any("recovered" in w for w in card.warnings)
    assert not any("no license" in w for w in card.warnings)
    assert "license: other |" not in body and check_card(card.text) == meta


def test_unfenced_table_header_is_recovered():
    text = "someone's picture\nUpdate README.md\n|\nlicense: mit |\nlanguage: |\n- en |\n|\n# Title\n\nBody.\n"
    meta, body = recover_pipe_mangled(text)
    assert meta == {"license": "mit", "language": ["en"]}
    assert body.startswith("# Title")


@pytest.mark.parametrize("text", [
    # `key: |` with an indented block is a YAML literal, not table furniture: ambiguous, left alone
    "---\n|\nlicense: mit |\ndescription: |\n  two lines\n  of text\n---\nbody\n",
    # stripping the pipes does not give a mapping
    "---\n|\n- a |\n- b |\n---\nbody\n",
    # a value would still end in a pipe after the repair
    "---\n|\nlicense: mit | |\n---\nbody\n",
    # valid YAML (no table lines) whose value happens to end in " |": left as written
    "---\nlicense: mit\nmodel_name: a |\n---\nbody\n",
])
def test_ambiguous_headers_are_not_guessed(text):
    assert recover_pipe_mangled(text) is None


@pytest.mark.parametrize("card", EXAMPLE_CARDS, ids=lambda p: p.name.split(".README")[0])
def test_clean_cards_are_read_as_they_are(card):
    source = read_source_card(card)
    assert source.notes == ()
    assert (source.meta, source.body) == read_front_matter(card)


def test_card_without_license_warns_in_render_and_fails_strict_check(tmp_path, capsys):
    model = gguf_dir(tmp_path)
    card = compose_card("gguf", model, release={**RELEASE, "source_card": str(AIROBOROS)})
    assert "license" not in split_front_matter(card.text)[0]
    assert [w for w in card.warnings if "no license" in w]
    with_license = compose_card("gguf", model, meta={"license": "mit"}, release={**RELEASE, "source_card": str(AIROBOROS)})
    assert with_license.warnings == ()

    out = tmp_path / "README.md"
    rc = main(["card", "render", "gguf", str(model), "--source-card", str(AIROBOROS), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and out.is_file()
    assert any(line.startswith("warning: ") and "no license" in line for line in err.splitlines())
    assert main(["card", "check", str(out)]) == 0
    capsys.readouterr()
    assert main(["card", "check", "--strict", str(out)]) == 5
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out}: no license") and "\n" not in err


def test_plan_warnings_from_source_and_config():
    assert any("no license" in w for w in card_warnings({}, source_card=AIROBOROS))
    assert card_warnings({"license": "apache-2.0"}, source_card=AIROBOROS) == []
    assert card_warnings({}, source_card=CARDS / "bagel-dpo-34b-v0.2.README.md") == []
    warnings = card_warnings({}, source_card=MANGLED)
    assert len(warnings) == 1 and "recovered" in warnings[0]  # and the recovered header has a license
    assert any("no license" in w for w in card_warnings({}, source_card=None))


def test_local_hub_cards_link_to_the_local_hub(tmp_path):
    release = {**RELEASE, "source_card": str(AIROBOROS)}
    hub = render_card("gguf", gguf_dir(tmp_path / "a"), meta={"license": "mit"}, release=release)
    local = render_card("gguf", gguf_dir(tmp_path / "b"), meta={"license": "mit"}, release={**release, "hub_url": "/"})
    fp16 = RELEASE["repos"]["fp16"]
    assert f"](https://huggingface.co/{fp16})" in hub
    assert f"](/{fp16})" in local and f"https://huggingface.co/{fp16})" not in local
    for repo in (RELEASE["repos"]["gptq"], RELEASE["repos"]["adapter"]):
        assert f"](/{repo})" in local
    # the merged card's base is the original model, which lives on huggingface.co, not on the local Hub
    merged = render_card("merged", merged_dir(tmp_path / "c"), meta={"license": "mit", "base_model": "huggyllama/llama-65b"},
                         release={**RELEASE, "hub_url": "/"})
    assert "](https://huggingface.co/huggyllama/llama-65b)" in merged and f"](/{RELEASE['repos']['gptq']})" in merged
    assert "hub_url" not in split_front_matter(local)[0]



def test_llama3_rope_card_gives_no_linear_flags(tmp_path):
    from tests.cardkit import LLAMA_CONFIG, model_folder

    config = dict(LLAMA_CONFIG, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "llama3", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 8192,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    config.pop("rope_scaling")
    text = render_card("merged", model_folder(tmp_path, "m", config=config), meta={"license": "mit"}, release=RELEASE)
    section = text.split("## Context length and RoPE scaling")[1].split("\n## ")[0]
    assert "**llama3**" in section and "32768 tokens" in section
    assert "--rope-scaling" not in section and "rope_freqs" in section and "-c 32768" in section


# The Open-Assistant Llama2 70B SFT v10 card as published in a pipe-mangled copy (issue 23): the *whole*
# page went through the table, so every line (fences, header, body) ends in ` |`, a lone `|` between each.
WHOLE_PAGE = CARDS / "oasst-llama2-70b-sft-v10-whole-page.copied.md"
WHOLE_PAGE_CLEAN = CARDS / "oasst-llama2-70b-sft-v10.expected.md"
OASST = {"license": "llama2", "language": ["en"],
         "datasets": ["OpenAssistant/oasst1", "ehartford/dolphin", "rombodawg/LosslessMegaCodeTrainingV2_1m_Evol_Uncensored",
                      "argilla/databricks-dolly-15k-curated-multilingual"]}


def test_whole_page_fixture_has_the_published_shape():
    lines = WHOLE_PAGE.read_text().splitlines()
    assert lines[:8] == ["|", "--- |", "|", "license: llama2 |", "|", "language: |", "|", "- en |"]
    assert all(line == "|" for line in lines[0::2]) and all(line.endswith(" |") or line == "|" for line in lines[1::2])
    closing = lines.index("--- |", 2)
    assert lines[closing + 1: closing + 3] == ["|", "# Open-Assistant Llama2 70B SFT v10 |"]


def test_whole_page_mangled_card_is_recovered():
    source = read_source_card(WHOLE_PAGE)
    for key, value in OASST.items():
        assert source.meta[key] == value, key
    clean_meta, clean_body = read_front_matter(WHOLE_PAGE_CLEAN)
    assert source.meta == clean_meta and source.body == clean_body
    assert source.body.startswith("# Open-Assistant Llama2 70B SFT v10\n\nThis model is")
    assert not any((line.endswith(" |") and not line.startswith("| ")) or line == "|" for line in source.body.splitlines())
    assert "| OpenAssistant/oasst1 (top-1, en) | 0.25 |" in source.body.splitlines()  # the body's own table kept
    assert len(source.notes) == 1 and "license" in source.notes[0] and "datasets" in source.notes[0]


def test_whole_page_mangled_card_feeds_the_derivative_card(tmp_path):
    card = compose_card("gguf", gguf_dir(tmp_path), release={**RELEASE, "source_card": str(WHOLE_PAGE)})
    meta, body = split_front_matter(card.text)
    assert meta["license"] == "llama2" and meta["language"] == ["en"] and meta["datasets"] == OASST["datasets"]
    assert not any("no license" in w for w in card.warnings) and any("recovered" in w for w in card.warnings)
    assert "SFT v10 |" not in body and check_card(card.text) == meta


@pytest.mark.parametrize("breakage", ["separator missing", "pipe missing", "no closing fence"])
def test_whole_page_shape_broken_is_not_guessed(breakage):
    lines = WHOLE_PAGE.read_text().splitlines()
    if breakage == "separator missing":
        del lines[10]
    elif breakage == "pipe missing":
        lines[9] = lines[9].removesuffix(" |")
    else:
        lines = [line for line in lines if line != "--- |"][:1] + lines[1:2] + [line for line in lines[2:] if line != "--- |"]
    text = "\n".join(lines) + "\n"
    assert recover_pipe_mangled(text) is None
