"""Whisper encoder inference on short windows: `WhisperEncoderLayer`'s forward written out, on the same weights.

Per streaming slice the audio encoder runs its six layers over a 1.2 s window (60 positions), and nearly all the
time goes to the 36 matrix products. Two things make it cheaper without touching the model:

- Only the positions the caller keeps go through the last layer's query, attention output and MLP (its keys and
  values still see the whole window): a slice keeps 10 of 60, which saves 12 % of the arithmetic.
- On a CPU in float32 the products go to oneDNN (`torch.ops.mkldnn._linear_pointwise`, torch's own op for a oneDNN
  linear layer, which its compiler emits on CPUs) instead of MKL's sgemm, which `F.linear` calls; where the op is
  missing, `F.linear`. It reads the plain weight tensor (a prepacked copy would be another 10 % faster here but
  75 MB more memory). Its sums round otherwise (embeddings of rms 1.4 within 5e-3, see
  tests/test_whisper_inference.py) and give each window of a batch exactly what it gets alone, as MKL's do.

`python -m teller_recipe.benchmark.audio_encoder --repeats 60` times the stage with each forward in turn
(2026-12-02, this project's 2-core AMD EPYC, one torch thread, load 3.2-3.3 from other work; ms per window, fastest
/ median): live, one window, 43.2 / 55.4 with the transformers layers, 37.4 / 48.3 written out with MKL's products,
35.5 / 41.8 with oneDNN's; a file's batch of 10, 31.0 / 37.6, 27.1 / 33.1, 25.7 / 28.6.

The rest is what the transformers layer does, in its order: pre-norm attention with the query scaled before the
product (whisper is sensitive to that order), SDPA with scale 1, residual, pre-norm GELU MLP, residual, the float16
clamp; then the final layer norm. tests/test_whisper_inference.py checks it against `WhisperEncoderLayer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder


def _onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear kernel (not every build or platform does)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_LINEAR = _onednn_linear_available()


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """`layer(x)`: on a CPU in float32 with oneDNN's kernel (faster than MKL here, see the module docstring), else
    `F.linear` (also where gradients are wanted: the oneDNN op has no backward)."""
    weight = layer.weight
    onednn = ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
    if not onednn or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.linear(x, weight, layer.bias)
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, layer.bias, "none", [], "")
    return out.view(*x.shape[:-1], -1)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def encode_layers(encoder: WhisperEncoder, x: torch.Tensor, keep: slice = slice(None)) -> torch.Tensor:
    """The encoder's layers and final norm on its input embeddings `x` (batch, positions, d_model) (after the
    convolutions and positions); returns the positions `keep` of the output."""
    batch, positions, width = x.shape
    heads = encoder.config.encoder_attention_heads
    last = len(encoder.layers) - 1
    for i, layer in enumerate(encoder.layers):
        attention = layer.self_attn
        h = _layer_norm(x, layer.self_attn_layer_norm)
        if i == last:  # the last layer's output is needed only where it is kept
            x = x[:, keep]
        queries = h[:, keep] if i == last else h
        q = (linear(queries, attention.q_proj) * attention.scaling).view(batch, -1, heads, attention.head_dim)
        k = linear(h, attention.k_proj).view(batch, positions, heads, attention.head_dim)
        v = linear(h, attention.v_proj).view(batch, positions, heads, attention.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0)
        x = x + linear(out.transpose(1, 2).reshape(batch, -1, width), attention.out_proj)
        h = _layer_norm(x, layer.final_layer_norm)
        x = x + linear(layer.activation_fn(linear(h, layer.fc1)), layer.fc2)
        if x.dtype == torch.float16:  # as the transformers layer does, against overflow to inf
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-limit, limit)
    return _layer_norm(x, encoder.layer_norm)
