"""What hubtool knows about GGUF files: llama.cpp's naming, split names, nominal bits per weight
and the metadata keys it reads.

One owner, so the exporter, the splitter, the verifier, the cards and the release plan name and
read the same files. Names follow llama.cpp: `NAME.TYPE.gguf`, split as gguf-py's writer does
(`NAME.TYPE-00001-of-00003.gguf`), importance matrices `NAME.imatrix.gguf`. Metadata keys come
from gguf-py's `gguf.Keys`, imported inside functions because `gguf` ships with the gguf extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nominal bits per weight of llama.cpp quant types (block formats; k-quant mixes approximate).
NOMINAL_BPW: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
    "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K_M": 4.85, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5,
    "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 3.0, "IQ4_XS": 4.25, "IQ4_NL": 4.5,
}

TUNED_SUFFIX = "-tuned"  # a size-targeted mix (hubtool/gguf/mix.py): `NAME.Q4_K_M-tuned.gguf`, same size as stock Q4_K_M
RECIPE_SUFFIX = ".tensor-types.txt"  # its recipe beside it: `NAME.Q4_K_M-tuned.tensor-types.txt` (llama-quantize --tensor-type-file)
SHARD_NAME_FORMAT = "{:s}-{:05d}-of-{:05d}.gguf"  # gguf.gguf_writer.SHARD_NAME_FORMAT, what llama.cpp loads
IMATRIX_SUFFIX = ".imatrix.gguf"
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
_TYPE_IN_NAME = re.compile(r"(?:^|[.\-_])((?:(?:I?Q\d(?:_[A-Z0-9]+)*)|\d+\.\d+BPW)(?:-tuned)?|F16|BF16|F32)(?=\.gguf$)", re.IGNORECASE)


def file_name(name: str, gguf_type: str) -> str:
    """'Model', 'Q4_K_M' -> 'Model.Q4_K_M.gguf'."""
    return f"{name}.{gguf_type}.gguf"


def tuned_variant(gguf_type: str | None = None, *, target_bpw: float | None = None) -> str:
    """'Q4_K_M' -> 'Q4_K_M-tuned' (a mix at stock Q4_K_M's size); target_bpw 4.5 -> '4.50bpw-tuned'."""
    if target_bpw is not None:
        return f"{target_bpw:.2f}bpw{TUNED_SUFFIX}"
    return f"{str(gguf_type).upper()}{TUNED_SUFFIX}"


def is_tuned(variant: str) -> bool:
    return variant.lower().endswith(TUNED_SUFFIX)


def recipe_name(name: str, variant: str) -> str:
    """The recipe published beside `file_name(name, variant)`."""
    return f"{name}.{variant}{RECIPE_SUFFIX}"


def mix_summary_name(name: str, variant: str) -> str:
    """The JSON beside a tuned file: stock vs tuned type per changed tensor, predicted KL (for the card and for people)."""
    return f"{name}.{variant}.mix.json"


def imatrix_name(name: str) -> str:
    return f"{name}{IMATRIX_SUFFIX}"


def is_imatrix(filename: str) -> bool:
    return filename.endswith(IMATRIX_SUFFIX)


def shard_glob(name: str, gguf_type: str) -> str:
    """Glob for the shards of `file_name(name, gguf_type)`."""
    return f"{name}.{gguf_type}-?????-of-?????.gguf"


def shard_names(path: Path, count: int) -> list[Path]:
    """The COUNT shard paths of single-file PATH, as gguf-py's writer names them."""
    return [path.with_name(SHARD_NAME_FORMAT.format(path.stem, i, count)) for i in range(1, count + 1)]


@dataclass(frozen=True)
class Shard:
    """A parsed split name: `stem-0000index-of-0000count.gguf`."""

    stem: str
    index: int
    count: int

    @property
    def unsplit_name(self) -> str:
        """The file name the model would have unsplit (`stem.gguf`), which carries its type."""
        return f"{self.stem}.gguf"

    @property
    def glob(self) -> str:
        """Pattern matching every shard of this model (what a card tells people to download)."""
        return f"{self.stem}-*-of-{self.count:05d}.gguf"


def parse_shard(filename: str) -> Shard | None:
    """The split position of FILENAME, or None for a single-file GGUF."""
    m = _SHARD.match(filename)
    return Shard(m.group("stem"), int(m.group("i")), int(m.group("n"))) if m else None


def type_from_name(filename: str) -> str | None:
    """'model.Q4_K_M.gguf' or 'model.Q4_K_M-00001-of-00002.gguf' -> 'Q4_K_M'."""
    shard = parse_shard(filename)
    m = _TYPE_IN_NAME.search(shard.unsplit_name if shard else filename)
    if not m:
        return None
    found = m.group(1)
    if is_tuned(found):
        stem = found[: -len(TUNED_SUFFIX)]
        return (stem.lower() if stem.lower().endswith("bpw") else stem.upper()) + TUNED_SUFFIX
    return found.upper()


def config_keys(arch: str) -> dict[str, str]:
    """GGUF `<arch>.*` metadata keys -> the config.json names our RoPE and KV-cache maths read."""
    from gguf import Keys

    return {key.format(arch=arch): name for key, name in (
        (Keys.LLM.CONTEXT_LENGTH, "max_position_embeddings"),
        (Keys.LLM.BLOCK_COUNT, "num_hidden_layers"),
        (Keys.LLM.EMBEDDING_LENGTH, "hidden_size"),
        (Keys.Attention.HEAD_COUNT, "num_attention_heads"),
        (Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads"),
        (Keys.Attention.KEY_LENGTH, "head_dim"),
        (Keys.Rope.SCALING_TYPE, "rope_type"),
        (Keys.Rope.SCALING_FACTOR, "rope_factor"),
        (Keys.Rope.SCALING_ORIG_CTX_LEN, "original_max_position_embeddings"),
    )}


def file_type_name(value: Any) -> str | None:
    """`general.file_type` (llama_ftype) -> 'Q4_K_M'; None when gguf-py doesn't know it."""
    try:
        from gguf import LlamaFileType

        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except Exception:
        return None


# Card front-matter fields llama.cpp's converter writes as `general.*` (gguf-py's Metadata reads them).
CARD_KEYS = ("model_name", "license", "license_name", "license_link", "base_model", "datasets", "language", "tags", "quantized_by")


def card_front_matter(header: dict[str, Any]) -> dict[str, Any]:
    """The part of a card's header a GGUF carries as `general.*` (what the converter is given to write)."""
    return {k: header[k] for k in CARD_KEYS if header.get(k) not in (None, "", [])}


def _listed(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value]) if v]


