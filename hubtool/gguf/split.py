"""Split a GGUF above a size limit into llama.cpp shards (`<stem>-00001-of-0000N.gguf`).

Uses the gguf package's reader (memory-mapped) and writer, which adds llama.cpp's `split.no`,
`split.count` and `split.tensors.count` keys, so llama.cpp and the Hub load the shards as one
model from the first file.
"""

from __future__ import annotations

from pathlib import Path

def split_gguf(src: Path, dst: Path, max_bytes: int) -> list[Path]:
    """Write SRC as shards named after DST (`DST.stem-0000i-of-0000N.gguf`), each at most about MAX_BYTES of tensors.

    One tensor larger than the limit gets a shard of its own (llama.cpp never splits a tensor).
    """
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(str(dst), arch=arch, split_max_size=max_bytes)
    S = gguf.Keys.Split
    split_keys = (S.LLM_KV_SPLIT_NO, S.LLM_KV_SPLIT_COUNT, S.LLM_KV_SPLIT_TENSORS_COUNT)  # the writer adds its own
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") or field.name in split_keys:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    paths = writer.format_shard_names(Path(dst))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    return paths
