"""A compact model in the original Qwen layout (`QWenLMHeadModel`), written for hubtool's tests.

Parameter names match the published checkpoints: transformer.wte, transformer.h.N.{ln_1, attn.c_attn
(fused q/k/v with bias), attn.c_proj, ln_2, mlp.w1, mlp.w2, mlp.c_proj}, transformer.ln_f, lm_head.
RMSNorm, rotary position embedding on the first `rotary_pct` of each head (rotate-half), SwiGLU MLP
`c_proj(w1(x) * silu(w2(x)))` of width intermediate_size // 2. Dynamic NTK and log-n attention scaling
only act past `seq_length` in the original; this code refuses such lengths instead of emulating them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_qwen import QWenConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.to(dtype)) * self.weight


class RotaryEmbedding(nn.Module):
    """cos/sin tables computed on each call (no buffer: transformers 5 loads models on the meta device and
    leaves non-persistent buffers uninitialised)."""

    def __init__(self, dim, base=10000):
        super().__init__()
        self.dim = dim
        self.base = base

    def forward(self, positions):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=positions.device).float() / self.dim))
        freqs = torch.outer(positions.float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()  # [seq, rot_dim]


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    """x [b, heads, seq, head_dim]; rotates the first cos.shape[-1] dimensions."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos.to(x.dtype) + _rotate_half(x_rot) * sin.to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1)


class QWenAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.kv_channels
        self.projection_size = config.kv_channels * config.num_attention_heads
        self.c_attn = nn.Linear(config.hidden_size, 3 * self.projection_size)
        self.c_proj = nn.Linear(self.projection_size, config.hidden_size, bias=not config.no_bias)

    def forward(self, hidden_states, rotary, attention_mask=None):
        b, n, _ = hidden_states.shape
        q, k, v = self.c_attn(hidden_states).split(self.projection_size, dim=-1)
        q, k, v = (t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=attention_mask is None,
                                             scale=1.0 / math.sqrt(self.head_dim))
        return self.c_proj(out.transpose(1, 2).reshape(b, n, self.projection_size))


class QWenMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        ff = config.intermediate_size // 2
        self.w1 = nn.Linear(config.hidden_size, ff, bias=not config.no_bias)
        self.w2 = nn.Linear(config.hidden_size, ff, bias=not config.no_bias)
        self.c_proj = nn.Linear(ff, config.hidden_size, bias=not config.no_bias)

    def forward(self, x):
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = QWenAttention(config)
        self.ln_2 = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, hidden_states, rotary=None, attention_mask=None, **kwargs):
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), rotary, attention_mask)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class QWenPreTrainedModel(PreTrainedModel):
    config_class = QWenConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["QWenBlock"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, self.config.initializer_range)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class QWenModel(QWenPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList([QWenBlock(config) for _ in range(config.num_hidden_layers)])
        self.ln_f = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        rot_dim = int(config.kv_channels * config.rotary_pct)
        self.rotary_emb = RotaryEmbedding(rot_dim, base=config.rotary_emb_base)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, use_cache=None, return_dict=True, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        b, n, _ = inputs_embeds.shape
        if n > self.config.seq_length:
            raise ValueError(f"sequence of {n} tokens is longer than seq_length {self.config.seq_length}")
        positions = torch.arange(n, device=inputs_embeds.device)
        rotary = self.rotary_emb(positions)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            causal = torch.ones(n, n, dtype=torch.bool, device=inputs_embeds.device).tril()
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
            mask = mask | torch.eye(n, dtype=torch.bool, device=mask.device)[None, None]  # padded rows attend to themselves
        hidden = inputs_embeds
        for block in self.h:
            hidden = block(hidden, rotary=rotary, attention_mask=mask)
        return BaseModelOutputWithPast(last_hidden_state=self.ln_f(hidden))


class QWenLMHeadModel(QWenPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, use_cache=None,
                return_dict=True, **kwargs):
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds).last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss=loss, logits=logits)
