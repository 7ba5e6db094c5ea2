"""GGUF naming and metadata keys have one owner (hubtool/gguf/facts.py) that agrees with gguf-py."""

from pathlib import Path

import gguf
from gguf.gguf_writer import SHARD_NAME_FORMAT

from hubtool.card import facts as card_facts
from hubtool.gguf import facts


def test_names_match_gguf_py_writer():
    assert facts.SHARD_NAME_FORMAT == SHARD_NAME_FORMAT
    first, *_, last = facts.shard_names(Path("out/M.Q4_K_M.gguf"), 3)
    assert (first.name, last.name) == ("M.Q4_K_M-00001-of-00003.gguf", "M.Q4_K_M-00003-of-00003.gguf")
    assert facts.file_name("M", "Q8_0") == "M.Q8_0.gguf" and facts.imatrix_name("M") == "M.imatrix.gguf"
    assert Path(last.name).match(facts.shard_glob("M", "Q4_K_M"))


def test_parse_shard_and_type():
    shard = facts.parse_shard("M.Q4_K_M-00002-of-00003.gguf")
    assert (shard.stem, shard.index, shard.count, shard.glob) == ("M.Q4_K_M", 2, 3, "M.Q4_K_M-*-of-00003.gguf")
    assert facts.parse_shard("M.Q4_K_M.gguf") is None
    assert facts.type_from_name("M.Q4_K_M-00002-of-00003.gguf") == "Q4_K_M"
    assert facts.type_from_name("m.iq4_xs.gguf") == "IQ4_XS" and facts.type_from_name("m.gguf") is None
    assert facts.is_imatrix("M.imatrix.gguf") and not facts.is_imatrix("M.Q8_0.gguf")


def test_metadata_keys_come_from_gguf_keys():
    keys = facts.config_keys("qwen2")
    assert keys[gguf.Keys.Rope.SCALING_FACTOR.format(arch="qwen2")] == "rope_factor"
    assert keys["qwen2.context_length"] == "max_position_embeddings"
    assert facts.file_type_name(int(gguf.LlamaFileType.MOSTLY_Q4_K_M)) == "Q4_K_M"


def test_card_facts_reads_bpw_from_gguf():
    """release/plan.py and card/compose.py still import GGUF_NOMINAL_BPW from card.facts: the same table."""
    assert card_facts.GGUF_NOMINAL_BPW is facts.NOMINAL_BPW and facts.NOMINAL_BPW["Q4_K_M"] == 4.85


def test_size_estimate_types_tensors_as_llama_cpp_does():
    """Gemma-3 270M's case: a tied 262k x 640 embedding doubles as the output (Q6_K in Q4_K_M) and 640 is
    not a multiple of 256, so it falls back to Q8_0; 1-D tensors stay F32; *_M mixes give attn_v more bits."""
    from hubtool.gguf.size_estimate import estimate_gguf_bytes, tensor_type

    emb = ("model.embed_tokens.weight", (262144, 640))
    assert tensor_type(*emb, "Q4_K_M", n_layers=18, tied=True) == "Q8_0"
    assert tensor_type("model.embed_tokens.weight", (262144, 2048), "Q4_K_M", n_layers=18, tied=True) == "Q6_K"
    assert tensor_type("model.embed_tokens.weight", (262144, 2048), "Q4_K_M", n_layers=18, tied=False) == "Q4_K"
    assert tensor_type("model.layers.0.self_attn.v_proj.weight", (256, 2048), "Q4_K_M", n_layers=18, tied=True) == "Q6_K"
    assert tensor_type("model.layers.3.self_attn.v_proj.weight", (256, 2048), "Q4_K_M", n_layers=18, tied=True) == "Q4_K"
    assert tensor_type("model.layers.3.mlp.up_proj.weight", (2048, 640), "Q4_K_M", n_layers=18, tied=True) == "Q5_0"
    assert tensor_type("model.norm.weight", (640,), "Q4_K_M", n_layers=18, tied=True) == "F32"
    # the embedding alone: 262144 * 640 elements at Q8_0's 34 bytes per 32
    assert estimate_gguf_bytes([emb], "Q4_K_M", n_layers=18, tied=True) == 262144 * 640 * 34 // 32
