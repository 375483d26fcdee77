"""Qwen2 inference over a preallocated KV cache: `transformers`' `Qwen2Model` forward, written out for small steps.

The motion generator feeds its backbone a few tokens at a time (an audio slice, then one motion pair per step), and
on such steps `Qwen2Model.forward` spends most of its time in Python (mask creation, the cache object, output
capture, rotary bookkeeping) rather than in arithmetic. This is the same computation on the same weights, read from
the `Qwen2Model` that owns them (training still runs its forward): per layer RMSNorm, q/k/v projections, rotary
embedding from a precomputed cos/sin table, grouped-query attention over the cache with
`scaled_dot_product_attention`, o_proj, residual, RMSNorm, SwiGLU MLP, residual; then the final norm.
tests/test_generator_inference.py checks it against `Qwen2Model` with a `DynamicCache`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Model


class StaticKVCache:
    """One sequence's cache: rotated keys and values of its first `length` positions, for every layer, in tensors of
    a fixed `capacity`; and what every step reuses: the rotary cos/sin table and causal mask of those positions,
    and each layer's q/k/v weights in one matrix."""

    def __init__(self, backbone: Qwen2Model, capacity: int) -> None:
        config = backbone.config
        # What this forward implements: `MotionGenerator` builds its backbone with transformers' defaults for these
        # (full attention, default rope, SiLU). A backbone that asks for more (another transformers release's
        # defaults, a model swapped in) is refused here rather than run wrongly.
        if set(config.layer_types) != {"full_attention"}:
            raise NotImplementedError("the generator's inference forward has no sliding-window attention layers; "
                                      "this backbone config asks for them")
        if config.rope_parameters["rope_type"] != "default" or config.hidden_act != "silu":
            raise NotImplementedError(f"the generator's inference forward implements default rope and SiLU only; this "
                                      f"backbone config asks for rope {config.rope_parameters['rope_type']!r} and "
                                      f"activation {config.hidden_act!r}")
        attention = backbone.layers[0].self_attn
        weight = backbone.norm.weight
        shape = (1, config.num_key_value_heads, capacity, attention.head_dim)
        self.keys = [weight.new_zeros(shape) for _ in backbone.layers]
        self.values = [weight.new_zeros(shape) for _ in backbone.layers]
        # As `Qwen2RotaryEmbedding` computes it for these positions: in float32, then in the model's dtype. The sine
        # of the first half carries `rotate_half`'s minus sign, so rotating is x * cos + roll(x) * sin.
        rotary = backbone.rotary_emb
        positions = torch.arange(capacity, device=weight.device).float()
        angles = positions[:, None] * rotary.inv_freq.float()
        cos, sin = angles.cos(), angles.sin()
        self.cos = (torch.cat([cos, cos], -1) * rotary.attention_scaling).to(weight.dtype)
        self.sin = (torch.cat([-sin, sin], -1) * rotary.attention_scaling).to(weight.dtype)
        self.causal = torch.ones(capacity, capacity, device=weight.device, dtype=torch.bool).tril()
        # q, k and v in one matrix product per layer (on these small steps each call's overhead counts), and k with
        # q in one rotation. Copies of the weights as they are when the cache is made, once per session.
        self.qkv = [
            (torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
             torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            for a in (layer.self_attn for layer in backbone.layers)
        ]
        self.capacity = capacity
        self.length = 0


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """`Qwen2RMSNorm`: normalised in float32, scaled in the input's dtype."""
    if x.dtype == torch.float32:  # one call, the same numbers
        return torch.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)
    return norm.weight * F.rms_norm(x.float(), x.shape[-1:], eps=norm.variance_epsilon).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (1, heads, n, head_dim) at the positions of `cos`, `sin` (n, head_dim)."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


def forward_with_cache(backbone: Qwen2Model, cache: StaticKVCache, embeddings: torch.Tensor) -> torch.Tensor:
    """Final hidden states (1, n, D) of `embeddings` (1, n, D) at the positions following the cache's; the cache
    then holds them too."""
    n = embeddings.shape[1]
    start, end = cache.length, cache.length + n
    if end > cache.capacity:
        raise ValueError(f"the KV cache holds {cache.capacity} positions, {end} asked")
    cos, sin = cache.cos[start:end], cache.sin[start:end]
    # Position start + i sees positions up to its own; a single new token sees everything, no mask needed.
    mask = cache.causal[start:end, :end] if n > 1 else None
    x = embeddings
    heads, kv_heads = backbone.config.num_attention_heads, backbone.config.num_key_value_heads
    for layer, keys, values, qkv in zip(backbone.layers, cache.keys, cache.values, cache.qkv, strict=True):
        attention, mlp = layer.self_attn, layer.mlp
        h = _rms_norm(x, layer.input_layernorm)
        projected = F.linear(h, *qkv).view(1, n, -1, attention.head_dim).transpose(1, 2)  # (1, H + 2 KV, n, hd)
        q, k = _rotate(projected[:, : heads + kv_heads], cos, sin).split([heads, kv_heads], 1)
        keys.narrow(2, start, n).copy_(k)
        values.narrow(2, start, n).copy_(projected[:, heads + kv_heads :])
        out = F.scaled_dot_product_attention(q, keys.narrow(2, 0, end), values.narrow(2, 0, end), attn_mask=mask,
                                             scale=attention.scaling, enable_gqa=True)
        x = x + F.linear(out.transpose(1, 2).reshape(1, n, -1), attention.o_proj.weight, attention.o_proj.bias)
        h = _rms_norm(x, layer.post_attention_layernorm)
        x = x + F.linear(F.silu(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight),
                         mlp.down_proj.weight)
    cache.length = end
    return _rms_norm(x, backbone.norm)
