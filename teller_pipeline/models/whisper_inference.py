"""Whisper encoder inference on short windows: `WhisperEncoderLayer`'s forward written out, on the same weights.

Per streaming slice the audio encoder runs its six layers over a 1.2 s window (60 positions), and nearly all the
time goes to the 36 matrix products. Three things make it cheaper without touching the model, the last one
optional and not exact:

- Only the positions the caller keeps go through the last layer's query, attention output and MLP (its keys and
  values still see the whole window): a slice keeps 10 of 60, which saves 12 % of the arithmetic.
- On a CPU in float32 the products go to oneDNN (`torch.ops.mkldnn._linear_pointwise`, torch's own op for a oneDNN
  linear layer, which its compiler emits on CPUs) instead of MKL's sgemm, which `F.linear` calls; where the op is
  missing, `F.linear`. It reads the plain weight tensor (a prepacked copy would be another 10 % faster here but
  75 MB more memory). Its sums round otherwise (embeddings of rms 1.4 within 5e-3, see
  tests/test_whisper_inference.py) and give each window of a batch exactly what it gets alone, as MKL's do.
- With `int8` (opt-in, see `TellerAudioEncoder.int8`), the query, key and first MLP products take int8 weights
  (one scale per output channel) and int8 inputs (fbgemm's dynamic quantization, 7 bits, one scale per window):
  23 % less time per live window, 15 % in a file's batch (the benchmark below, 2026-12-03, AMD EPYC, load 1.1:
  41.5 → 31.9 and 33.5 → 28.4 ms). Why those three: each product alone in int8 moved the embeddings by (a probe,
  three recordings) query 2 %, key 3 %, first MLP 4 %, attention output 4 %, value 7 %, second MLP 15 % (its input
  has channels 40-60 times the median one in the last three layers, which one scale cannot hold). The first three
  are half the arithmetic and together move the embeddings 6 %; all six moved them 21 %, and the mouth made from
  them opened less (every product in int8 with torch's `quantize_dynamic`, a probe: Grace Hopper's gap p90 0.126 →
  0.114 on the real clip).

`python -m teller_recipe.benchmark.audio_encoder --repeats 60` times the stage with each forward in turn
(2026-12-02, this project's 2-core AMD EPYC, one torch thread, load 3.2-3.3 from other work; ms per window, fastest
/ median): live, one window, 43.2 / 55.4 with the transformers layers, 37.4 / 48.3 written out with MKL's products,
35.5 / 41.8 with oneDNN's; a file's batch of 10, 31.0 / 37.6, 27.1 / 33.1, 25.7 / 28.6.

The rest is what the transformers layer does, in its order: pre-norm attention with the query scaled before the
product (whisper is sensitive to that order), SDPA with scale 1, residual, pre-norm GELU MLP, residual, the float16
clamp; then the final layer norm. tests/test_whisper_inference.py checks it against `WhisperEncoderLayer`.
"""

from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder


def _onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear kernel (not every build or platform does)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_LINEAR = _onednn_linear_available()


def _int8_linear_available() -> bool:
    """Whether this torch build has fbgemm's dynamically quantized linear kernels (x86 builds do)."""
    return ("fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch, "quantize_per_channel")
            and all(hasattr(torch.ops.quantized, op) for op in ("linear_prepack", "linear_dynamic")))


INT8_LINEAR = _int8_linear_available()
# Per layer, its int8 weight packed for fbgemm and the (address, version) of the float weight it was made from: a
# weight replaced or changed in place is packed again.
_PACKED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], torch.ScriptObject]] = weakref.WeakKeyDictionary()


def int8_weights(layer: nn.Linear) -> torch.ScriptObject:
    """`layer`'s weight in int8 (per output channel, its largest |w| → 127) and bias, packed for
    `torch.ops.quantized.linear_dynamic`; made on first use and kept beside the layer."""
    weight = layer.weight
    key = (weight.data_ptr(), weight._version)
    cached = _PACKED.get(layer)
    if cached is None or cached[0] != key:
        with torch.no_grad(), warnings.catch_warnings():
            # torch calls quantized tensors deprecated in favour of torchao, whose int8 CPU path needs
            # torch.compile; these are the kernels `torch.ao.quantization.quantize_dynamic` uses
            warnings.simplefilter("ignore")
            w = weight.detach().float()
            scales = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
            quantized = torch.quantize_per_channel(w, scales, torch.zeros(len(w), dtype=torch.long), 0, torch.qint8)
            bias = None if layer.bias is None else layer.bias.detach().float()
            cached = (key, torch.ops.quantized.linear_prepack(quantized, bias))
        _PACKED[layer] = cached
    return cached[1]


def linear(x: torch.Tensor, layer: nn.Linear, int8: bool = False) -> torch.Tensor:
    """`layer(x)`: on a CPU in float32 with oneDNN's kernel (faster than MKL here, see the module docstring), else
    `F.linear` (also where gradients are wanted: the oneDNN op has no backward).

    `int8`: on a CPU without autograd, int8 products instead (`int8_weights`; fbgemm quantizes the input to 7 bits,
    as `quantize_dynamic` does on x86, where 8 bits can overflow its 16-bit pair sums). The input's scale is taken
    window by window (the first axis of a 3-d `x`), so that a window of a batch gets what it gets alone."""
    weight = layer.weight
    if int8 and INT8_LINEAR and x.device.type == "cpu" and not torch.is_grad_enabled():
        packed = int8_weights(layer)
        windows = x.float() if x.dim() == 3 else x.float()[None]
        out = torch.stack([torch.ops.quantized.linear_dynamic(window, packed, True) for window in windows])
        return (out if x.dim() == 3 else out[0]).to(x.dtype)
    onednn = ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
    if not onednn or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.linear(x, weight, layer.bias)
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, layer.bias, "none", [], "")
    return out.view(*x.shape[:-1], -1)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def encode_layers(encoder: WhisperEncoder, x: torch.Tensor, keep: slice = slice(None),
                  int8: bool = False) -> torch.Tensor:
    """The encoder's layers and final norm on its input embeddings `x` (batch, positions, d_model) (after the
    convolutions and positions); returns the positions `keep` of the output. `int8`: the products that follow a
    layer norm (query, key, first MLP layer) in int8 (see the module docstring)."""
    batch, positions, width = x.shape
    heads = encoder.config.encoder_attention_heads
    last = len(encoder.layers) - 1
    for i, layer in enumerate(encoder.layers):
        attention = layer.self_attn
        h = _layer_norm(x, layer.self_attn_layer_norm)
        if i == last:  # the last layer's output is needed only where it is kept
            x = x[:, keep]
        queries = h[:, keep] if i == last else h
        q = (linear(queries, attention.q_proj, int8) * attention.scaling).view(batch, -1, heads, attention.head_dim)
        k = linear(h, attention.k_proj, int8).view(batch, positions, heads, attention.head_dim)
        v = linear(h, attention.v_proj).view(batch, positions, heads, attention.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0)
        x = x + linear(out.transpose(1, 2).reshape(batch, -1, width), attention.out_proj)
        h = _layer_norm(x, layer.final_layer_norm)
        x = x + linear(layer.activation_fn(linear(h, layer.fc1, int8)), layer.fc2)
        if x.dtype == torch.float16:  # as the transformers layer does, against overflow to inf
            limit = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-limit, limit)
    return _layer_norm(x, encoder.layer_norm)
