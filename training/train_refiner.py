"""Train the temporal refiner (ETM): coarse token-decoded motion → the real motion, causally.

    accelerate launch --cpu --num_processes 1 training/train_refiner.py \
        --features data/features --tokenizer runs/starter/tokenizer/motion_tokenizer \
        --generator runs/starter/generator/motion_generator --output_dir runs/starter/refiner

Input per example: `--unroll_slices` consecutive slices as the generator samples them (`--generator`, what the
starter recipe uses; the refiner then corrects expression only) or as the tokenizer reconstructs them (without
it), their audio, and the `context_frames` before them. The refiner runs over the slices causally, as streaming
does: from the second slice on, its context is its own output, so it learns to work from that rather than from
clean motion it never sees in use. The context before the first slice is the coarse motion with `--generator`
(ground truth plus noise without it). Target: the slices' real motion. With `--closure_gate_weight` (off by
default; training/README.md, "A closure gate"), the refiner's closure gate also learns, per frame, whether the
data's lips meet (see `TemporalRefiner`). Writes OUTPUT/temporal_refiner.

With `--generator`, training ends by measuring `expression_gain` on the validation split (see
`TemporalRefiner`): the generated motion refined causally, as streaming does, against the real motion.

Sampling the generator is the slow part (~13 min of the starter recipe's refiner step on 2 cores). With
`--generated_cache DIR` the samples are kept there and a later run with the same generator weights, utterances and
`--sample_seed` loads them: refiners trained with other `--seed`s (initialisation and batches) or losses then take
minutes, and differ only in what they learn.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from teller_pipeline import rig
from teller_pipeline.models.motion_generator import MotionGenerator
from teller_pipeline.models.motion_tokenizer import MotionTokenizer
from teller_pipeline.models.temporal_refiner import TemporalRefiner, refine_causally
from teller_pipeline.motion import EXPRESSION
from teller_pipeline.streaming import FRAMES_PER_SLICE
from teller_recipe.conversion.build_checkpoint import SIZES
from teller_recipe.training.utils import (
    MetricsLog,
    add_common_args,
    cosine_schedule,
    load_features,
    make_accelerator,
    register_component_hooks,
    resume,
    save_checkpoint,
)

CLOSED_OPENING = 0.02  # mouth opening (inner-lip gap / inter-ocular distance, ~1.8 mm) below which lips meet


class Slices:
    """(context, coarse, audio, target) for random slices, all in the tokenizer's normalised space."""

    def __init__(self, data: dict, tokenizer: MotionTokenizer, context_frames: int, seed: int,
                 generated: list[torch.Tensor] | None = None):
        self.context_frames = context_frames
        self.rng = np.random.default_rng(seed)
        # With `generated` (the generator's sampled output) the refiner learns to fix what the generator gets
        # wrong, and its context starts from that output (head motion included), as it does while streaming.
        self.context_from_coarse = generated is not None
        self.motion, self.coarse, self.audio = [], [], []
        self.closed = [torch.from_numpy(np.asarray(opening) < CLOSED_OPENING).float()
                       for opening in data["mouth_opening"]]
        self.silent = [torch.from_numpy(np.asarray(silence, bool)).float() for silence in data["silence"]]
        with torch.no_grad():
            for k, (motion, audio) in enumerate(zip(data["motion"], data["audio_features"], strict=True)):
                target = tokenizer.normalize(torch.from_numpy(motion).float())
                self.motion.append(target)
                self.coarse.append(generated[k] if generated is not None else tokenizer.decode(
                    tokenizer.encode(target[None]))[0])
                self.audio.append(torch.from_numpy(audio))
        self.slices = np.array([len(m) // FRAMES_PER_SLICE for m in self.motion])
        neutral = tokenizer.normalize(torch.zeros(tokenizer.config.motion_dim))
        self.neutral = neutral

    def batch(self, size: int, context_noise: float = 0.05, unroll: int = 1):
        """`size` runs of `unroll` consecutive slices: context (B, C, D), coarse and target (B, unroll·5, D),
        audio (B, unroll, 10, 512), and whether the target's lips meet and whether it is silent (B, unroll·5, 2),
        as 0/1."""
        starts = np.maximum(self.slices - unroll + 1, 0)
        if not starts.any():
            raise ValueError(f"no utterance is {unroll} slices long: lower --unroll_slices")
        items = self.rng.choice(len(self.motion), size, p=starts / starts.sum())
        context, coarse, audio, target, closure = [], [], [], [], []
        for i in items:
            k = int(self.rng.integers(0, starts[i]))
            start, stop = k * FRAMES_PER_SLICE, (k + unroll) * FRAMES_PER_SLICE
            # With generated motion the context is the coarse motion too: the refiner's own earlier output, which
            # it sees in use, is closer to that than to the data.
            source = self.coarse if self.context_from_coarse else self.motion
            past = source[i][max(0, start - self.context_frames) : start]
            pad = self.neutral.expand(self.context_frames - len(past), -1)  # streams start at rest
            context.append(torch.cat([pad, past]))
            coarse.append(self.coarse[i][start:stop])
            audio.append(self.audio[i][k : k + unroll].float())
            target.append(self.motion[i][start:stop])
            closure.append(torch.stack([self.closed[i][start:stop], self.silent[i][start:stop]], -1))
        context = torch.stack(context)
        context = context + context_noise * torch.randn(context.shape, generator=torch.Generator().manual_seed(
            int(self.rng.integers(1 << 31))))
        return context, torch.stack(coarse), torch.stack(audio), torch.stack(target), torch.stack(closure)


# What forked generation workers read (a fork shares the models and data instead of pickling them).
_GENERATION: dict = {}


@torch.no_grad()
def _generate(indices: list[int]) -> list[torch.Tensor]:
    generator, tokenizer, data, seed, top_k = _GENERATION["job"]
    out = []
    for i in indices:
        prior = torch.from_numpy(np.asarray(data["identity_prior"][i], np.float32))[None]
        audio = torch.from_numpy(data["audio_features"][i]).float()
        codes = generator.generate(prior, audio, torch.Generator().manual_seed(seed * 100_003 + i), top_k)
        out.append(tokenizer.decode(codes[None])[0])
    return out


def generated_motion(generator: MotionGenerator, tokenizer: MotionTokenizer, data: dict, seed: int,
                     top_k: int = 15, workers: int = 1) -> list[torch.Tensor]:
    """The generator's sampled output for each utterance (normalised), produced slice by slice as streaming
    produces it (same bounded context, same sampling), in `workers` processes of one thread each. Each
    utterance has its own random seed, so the result does not depend on `workers`."""
    count = len(data["audio_features"])
    _GENERATION["job"] = (generator, tokenizer, data, seed, top_k)
    shards = [list(range(w, count, workers)) for w in range(workers)]
    if workers == 1:
        results = [_generate(shards[0])]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = list(pool.map(_generate, shards))
    _GENERATION.clear()
    out: list[torch.Tensor] = [torch.empty(0)] * count
    for shard, motions in zip(shards, results, strict=True):
        for i, motion in zip(shard, motions, strict=True):
            out[i] = motion
    return out


def cached_generated_motion(cache: str | None, generator: MotionGenerator, tokenizer: MotionTokenizer, data: dict,
                            seed: int, workers: int = 1) -> list[torch.Tensor]:
    """`generated_motion`, kept in the folder `cache` (None: not kept) under a name made of what it depends on: the
    generator's weights, the utterances' motion, `seed` and the sampling settings."""
    if cache is None:
        return generated_motion(generator, tokenizer, data, seed, workers=workers)
    digest = hashlib.sha256()
    for tensor in [*generator.state_dict().values(), *tokenizer.state_dict().values(), *map(torch.as_tensor,
                                                                                              data["motion"])]:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = os.path.join(cache, f"generated_{len(data['motion'])}_seed{seed}_{digest.hexdigest()[:16]}.pt")
    if os.path.exists(path):
        return torch.load(path)
    motion = generated_motion(generator, tokenizer, data, seed, workers=workers)
    os.makedirs(cache, exist_ok=True)
    torch.save(motion, path + ".partial")
    os.replace(path + ".partial", path)  # a run killed while saving leaves no truncated file under the name
    return motion


def unrolled_loss(model: TemporalRefiner, context: torch.Tensor, coarse: torch.Tensor, audio: torch.Tensor,
                  target: torch.Tensor, weights: torch.Tensor | None = None,
                  gap_axis: torch.Tensor | None = None,
                  closure: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], float] | None = None,
                  closure_targets: torch.Tensor | None = None, gate_weight: float = 0.0,
                  speech_closure_weight: float = 1.0) -> torch.Tensor:
    """Mean `refiner_loss` of `TemporalRefiner.unroll` over its slices, before the closure gate; each slice's
    velocity is taken from the frame before it (the context's last, then the refiner's own). With `gap_axis` (see
    `lip_gap_axis`), plus the mean absolute error of the inner-lip gap. With `closure` = (gap, weight) (see
    `closure_term`), plus how far the lips stay apart where the data's lips meet. With a closure gate, plus
    `gate_weight` × the binary cross-entropy of its logits against where the data's lips meet (`closure_targets`
    (B, S·5, 2): lips meet, silent), closures within speech (p, b, m: short and rare beside the pauses) weighted
    `speech_closure_weight`."""
    n = model.config.frames_per_slice
    gated, refined, logits = model.unroll_with_gate(context, coarse, audio)
    anchors = torch.cat([context[:, -1:], gated[:, n - 1 : -1 : n]], 1)  # (B, S, D): the frame before each slice
    losses = [refiner_loss(refined[:, k * n : (k + 1) * n], target[:, k * n : (k + 1) * n], anchors[:, k : k + 1],
                           weights) for k in range(audio.shape[1])]
    loss = torch.stack(losses).mean()
    if gap_axis is not None:
        loss = loss + ((refined - target) @ gap_axis).abs().mean()
    if closure is not None:
        loss = loss + closure_term(refined, target, *closure)
    if logits is not None and gate_weight:
        meet, silent = closure_targets.unbind(-1)
        weight = 1.0 + (speech_closure_weight - 1.0) * meet * (1.0 - silent)
        loss = loss + gate_weight * F.binary_cross_entropy_with_logits(logits, meet, weight)
    return loss


