"""The one windowing rule (hubtool/text_windows.py) that calibration, imatrix and both verifications use."""

from hubtool.text_windows import encode, windows


def test_windows_bos_first_and_tail_rules():
    ids = list(range(10))
    assert windows(ids, 4, 99) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8], [99, 9]]
    assert windows(ids, 4, 99, whole=True) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8]]
    assert windows(ids, 4, 99, min_text=2) == [[99, 0, 1, 2], [99, 3, 4, 5], [99, 6, 7, 8]]
    assert windows(ids, 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert windows(ids, 4, None, whole=True) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(ids[:2], 4, 99, whole=True) == [] and windows([], 4, 99) == []


def test_encode_bounded_prefix_and_chunked_corpus(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "\n\n".join(f"Paragraph {i} says something about files, paths and windows." for i in range(2000))
    whole = tok(text, add_special_tokens=False)["input_ids"]
    assert len(text) > 5 * 20000
    assert encode(tok, text, max_tokens=300) == whole[:300]  # a bounded prefix: one tokenizer call
    chunked = encode(tok, text)  # a corpus: paragraph-aligned chunks; tokens differ only where chunks meet
    first_chunk = len(tok(text[:20000], add_special_tokens=False)["input_ids"])
    assert chunked[: first_chunk - 8] == whole[: first_chunk - 8]
    assert chunked != whole and abs(len(chunked) - len(whole)) < 0.001 * len(whole)