def general_metadata(path: Path) -> dict[str, Any]:
    """`general.*` of a GGUF file as plain values (strings, numbers, lists of strings)."""
    from hubtool.gguf.header import read_header

    meta = read_header(path, strings=("general.",)).metadata  # llama.cpp's parser: no pass over the vocabulary
    return {k: v for k, v in meta.items() if k.startswith("general.")}


def general_mismatches(path: Path, front_matter: dict[str, Any]) -> list[str]:
    """How the GGUF's `general.*` disagrees with the card front matter it was written from (empty when it agrees)."""
    from gguf import Keys

    got = general_metadata(path)
    problems = []
    want_license = front_matter.get("license")
    if want_license and got.get(Keys.General.LICENSE) != str(want_license):
        problems.append(f"{Keys.General.LICENSE} is {got.get(Keys.General.LICENSE)!r}, the card says {want_license!r}")
    want_name = front_matter.get("model_name")
    if want_name and got.get(Keys.General.NAME) != str(want_name):
        problems.append(f"{Keys.General.NAME} is {got.get(Keys.General.NAME)!r}, the card says {want_name!r}")
    bases = _listed(front_matter.get("base_model"))
    count = int(got.get(Keys.General.BASE_MODEL_COUNT) or 0)
    urls = [str(got.get(Keys.General.BASE_MODEL_REPO_URL.format(id=i)) or "") for i in range(count)]
    if [u.rstrip("/").split("/")[-2:] for u in urls] != [b.split("/")[-2:] for b in bases]:
        problems.append(f"general.base_model.* repo urls are {urls}, the card's base_model is {bases}")
    tags = set(_listed(got.get(Keys.General.TAGS)))
    missing = [t for t in _listed(front_matter.get("tags")) if t not in tags]
    if missing:
        problems.append(f"{Keys.General.TAGS} lacks the card's {missing}")
    return problems
