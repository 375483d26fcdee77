"""Pieces shared by the training scripts in `training/` (diffusers/examples style, with `accelerate`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def add_common_args(parser: argparse.ArgumentParser, default_steps: int) -> None:
    parser.add_argument("--features", required=True, help="folder written by training/precompute_features.py")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_train_steps", type=int, default=default_steps)
    parser.add_argument("--train_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder or "latest"')
    parser.add_argument("--validation_steps", type=int, default=250)
    parser.add_argument("--report_to", default="none", help='"tensorboard", "wandb", ... or "none"')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="base", help="model size preset (teller_recipe.conversion.build_checkpoint)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")


def make_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=f"{args.output_dir}/logs"),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    return accelerator


def register_component_hooks(accelerator, folder: str, cls) -> None:
    """`save_state` writes the model as a `save_pretrained` folder; `load_state` reads it back."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, folder))
                weights.pop()

    def load_hook(models, input_dir):
        for _ in range(len(models)):
            model = models.pop()
            loaded = cls.from_pretrained(os.path.join(input_dir, folder))
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if CHECKPOINT_PATTERN.match(p.name)]
    return max(folders, key=lambda p: int(p.name.split("-")[1]), default=None)


def resume(accelerator, args: argparse.Namespace) -> int:
    """Load the requested checkpoint; returns the global step to continue from (0 if none)."""
    if not args.resume_from_checkpoint:
        return 0
    path = (latest_checkpoint(args.output_dir) if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint))
    if path is None or not path.exists():
        accelerator.print(f"no checkpoint to resume from in {args.output_dir}; starting fresh")
        return 0
    accelerator.print(f"resuming from {path}")
    accelerator.load_state(str(path))
    return int(path.name.split("-")[1])


def save_checkpoint(accelerator, args: argparse.Namespace, step: int) -> None:
    """`accelerator.save_state` into checkpoint-STEP, keeping at most `checkpoints_total_limit` of them
    (accelerate's own `total_limit` does not rotate hand-named folders)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.checkpoints_total_limit:
        folders = sorted(
            (p for p in Path(args.output_dir).glob("checkpoint-*") if CHECKPOINT_PATTERN.match(p.name)),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for old in folders[: max(0, len(folders) - args.checkpoints_total_limit + 1)]:
            shutil.rmtree(old)
    accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{step}"))


def cosine_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MetricsLog:
    """Metrics as JSON lines in OUTPUT/metrics.jsonl (always), plus the accelerate trackers if any."""

    def __init__(self, accelerator, output_dir: str, name: str):
        self.accelerator = accelerator
        self.path = Path(output_dir) / "metrics.jsonl"
        self.start = time.time()
        if accelerator.is_main_process and accelerator.log_with:
            accelerator.init_trackers(name)

    def log(self, step: int, **metrics: float) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": step, "seconds": round(time.time() - self.start, 1), **{
            k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=step)
        self.accelerator.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in record.items()))


def load_features(path: str | Path, split: str) -> dict[str, list]:
    """A split of the precomputed training features as lists of numpy arrays (small enough for RAM)."""
    from datasets import load_from_disk

    data = load_from_disk(str(path))[split].with_format("numpy")
    columns = ["audio_features", "motion", "identity_prior", "silence", "mouth_opening", "voice"]
    out = {c: list(data[c]) for c in columns if c in data.column_names}
    out["audio_features"] = [np.asarray(a, np.float16) for a in out["audio_features"]]
    return out
