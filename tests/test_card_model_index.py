"""Measured quality as the Hub's model-index: in the header, readable by huggingface_hub, validated."""

from __future__ import annotations

import copy

import pytest
import yaml

from hubtool.card import check_card, render_card
from hubtool.errors import CardError
from hubtool.frontmatter import split_front_matter
from tests.cardkit import RELEASE, RESULTS, gguf_dir, gptq_dir, merged_dir

META = {"license": "mit", "base_model": "org/base"}


def eval_results(text):
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=False)
    return card.data.model_name, {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}


def test_quant_cards_carry_their_own_rows(tmp_path):
    gguf = render_card("gguf", gguf_dir(tmp_path), meta=META, results=RESULTS, release=RELEASE)
    name, metrics = eval_results(gguf)
    assert name == "bagel-8k"
    by_variant = {r["variant"]: r for r in RESULTS["rows"] if r["kind"] == "gguf"}
    for variant, row in by_variant.items():
        assert metrics[("perplexity", f"Perplexity ({variant})")] == row["perplexity"]
        assert metrics[("kl_divergence", f"KL divergence vs fp16 ({variant})")] == row["kl_div"]
        assert metrics[("top1_agreement", f"Top-1 agreement with fp16 ({variant})")] == row["top1"]
    assert not any("main" in n for _, n in metrics)  # the GPTQ row belongs to the GPTQ card
    result = split_front_matter(gguf)[0]["model-index"][0]["results"][0]
    assert result["task"]["type"] == "text-generation"
    assert result["dataset"] == {"name": "held-out text (builtin:heldout)", "type": "builtin:heldout", "args": {"context": 512, "tokens": 4096}}
    _, gptq_metrics = eval_results(render_card("gptq", gptq_dir(tmp_path), meta=META, results=RESULTS, release=RELEASE))
    assert gptq_metrics[("perplexity", "Perplexity (main)")] == 10.21 and len(gptq_metrics) == 3


def test_fp16_card_carries_reference_perplexity(tmp_path):
    text = render_card("merged", merged_dir(tmp_path), meta=META, results=RESULTS, release=RELEASE)
    _, metrics = eval_results(text)
    assert metrics == {("perplexity", "Perplexity (fp16)"): RESULTS["ref_perplexity"]}


def test_no_results_no_model_index(tmp_path):
    meta = split_front_matter(render_card("gguf", gguf_dir(tmp_path), meta=META, release=RELEASE))[0]
    assert "model-index" not in meta and meta["model_name"] == "bagel-8k"


def _card_with_index(index) -> str:
    header = {"license": "mit", "model-index": index}
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n# Model\n\nText.\n"


GOOD = [{"name": "m", "results": [{"task": {"type": "text-generation"}, "dataset": {"name": "held-out", "type": "text"},
                                   "metrics": [{"type": "perplexity", "value": 9.5}]}]}]


def test_valid_index_passes():
    assert check_card(_card_with_index(GOOD))["model-index"] == GOOD


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda i: i[0].pop("name"), r"model-index\[0\] needs a name"),
    (lambda i: i[0]["results"][0]["task"].pop("type"), r"task.type is missing"),
    (lambda i: i[0]["results"][0]["dataset"].pop("type"), r"dataset needs a type and a name"),
    (lambda i: i[0]["results"][0]["metrics"][0].update(value="9.5"), r"value must be a finite number, got '9.5'"),
    (lambda i: i[0]["results"][0]["metrics"][0].update(value=float("nan")), r"value must be a finite number"),
    (lambda i: i[0]["results"][0].update(metrics=[]), r"metrics must be a non-empty list"),
])
def test_invalid_index_is_a_one_line_error(mutate, message):
    index = copy.deepcopy(GOOD)
    mutate(index)
    with pytest.raises(CardError, match=message) as exc:
        check_card(_card_with_index(index))
    assert "\n" not in str(exc.value)
