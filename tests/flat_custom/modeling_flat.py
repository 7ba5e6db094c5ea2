"""A tiny custom-code model (Llama math and tensor names) whose decoder blocks are not in a ModuleList:
they sit in a ModuleDict keyed '0', '1', ..., so block-by-block evaluation can't find them and
hubtool evaluates the model in memory. Written for hubtool's tests."""

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel


class TinyFlatConfig(LlamaConfig):
    model_type = "llama"


class LayerDict(nn.ModuleDict):
    """Blocks by name; a slice gives them in order (what LlamaModel.forward iterates)."""

    def __getitem__(self, key):
        if isinstance(key, slice):
            return list(self.values())[key]
        return super().__getitem__(key)


class TinyFlatModel(LlamaModel):
    config_class = TinyFlatConfig

    def __init__(self, config):
        super().__init__(config)
        self.layers = LayerDict({str(i): layer for i, layer in enumerate(self.layers)})


class TinyFlatForCausalLM(LlamaForCausalLM):
    config_class = TinyFlatConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = TinyFlatModel(config)
        self.post_init()
