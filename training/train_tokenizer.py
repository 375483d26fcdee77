"""Train the motion tokenizer (residual VQ over 200 ms motion windows).

    accelerate launch --cpu --num_processes 1 training/train_tokenizer.py \
        --features data/features --output_dir runs/starter/tokenizer

Writes OUTPUT/motion_tokenizer (a `save_pretrained` folder) with the training motion's per-feature statistics.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from teller_pipeline.models.motion_tokenizer import MotionTokenizer
from teller_pipeline.motion import EXPRESSION, ROTATION, TRANSLATION
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

# Smallest standard deviation per feature group: keeps nearly-constant features from being blown up.
STD_FLOOR = {"expression": 0.02, "rotation": 0.002, "translation": 0.002}


def feature_statistics(motion: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    frames = np.concatenate(motion)
    mean, std = frames.mean(0), frames.std(0)
    for group, part in (("expression", EXPRESSION), ("rotation", ROTATION), ("translation", TRANSLATION)):
        std[part] = np.maximum(std[part], STD_FLOOR[group])
    return mean.astype(np.float32), std.astype(np.float32)


def windows(motion: list[np.ndarray]) -> torch.Tensor:
    """All slice-aligned 5-frame windows, (N, 5, 69)."""
    chunks = [m[: len(m) // FRAMES_PER_SLICE * FRAMES_PER_SLICE].reshape(-1, FRAMES_PER_SLICE, m.shape[-1])
              for m in motion]
    return torch.from_numpy(np.concatenate(chunks)).float()


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Frame error plus velocity error: slices must keep the motion's speed, not just its mean.
    return F.mse_loss(recon, target) + F.mse_loss(recon.diff(dim=1), target.diff(dim=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, default_steps=3000)
    args = parser.parse_args(argv)
    accelerator = make_accelerator(args)

    train = load_features(args.features, "train")
    validation = load_features(args.features, "validation")
    mean, std = feature_statistics(train["motion"])
    model = MotionTokenizer(**SIZES[args.size]["tokenizer"])
    model.feature_mean.copy_(torch.from_numpy(mean))
    model.feature_std.copy_(torch.from_numpy(std))
    train_windows = model.normalize(windows(train["motion"]))
    val_windows = model.normalize(windows(validation["motion"]))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = cosine_schedule(optimizer, args.lr_warmup_steps, args.max_train_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_component_hooks(accelerator, "motion_tokenizer", MotionTokenizer)
    step = resume(accelerator, args)
    log = MetricsLog(accelerator, args.output_dir, "train_tokenizer")
    generator = torch.Generator().manual_seed(args.seed + step)

    model.train()
    while step < args.max_train_steps:
        batch = train_windows[torch.randint(len(train_windows), (args.train_batch_size,), generator=generator)]
        with accelerator.accumulate(model):
            recon, _, commit = model(batch.to(accelerator.device))
            loss = reconstruction_loss(recon, batch.to(recon.device)) + commit
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            step += 1
            if step % 50 == 0:
                log.log(step, loss=loss.item(), commit=commit.item(), lr=scheduler.get_last_lr()[0])
            if step % args.validation_steps == 0 or step == args.max_train_steps:
                log.log(step, **evaluate(accelerator.unwrap_model(model), val_windows))
                model.train()
            if step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, step)

    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model).eval()
        final.save_pretrained(os.path.join(args.output_dir, "motion_tokenizer"))
        accelerator.print(f"saved {args.output_dir}/motion_tokenizer")
    accelerator.end_training()


@torch.no_grad()
def evaluate(model: MotionTokenizer, val_windows: torch.Tensor) -> dict[str, float]:
    """Reconstruction error on held-out voices, in the motion's own units (cm, degrees)."""
    model.eval()
    recon, codes, _ = model(val_windows)
    error = model.denormalize(recon) - model.denormalize(val_windows)
    return {
        "val_expression_rmse_cm": error[..., EXPRESSION].pow(2).mean().sqrt().item(),
        "val_rotation_rmse_deg": np.degrees(error[..., ROTATION].pow(2).mean().sqrt().item()),
        "val_codebook_usage": float(np.mean([len(torch.unique(codes[..., q])) for q in range(codes.shape[-1])])
                                    / model.config.codebook_size),
    }


if __name__ == "__main__":
    main()