def closure_term(refined: torch.Tensor, target: torch.Tensor, gap: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 weight: float, closed_below: float = 0.02) -> torch.Tensor:
    """`weight` × the mean opening of the refined lips (inner-lip gap, cm of the canonical face, over the data's
    gap spread) where the data's lips meet (gap below `closed_below` cm): a one-sided penalty for lips that stay
    apart on p, b, m and in pauses; lips pressed tighter than the data's cost nothing. `gap` = (axis, offset,
    spread): the gap is features @ axis + offset (see `lip_gap`)."""
    axis, offset, spread = gap
    refined_gap, target_gap = refined @ axis + offset, target @ axis + offset
    closed = target_gap < closed_below
    opening = (refined_gap - target_gap.clamp_min(0)).clamp_min(0) / spread
    return weight * (opening * closed).sum() / closed.sum().clamp_min(1)


def lip_gap(tokenizer: MotionTokenizer, features: list[torch.Tensor],
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(axis, offset, spread): x @ axis + offset is the inner-lip gap of normalised features x (the lower inner
    lip's vertical offset minus the upper one's, cm); spread, its standard deviation over `features`."""
    axis, offset = torch.zeros(tokenizer.config.motion_dim), torch.zeros(())
    for name, sign in (("lower_lip_inner", 1.0), ("upper_lip_inner", -1.0)):
        k = rig.KEYPOINT_NAMES.index(name) * 3 + 1
        axis[k] = sign * tokenizer.feature_std[k]
        offset = offset + sign * tokenizer.feature_mean[k]
    return axis, offset, (torch.cat(features) @ axis).std().clamp_min(1e-6)


def lip_gap_axis(tokenizer: MotionTokenizer, features: list[torch.Tensor], gap_weight: float) -> torch.Tensor:
    """(D,) axis a such that (refined - target) @ a is the error of the inner-lip gap (lower minus upper inner
    lip, vertical), for normalised features, in units of the data's gap spread × `gap_weight`.

    Why try an absolute error of the gap besides the squared errors: where the audio leaves it uncertain whether
    the lips meet (a p, b or m), a squared error is least for the mean of closed and open, a mouth that never quite
    closes; an absolute error is least for the median, which closes when closing is the likelier. Measured, it barely
    moved that, so the recipe leaves it off (`--gap_weight 0`): with weight 1 the gap at p, b and m came to 0.357 of
    the gap on open vowels, against 0.368 for the same training without it (sync r 0.712 and 0.716; 40 held-out
    utterances decoded onto Grace Hopper, 2026-12-02; training/README.md, "Lips that meet on p, b and m")."""
    axis, _, spread = lip_gap(tokenizer, features)
    return axis * gap_weight / spread


def opening_model(tokenizer: MotionTokenizer, features: list[torch.Tensor], openings: list[np.ndarray],
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(axis, offset, direction) for the closure gate, from the data. x @ axis + offset is the inner-lip gap of
    normalised features x (cm, `lip_gap`) above that of the data's closed lips (the median where the mouth
    opening is under `CLOSED_OPENING`); direction is how the mouth's, chin's, jaw's and cheeks' keypoints move with
    that gap where the mouth is open (their regression on it), scaled so that axis @ direction = 1: moving x by
    -g · direction narrows the gap by exactly g, the lower face following as the data's does. The eyes and brows
    are left out: whatever they do beside the mouth in a corpus (on six utterances the brows rose with it), closing
    the lips should not move them."""
    axis, offset, _ = lip_gap(tokenizer, features)
    x = torch.cat(features)
    gap = x @ axis + offset
    opening = torch.from_numpy(np.concatenate([np.asarray(o, np.float32)[: len(f)]
                                               for o, f in zip(openings, features, strict=True)]))
    closed = opening < CLOSED_OPENING
    offset = offset - gap[closed].median()
    xo, go = x[~closed].double(), gap[~closed].double()
    direction = ((xo - xo.mean(0)) * (go - go.mean())[:, None]).sum(0) / ((go - go.mean()) ** 2).sum()
    lower_face = torch.zeros_like(direction, dtype=torch.bool)
    for k, name in enumerate(rig.KEYPOINT_NAMES):
        lower_face[3 * k : 3 * k + 3] = "lip" in name or name.startswith(("mouth", "chin", "jaw", "cheek"))
    direction[~lower_face] = 0.0
    direction = direction / (axis.double() @ direction)
    return axis, offset, direction.float()


def lip_weights(lip_weight: float, motion_dim: int) -> torch.Tensor:
    """Per-feature loss weights (mean 1): the lips' and chin's vertical offsets, what lip sync is made of,
    count `lip_weight` times as much as the other features."""
    weights = torch.ones(motion_dim)
    for k, name in enumerate(rig.KEYPOINT_NAMES):
        if "lip" in name or name == "chin":
            weights[k * 3 + 1] = lip_weight
    return weights / weights.mean()


def refiner_loss(refined: torch.Tensor, target: torch.Tensor, context: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted squared error of position, velocity (including the step from the last context frame into the
    slice) and acceleration; only the context's last frame is used."""
    full_refined = torch.cat([context[:, -1:], refined], 1)
    full_target = torch.cat([context[:, -1:], target], 1)
    weights = torch.ones(refined.shape[-1], device=refined.device) if weights is None else weights

    def error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a - b) ** 2 * weights).mean()

    return (error(refined, target) + error(full_refined.diff(dim=1), full_target.diff(dim=1))
            + 0.5 * error(full_refined.diff(n=2, dim=1), full_target.diff(n=2, dim=1)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, default_steps=3000)
    parser.add_argument("--tokenizer", required=True, help="a motion_tokenizer folder")
    parser.add_argument("--generator", default=None,
                        help="a motion_generator folder: refine its sampled output (expression only) instead of "
                             "the tokenizer's reconstruction of the data")
    parser.add_argument("--generated_utterances", type=int, default=None,
                        help="with --generator: how many training utterances to generate (default: all; sampling "
                             "is the slow part)")
    parser.add_argument("--workers", type=int, default=1,
                        help="with --generator: processes generating the training motion (one thread each)")
    parser.add_argument("--generated_cache", default=None,
                        help="with --generator: a folder that keeps the generator's samples for later runs")
    parser.add_argument("--sample_seed", type=int, default=None,
                        help="with --generator: the seed of its samples and of which utterances are sampled "
                             "(default: --seed)")
    parser.add_argument("--unroll_slices", type=int, default=4,
                        help="consecutive slices per example, refined causally (each sees its own earlier output)")
    parser.add_argument("--lip_weight", type=float, default=4.0,
                        help="weight of the lips' and chin's vertical offsets in the loss, relative to the rest")
    parser.add_argument("--gap_weight", type=float, default=0.0,
                        help="weight of an absolute error of the inner-lip gap in the loss (0, the default: none; "
                             "tried at 1, it barely helped, see lip_gap_axis)")
    parser.add_argument("--closure_weight", type=float, default=0.0,
                        help="weight of a one-sided penalty on lips left apart where the data's meet (0: none; "
                             "see closure_term)")
    parser.add_argument("--closure_gate_weight", type=float, default=0.0,
                        help="weight of the closure gate's cross-entropy (0, the default: a refiner without the "
                             "gate; tried at 1, see training/README.md, 'A closure gate')")
    parser.add_argument("--speech_closure_weight", type=float, default=8.0,
                        help="weight, in the gate's cross-entropy, of frames where the lips meet within speech")
    parser.add_argument("--closure_threshold", type=float, default=0.5,
                        help="probability of closed lips above which the gate starts closing them")
    parser.add_argument("--hidden_dim", type=int, default=None, help="override the size preset's refiner width")
    parser.add_argument("--num_layers", type=int, default=None, help="override the size preset's refiner depth")
    args = parser.parse_args(argv)
    accelerator = make_accelerator(args)

    tokenizer = MotionTokenizer.from_pretrained(args.tokenizer).eval()
    config = dict(SIZES[args.size]["refiner"])
    config.update({k: getattr(args, k) for k in ("hidden_dim", "num_layers") if getattr(args, k) is not None})
    gate = dict(closure_gate=True, closure_threshold=args.closure_threshold) if args.closure_gate_weight else {}
    model = TemporalRefiner(**config, **gate, expression_only=args.generator is not None)
    train_data = load_features(args.features, "train")
    validation_data = load_features(args.features, "validation")
    generated = {"train": None, "validation": None}
    if args.generator:
        generator = MotionGenerator.from_pretrained(args.generator).eval()
        sample_seed = args.seed if args.sample_seed is None else args.sample_seed
        picks = np.random.default_rng(sample_seed).permutation(len(train_data["motion"]))[: args.generated_utterances]
        train_data = {k: [v[i] for i in sorted(picks)] for k, v in train_data.items()}
        for split, data in (("train", train_data), ("validation", validation_data)):
            generated[split] = cached_generated_motion(args.generated_cache, generator, tokenizer, data, sample_seed,
                                                       workers=args.workers)
            accelerator.print(f"generated the {split} split's motion ({len(data['motion'])} utterances)")
    train = Slices(train_data, tokenizer, model.config.context_frames, args.seed, generated["train"])
    validation = Slices(validation_data, tokenizer, model.config.context_frames, args.seed + 1,
                        generated["validation"])

    if model.config.closure_gate:
        axis, offset, direction = opening_model(tokenizer, train.motion, train_data["mouth_opening"])
        model.lip_opening_axis.copy_(axis)
        model.lip_opening_offset.copy_(offset)
        model.closing_direction.copy_(direction)
    weights = lip_weights(args.lip_weight, model.config.motion_dim).to(accelerator.device)
    gap_axis = None
    if args.gap_weight:
        gap_axis = lip_gap_axis(tokenizer, train.motion, args.gap_weight).to(accelerator.device)
    closure = None
    if args.closure_weight:
        closure = (tuple(t.to(accelerator.device) for t in lip_gap(tokenizer, train.motion)), args.closure_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = cosine_schedule(optimizer, args.lr_warmup_steps, args.max_train_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_component_hooks(accelerator, "temporal_refiner", TemporalRefiner)
    step = resume(accelerator, args)
    train.rng = np.random.default_rng(args.seed + step)
    log = MetricsLog(accelerator, args.output_dir, "train_refiner")

    model.train()
    while step < args.max_train_steps:
        context, coarse, audio, target, closure_targets = (
            t.to(accelerator.device) for t in train.batch(args.train_batch_size, unroll=args.unroll_slices))
        with accelerator.accumulate(model):
            loss = unrolled_loss(model, context, coarse, audio, target, weights, gap_axis, closure, closure_targets,
                                 args.closure_gate_weight, args.speech_closure_weight)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            step += 1
            if step % 50 == 0:
                log.log(step, loss=loss.item(), lr=scheduler.get_last_lr()[0])
            if step % args.validation_steps == 0 or step == args.max_train_steps:
                log.log(step, **evaluate(accelerator.unwrap_model(model), validation, args.unroll_slices))
                model.train()
            if step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, step)

    if accelerator.is_main_process:
        if args.generator:
            gain = expression_gain(accelerator.unwrap_model(model), tokenizer, validation_data, generated["validation"])
            accelerator.unwrap_model(model).register_to_config(expression_gain=gain)
            log.log(step, expression_gain=gain)
        accelerator.unwrap_model(model).eval().save_pretrained(os.path.join(args.output_dir, "temporal_refiner"))
        accelerator.print(f"saved {args.output_dir}/temporal_refiner")
    accelerator.end_training()


@torch.no_grad()
def evaluate(model: TemporalRefiner, slices: Slices, unroll: int = 1, batches: int = 8) -> dict[str, float]:
    """Refiner on vs off (coarse tokens only): error against the real motion, in normalised units."""
    model.eval()
    on, off = [], []
    for _ in range(batches):
        context, coarse, audio, target, _ = slices.batch(128, context_noise=0.0, unroll=unroll)
        on.append(F.mse_loss(model.unroll(context, coarse, audio), target).item())
        off.append(F.mse_loss(coarse, target).item())
    return {"val_mse_refined": float(np.mean(on)), "val_mse_coarse": float(np.mean(off))}


@torch.no_grad()
def expression_gain(model: TemporalRefiner, tokenizer: MotionTokenizer, data: dict, generated: list[torch.Tensor],
                    limits: tuple[float, float] = (1.0, 1.5)) -> float:
    """How much larger the real expression movements are than the refined generated ones, within `limits`.

    Movement is each utterance's expression offsets about their own mean (a steady smile or a closed mouth is
    not movement), pooled: sqrt(sum of squares, real / refined). The limits keep a badly trained refiner from
    being blown up: the gain only undoes shrinkage, it never shrinks.
    """
    model.eval()
    real, refined = 0.0, 0.0
    for motion, audio, coarse in zip(data["motion"], data["audio_features"], generated, strict=True):
        out = tokenizer.denormalize(refine_causally(model, tokenizer, coarse, torch.from_numpy(audio).float()))
        n = min(len(out), len(motion))
        real += _movement(torch.from_numpy(motion[:n, EXPRESSION]).float())
        refined += _movement(out[:n, EXPRESSION])
    return float(np.clip(np.sqrt(real / max(refined, 1e-12)), *limits))


def _movement(expression: torch.Tensor) -> float:
    return float(((expression - expression.mean(0)) ** 2).sum())


if __name__ == "__main__":
    main()
