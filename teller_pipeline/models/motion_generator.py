"""Motion generator (FMLG): a decoder-only transformer over audio slices interleaved with motion tokens.

Sequence, as in the paper's figure, with RealTalk's identity prior as a prefix:

    [identity prior] [audio slice 0 (5 tokens)] [motion pair 0..3 of slice 0] [audio slice 1] [pairs of 1] ...

Each 200 ms slice brings 10 whisper frames (50 Hz), packed two by two into 5 audio tokens. Its motion is
`num_quantizers` RVQ tokens predicted two per step: the hidden state at the slice's last audio token predicts
tokens (0, 1), the embedded pair (0, 1) predicts (2, 3), and so on. The backbone is `transformers`' Qwen2
(random init, like the paper), run with a KV cache; the context is bounded (`max_context_slices`) by
re-encoding the most recent slices when it fills up, so memory and time per slice stay constant however long
the speech is. Training sees the same bounded windows (random crops starting at the prefix).

Training runs `Qwen2Model`'s own forward. Generation feeds the same weights through `qwen2_inference`, the same
computation written out over a KV cache preallocated for the bounded context: each step feeds 1 to 6 tokens, and on
steps that small Qwen2Model's forward spends most of its time in Python (masks, the cache object, rotary
bookkeeping) rather than in arithmetic. Its hidden states and sampled codes are Qwen2Model's, bit for bit on this
machine (tests/test_generator_inference.py), in about two thirds of the time: the generator stage of
`python -m teller_recipe.benchmark.benchmark --repeats 1` went from 5.0-5.3 to 3.3-3.6 ms per frame (25-27 to
17-18 ms per slice; 2 shared cores at load 2-4). What is left is mostly arithmetic: the backbone's 12.6 MB of
weights read four times per slice, and every eighth slice a re-encoding of 73 positions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from transformers import Qwen2Config, Qwen2Model

from ..rig import NUM_KEYPOINTS
from .qwen2_inference import StaticKVCache, forward_with_cache

IDENTITY_RANGE_QUANTILE = 0.05  # identity priors are clamped to the training faces' 5th…95th percentile


def in_image_plane(identity_prior: torch.Tensor) -> torch.Tensor:
    """The identity prior (..., 21, 3) without its depth: what the generator is told of a face.

    Landmark depth from one photo is unreliable (the landmarker's z of a real portrait's lips, chin and mouth
    corners lands up to 1.2 beyond the training faces' range), and the generator answered some such priors with a
    half-size mouth even after the range clamp: on Obama speaking, the lip gap of the landmarks it drives was p90
    0.046-0.069 over seeds 0-2 with depth, 0.129-0.138 without; the other example portraits moved by at most
    ±0.011 (`python -m teller_recipe.evaluation.portraits --seed S`, table "Before rendering").
    """
    return torch.cat([identity_prior[..., :2], torch.zeros_like(identity_prior[..., 2:])], -1)


@dataclass
class GeneratorState:
    """Per-session generation state: KV cache, pending inputs and the recent slices (for re-encoding)."""

    prefix: torch.Tensor  # (1, P, D) identity-prior embeddings
    cache: StaticKVCache | None = None  # allocated by the first slice, refilled by every re-encoding
    pending: torch.Tensor | None = None  # embeddings not yet fed (the last pair of the previous slice)
    slices_in_context: int = 0
    history: deque = field(default_factory=deque)  # (audio (10, 512), codes (Q,)) of recent slices


class MotionGenerator(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        audio_dim: int = 512,
        audio_frames_per_slice: int = 10,
        audio_tokens_per_slice: int = 5,
        num_quantizers: int = 8,
        codebook_size: int = 512,
        tokens_per_step: int = 2,
        identity_dim: int = NUM_KEYPOINTS * 3,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int = 768,
        max_context_slices: int = 16,
        rope_theta: float = 10000.0,
        dropout: float = 0.0,
        audio_window_seconds: float = 1.0,
        audio_lookahead_seconds: float = 0.2,
        # Of the lookahead, the part that is heard; the rest of the window is silence. A slice is generated once
        # this much audio past it has arrived, so it sets the live delay. The starter checkpoint was trained
        # hearing all 0.2 s. Hearing less (`python -m teller_recipe.evaluation.portraits --corpus none --held-out 0
        # --seed S --lookahead-heard H`, table "Before rendering", real speech, mean over ten portraits and seeds
        # 0-2), 0.2 / 0.1 / 0.05 s: gap p90 0.126 / 0.124 / 0.122, maximum 0.216 / 0.208 / 0.202; sync r
        # 0.924 / 0.927 / 0.934. That is 100-150 ms sooner, but Grace Hopper's mouth fell under
        # tests/test_portraits.py's size floor at 0.1 s (ratio 0.83), so the default hears it all until a
        # generator is trained hearing less.
        audio_lookahead_heard_seconds: float = 0.2,
    ):
        super().__init__()
        if num_quantizers % tokens_per_step:
            raise ValueError("num_quantizers must be a multiple of tokens_per_step")
        if not 0 <= audio_lookahead_heard_seconds <= audio_lookahead_seconds:
            raise ValueError("audio_lookahead_heard_seconds must be between 0 and audio_lookahead_seconds")
        if audio_frames_per_slice % audio_tokens_per_slice:
            raise ValueError("audio_frames_per_slice must be a multiple of audio_tokens_per_slice")
        self.steps_per_slice = num_quantizers // tokens_per_step
        frames_per_token = audio_frames_per_slice // audio_tokens_per_slice
        self.audio_proj = nn.Sequential(
            nn.LayerNorm(audio_dim * frames_per_token),
            nn.Linear(audio_dim * frames_per_token, hidden_size),
        )
        self.identity_proj = nn.Sequential(
            nn.Linear(identity_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.bos = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        # One embedding table per RVQ level; a pair's input is the sum of its two tokens' embeddings.
        self.token_embedding = nn.Embedding(num_quantizers * codebook_size, hidden_size)
        self.audio_position = nn.Parameter(torch.randn(audio_tokens_per_slice, hidden_size) * 0.02)
        self.pair_position = nn.Parameter(torch.randn(self.steps_per_slice, hidden_size) * 0.02)
        backbone_config = Qwen2Config(
            vocab_size=2,  # unused: the backbone only sees inputs_embeds
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=8192,
            rope_theta=rope_theta,
            attention_dropout=dropout,
            attn_implementation="sdpa",
        )
        self.backbone = Qwen2Model(backbone_config)
        # Qwen2 has attention dropout only; dropping input embeddings too regularises the small model, which
        # otherwise overfits a few hours of synthetic speech.
        self.embedding_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_quantizers * codebook_size)
        # The range of identity priors seen in training (`fit_identity_range`); unfitted, nothing is clamped.
        self.register_buffer("identity_prior_low", torch.full((identity_dim,), float("-inf")))
        self.register_buffer("identity_prior_high", torch.full((identity_dim,), float("inf")))

    def fit_identity_range(self, priors: torch.Tensor, quantile: float = IDENTITY_RANGE_QUANTILE) -> None:
        """Clamp future identity priors to the range of the training faces' `priors` (N, 21, 3), per coordinate.

        Real photos land far outside a synthetic corpus's faces (landmarker depth on a chin, a turned head's lip
        line), and the generator, never having seen such a prior, answered with a nearly shut mouth: before this
        clamp, `python -m teller_recipe.evaluation.portraits` read the smiling and turned example portraits' lip
        gap p90 as 0.059-0.074 on real speech, 0.150-0.160 after it. Within the range the prior passes unchanged.
        """
        flat = in_image_plane(priors).reshape(len(priors), -1).float()
        self.identity_prior_low.copy_(torch.quantile(flat, quantile, dim=0))
        self.identity_prior_high.copy_(torch.quantile(flat, 1.0 - quantile, dim=0))

    # ---------------------------------------------------------------- embeddings
    def embed_prefix(self, identity_prior: torch.Tensor) -> torch.Tensor:
        """(B, 21, 3) identity prior → (B, 2, D): a learned start token and the identity token."""
        prior = torch.clamp(in_image_plane(identity_prior).flatten(1), self.identity_prior_low,
                            self.identity_prior_high)
        identity = self.identity_proj(prior)[:, None]
        return torch.cat([self.bos.expand(identity.shape[0], -1, -1), identity], 1)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, S, 10, 512) whisper frames → (B, S, 5, D)."""
        b, s, f, d = audio.shape
        tokens = audio.reshape(b, s, self.config.audio_tokens_per_slice, -1)
        return self.audio_proj(tokens) + self.audio_position

    def embed_pairs(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, S, Q) token ids → (B, S, Q/2, D) pair embeddings."""
        q = self.config.num_quantizers
        offsets = torch.arange(q, device=codes.device) * self.config.codebook_size
        emb = self.token_embedding(codes + offsets)  # (B, S, Q, D)
        b, s = codes.shape[:2]
        pairs = emb.reshape(b, s, self.steps_per_slice, self.config.tokens_per_step, -1).sum(3)
        return pairs + self.pair_position

    def _embed_pair(self, pair: torch.Tensor, step: int) -> torch.Tensor:
        """Embedding (1, 1, D) of the two tokens (2,) predicted at `step`."""
        k = self.config.tokens_per_step
        levels = torch.arange(step * k, (step + 1) * k, device=pair.device)
        emb = self.token_embedding(pair + levels * self.config.codebook_size).sum(0)
        return (emb + self.pair_position[step])[None, None]

    def _logits(self, hidden: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """Hidden states → logits of the tokens they predict, (…, steps, 2, C) or (…, 2, C) for one step."""
        k, c = self.config.tokens_per_step, self.config.codebook_size
        if step is not None:  # only the head's rows of this step's levels: a quarter of its work
            rows = slice(step * k * c, (step + 1) * k * c)
            return F.linear(hidden, self.head.weight[rows], self.head.bias[rows]).unflatten(-1, (k, c))
        # hidden (..., steps, D): step j predicts levels 2j, 2j+1
        logits = self.head(hidden).unflatten(-1, (self.config.num_quantizers, c))
        steps = logits.reshape(*logits.shape[:-3], self.steps_per_slice, self.steps_per_slice, k, -1)
        return steps.diagonal(dim1=-4, dim2=-3).movedim(-1, -3)

    # ---------------------------------------------------------------- training
    def forward(self, identity_prior: torch.Tensor, audio: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, S, Q, C) for slices of audio (B, S, 10, 512) and their codes (B, S, Q)."""
        b, s = codes.shape[:2]
        a = self.config.audio_tokens_per_slice
        per_slice = torch.cat([self.embed_audio(audio), self.embed_pairs(codes)], 2)  # (B, S, A+Q/2, D)
        sequence = torch.cat([self.embed_prefix(identity_prior), per_slice.flatten(1, 2)], 1)
        hidden = self.backbone(inputs_embeds=self.embedding_dropout(sequence)).last_hidden_state
        p = sequence.shape[1] - per_slice.shape[1] * per_slice.shape[2]
        hidden = hidden[:, p:].reshape(b, s, a + self.steps_per_slice, -1)
        # Predictors: the last audio token, then every pair but the slice's last.
        predictors = hidden[:, :, a - 1 : a - 1 + self.steps_per_slice]
        logits = self._logits(predictors)  # (B, S, steps, 2, C)
        return logits.flatten(2, 3)

    # ---------------------------------------------------------------- streaming generation
    def start(self, identity_prior: torch.Tensor) -> GeneratorState:
        """A fresh state for one source face; `identity_prior` is (1, 21, 3)."""
        return GeneratorState(prefix=self.embed_prefix(identity_prior))

    def context_capacity(self, prefix_length: int) -> int:
        """Positions the bounded context can reach: the prefix and `max_context_slices` whole slices."""
        per_slice = self.config.audio_tokens_per_slice + self.steps_per_slice
        return prefix_length + self.config.max_context_slices * per_slice

    def _feed(self, state: GeneratorState, embeddings: torch.Tensor) -> torch.Tensor:
        """The last hidden state (1, D) of `embeddings` (1, n, D), fed after what the cache holds."""
        return forward_with_cache(self.backbone, state.cache, embeddings)[:, -1]

    def _reencode(self, state: GeneratorState) -> None:
        """Restart the cache from the prefix and the most recent slices (bounded context)."""
        keep = max(1, self.config.max_context_slices // 2)
        while len(state.history) > keep:
            state.history.popleft()
        if state.cache is None:
            state.cache = StaticKVCache(self.backbone, self.context_capacity(state.prefix.shape[1]))
        state.cache.length = 0
        parts = [state.prefix]
        if state.history:
            audio = torch.stack([a for a, _ in state.history])[None]
            codes = torch.stack([c for _, c in state.history])[None]
            per_slice = torch.cat([self.embed_audio(audio), self.embed_pairs(codes)], 2)[0]
            parts.append(per_slice.flatten(0, 1)[None, :-1])  # the newest slice's last pair stays pending
            state.pending = per_slice[-1:, -1][None]
        else:
            state.pending = None
        self._feed(state, torch.cat(parts, 1))
        state.slices_in_context = len(state.history)

    @torch.no_grad()
    def generate_slice(
        self,
        state: GeneratorState,
        audio: torch.Tensor,
        generator: torch.Generator | None = None,
        top_k: int = 15,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Tokens (Q,) for one slice of audio (10, 512), sampled top-k two per step."""
        if state.cache is None or state.slices_in_context >= self.config.max_context_slices:
            self._reencode(state)
        audio_tokens = self.embed_audio(audio[None, None])[0]  # (1, A, D)
        inputs = audio_tokens if state.pending is None else torch.cat([state.pending, audio_tokens], 1)
        hidden = self._feed(state, inputs)
        codes = []
        for step in range(self.steps_per_slice):
            logits = self._logits(hidden, step)[0]  # (2, C)
            pair = sample_top_k(logits, top_k, temperature, generator)
            codes.append(pair)
            if step < self.steps_per_slice - 1:
                hidden = self._feed(state, self._embed_pair(pair, step))
        state.pending = self._embed_pair(pair, self.steps_per_slice - 1)
        codes = torch.cat(codes)
        state.history.append((audio, codes))
        while len(state.history) > self.config.max_context_slices:
            state.history.popleft()
        state.slices_in_context += 1
        return codes

    @torch.no_grad()
    def generate(
        self,
        identity_prior: torch.Tensor,
        audio: torch.Tensor,
        generator: torch.Generator | None = None,
        top_k: int = 15,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Tokens (S, Q) for a whole utterance's slices of audio (S, 10, 512), generated slice by slice as a
        streaming session does (same bounded context, same sampling); `identity_prior` is (1, 21, 3)."""
        state = self.start(identity_prior)
        return torch.stack([self.generate_slice(state, a, generator, top_k, temperature) for a in audio])


def sample_top_k(
    logits: torch.Tensor, top_k: int, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of `logits` (N, C): top-k sampling; temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
