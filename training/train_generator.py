"""Train the motion generator: audio slices + identity prior → motion tokens (teacher forcing).

    accelerate launch --cpu --num_processes 1 training/train_generator.py \
        --features data/features --tokenizer runs/starter/tokenizer/motion_tokenizer \
        --output_dir runs/starter/generator

Each example is a random crop of up to `max_context_slices` consecutive slices, starting at the identity
prefix: exactly the contexts the streaming generator sees (it re-encodes its most recent slices when its
context fills up). Writes OUTPUT/motion_generator.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from teller_pipeline.models.motion_generator import MotionGenerator
from teller_pipeline.models.motion_tokenizer import MotionTokenizer
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


@torch.no_grad()
def encode_codes(tokenizer: MotionTokenizer, motion: list[np.ndarray]) -> list[torch.Tensor]:
    """Token ids (S, Q) of each utterance."""
    tokenizer.eval()
    return [tokenizer.encode(tokenizer.normalize(torch.from_numpy(m).float())[None])[0] for m in motion]


class Crops:
    """Random crops of L consecutive slices; L varies per batch, like the streaming context does."""

    def __init__(self, data: dict, codes: list[torch.Tensor], max_slices: int, seed: int):
        self.audio = [torch.from_numpy(a) for a in data["audio_features"]]
        self.prior = [torch.from_numpy(p) for p in data["identity_prior"]]
        self.codes = codes
        self.lengths = np.array([len(c) for c in codes])
        self.max_slices = max_slices
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int):
        length = int(self.rng.integers(2, self.max_slices + 1)) if self.rng.random() < 0.5 else self.max_slices
        length = min(length, int(self.lengths.max()))
        candidates = np.flatnonzero(self.lengths >= length)
        picks = self.rng.choice(candidates, size)
        audio, prior, codes = [], [], []
        for i in picks:
            start = int(self.rng.integers(0, self.lengths[i] - length + 1))
            audio.append(self.audio[i][start : start + length].float())
            codes.append(self.codes[i][start : start + length])
            prior.append(self.prior[i])
        return torch.stack(prior), torch.stack(audio), torch.stack(codes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, default_steps=6000)
    parser.add_argument("--tokenizer", required=True, help="a motion_tokenizer folder")
    parser.add_argument("--input_token_noise", type=float, default=0.1,
                        help="share of input motion tokens replaced by random ones (targets stay clean)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout on the input embeddings and attention weights (training only)")
    args = parser.parse_args(argv)
    accelerator = make_accelerator(args)

    tokenizer = MotionTokenizer.from_pretrained(args.tokenizer)
    train = load_features(args.features, "train")
    validation = load_features(args.features, "validation")
    config = dict(SIZES[args.size]["generator"])
    config.update(num_quantizers=tokenizer.config.num_quantizers, codebook_size=tokenizer.config.codebook_size,
                  dropout=args.dropout)
    model = MotionGenerator(**config)
    model.fit_identity_range(torch.from_numpy(np.stack(train["identity_prior"])))
    train_crops = Crops(train, encode_codes(tokenizer, train["motion"]), model.config.max_context_slices, args.seed)
    val_crops = Crops(validation, encode_codes(tokenizer, validation["motion"]),
                      model.config.max_context_slices, args.seed + 1)
    accelerator.print(f"generator: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  betas=(0.9, 0.98))
    scheduler = cosine_schedule(optimizer, args.lr_warmup_steps, args.max_train_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_component_hooks(accelerator, "motion_generator", MotionGenerator)
    step = resume(accelerator, args)
    train_crops.rng = np.random.default_rng(args.seed + step)
    log = MetricsLog(accelerator, args.output_dir, "train_generator")

    model.train()
    while step < args.max_train_steps:
        prior, audio, codes = (t.to(accelerator.device) for t in train_crops.batch(args.train_batch_size))
        with accelerator.accumulate(model):
            loss = _loss(model, prior, audio, codes, args.input_token_noise, tokenizer.config.codebook_size)
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
                log.log(step, **evaluate(accelerator.unwrap_model(model), val_crops))
                model.train()
            if step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, step)

    if accelerator.is_main_process:
        accelerator.unwrap_model(model).eval().save_pretrained(os.path.join(args.output_dir, "motion_generator"))
        accelerator.print(f"saved {args.output_dir}/motion_generator")
    accelerator.end_training()


def _loss(model, prior, audio, codes, input_token_noise: float = 0.0, codebook_size: int = 0) -> torch.Tensor:
    inputs = codes
    if input_token_noise > 0:
        # Exposure bias: while streaming, the model reads its own sampled tokens, not the data's. Corrupting a
        # share of the input tokens (the targets stay clean) keeps it listening to the audio instead of copying.
        noisy = torch.rand(codes.shape, device=codes.device) < input_token_noise
        inputs = torch.where(noisy, torch.randint_like(codes, codebook_size), codes)
    logits = model(prior, audio, inputs)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 2), codes.flatten())


@torch.no_grad()
def evaluate(model: MotionGenerator, crops: Crops, batches: int = 8) -> dict[str, float]:
    model.eval()
    losses, correct, first = [], [], []
    for _ in range(batches):
        prior, audio, codes = crops.batch(32)
        logits = model(prior, audio, codes)
        losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 2), codes.flatten()).item())
        hits = logits.argmax(-1) == codes
        correct.append(hits.float().mean().item())
        first.append(hits[..., 0].float().mean().item())  # the coarsest level carries most of the motion
    return {"val_loss": float(np.mean(losses)), "val_token_accuracy": float(np.mean(correct)),
            "val_level0_accuracy": float(np.mean(first))}


if __name__ == "__main__":
    main()
