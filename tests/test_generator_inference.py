"""The motion generator's inference forward (`qwen2_inference`) computes what `transformers`' Qwen2Model computes.

Generation feeds the backbone through a hand-written forward over a preallocated KV cache; training runs
`Qwen2Model` itself. Here both run the bundled checkpoint's backbone on the same inputs: hidden states over a
session's worth of steps and a re-encoding, and the codes `generate` samples.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from teller_pipeline import MotionGenerator
from teller_pipeline.models.qwen2_inference import StaticKVCache, forward_with_cache

from .conftest import CHECKPOINT

# Max |difference| of hidden states per dtype (float16: the values reach ~4, where its spacing is 0.004). They come
# out bit-identical on this machine in both.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}


def _qwen2_feed(self: MotionGenerator, state, embeddings: torch.Tensor) -> torch.Tensor:
    """`MotionGenerator._feed` as it was: Qwen2Model with a DynamicCache, restarted when the state's cache is."""
    if state.cache.length == 0:
        state.qwen2_cache = DynamicCache(config=self.backbone.config)
    start = state.cache.length
    positions = torch.arange(start, start + embeddings.shape[1])[None]
    out = self.backbone(inputs_embeds=embeddings, past_key_values=state.qwen2_cache, use_cache=True,
                        position_ids=positions)
    state.cache.length += embeddings.shape[1]
    return out.last_hidden_state[:, -1]


def _full_head_logits(self: MotionGenerator, hidden: torch.Tensor, step: int) -> torch.Tensor:
    """`MotionGenerator._logits` for one step as it was: every level's logits, then the step's two."""
    logits = self.head(hidden).unflatten(-1, (self.config.num_quantizers, self.config.codebook_size))
    k = self.config.tokens_per_step
    return logits[..., step * k : (step + 1) * k, :]


@pytest.fixture(scope="module")
def generator() -> MotionGenerator:
    return MotionGenerator.from_pretrained(CHECKPOINT / "motion_generator").eval()


def _slice_chunks(generator: MotionGenerator) -> list[int]:
    """Sizes of what `generate_slice` feeds for one slice: the previous slice's last pair and the audio tokens,
    then one pair per step but the last."""
    return [1 + generator.config.audio_tokens_per_slice] + [1] * (generator.steps_per_slice - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@torch.no_grad()
def test_hidden_states_equal_qwen2s_over_a_full_context_and_a_reencoding(generator, dtype):
    generator = copy.deepcopy(generator).to(dtype)
    backbone, config = generator.backbone, generator.config
    prefix_length = 2
    per_slice = _slice_chunks(generator)
    first = [prefix_length, per_slice[0] - 1] + per_slice[1:]  # the prefix, then a slice with no pair before it
    full = first + per_slice * (config.max_context_slices - 1)
    assert sum(full) == generator.context_capacity(prefix_length) - 1  # the newest pair stays pending
    reencoded = prefix_length + config.max_context_slices // 2 * sum(per_slice) - 1
    chunks = full + [None, reencoded] + per_slice * 2  # None: the cache restarts
    cache = StaticKVCache(backbone, generator.context_capacity(prefix_length))
    qwen2_cache, length = DynamicCache(config=backbone.config), 0
    inputs = torch.Generator().manual_seed(0)
    worst = 0.0
    for size in chunks:
        if size is None:
            cache.length, qwen2_cache, length = 0, DynamicCache(config=backbone.config), 0
            continue
        embeddings = torch.randn(1, size, config.hidden_size, generator=inputs).to(dtype)
        ours = forward_with_cache(backbone, cache, embeddings)
        positions = torch.arange(length, length + size)[None]
        theirs = backbone(inputs_embeds=embeddings, past_key_values=qwen2_cache, use_cache=True,
                          position_ids=positions).last_hidden_state
        length += size
        assert cache.length == length
        worst = max(worst, float((ours - theirs).abs().max()))
    assert worst <= TOLERANCE[dtype], worst


def test_the_cache_refuses_positions_past_its_capacity(generator):
    cache = StaticKVCache(generator.backbone, 8)
    with torch.no_grad():
        forward_with_cache(generator.backbone, cache, torch.zeros(1, 8, generator.config.hidden_size))
        with pytest.raises(ValueError, match="8 positions"):
            forward_with_cache(generator.backbone, cache, torch.zeros(1, 1, generator.config.hidden_size))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generate_samples_the_codes_qwen2_gives(pipe, speech, seed, monkeypatch):
    """Real speech for 30 slices: a full context, then two re-encodings."""
    from teller_recipe.evaluation.evaluate import audio_slice_features

    generator = pipe.motion_generator
    assert 30 > generator.config.max_context_slices * 1.5
    audio = audio_slice_features(pipe, np.concatenate([speech, speech]), 30)
    assert len(audio) == 30
    middle = (generator.identity_prior_low + generator.identity_prior_high) / 2
    prior = middle.reshape(1, -1, 3)
    ours = generator.generate(prior, audio, torch.Generator().manual_seed(seed))
    monkeypatch.setattr(MotionGenerator, "_feed", _qwen2_feed)
    monkeypatch.setattr(MotionGenerator, "_logits", _full_head_logits)
    theirs = generator.generate(prior, audio, torch.Generator().manual_seed(seed))
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} of {ours.numel()} codes differ"
