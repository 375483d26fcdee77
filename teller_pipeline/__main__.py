"""Teller's command line: make a portrait photo speak.

    teller generate --image portrait.jpg --audio speech.wav --output talk.mp4 [--checkpoint FOLDER_OR_HUB_ID]

`python -m teller_pipeline` is the same command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .controls import GenerationControls
from .hub import HUB_MODEL_ID, CheckpointNotFoundError, checkpoint_folder

DEFAULTS = GenerationControls()


def _generate(args: argparse.Namespace) -> int:
    if Path(args.checkpoint).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs nothing from the network
    start = time.perf_counter()
    checkpoint = checkpoint_folder(args.checkpoint)  # before importing torch: a missing checkpoint fails at once
    from .pipeline_teller import TellerPipeline

    pipe = TellerPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=args.quiet)
    loaded = time.perf_counter()
    output = pipe(
        image=args.image,
        audio=args.audio,
        seed=args.seed,
        head_motion_scale=args.head_motion,
        expression_scale=args.expression,
        blinks_per_minute=args.blinks_per_minute,
        breathing=args.breathing,
        head_smoothing=args.head_smoothing,
        top_k=args.top_k,
        temperature=args.temperature,
        max_size=args.max_size,
        output_path=args.output,
        num_threads=args.num_threads,
    )
    done = time.perf_counter()
    seconds = len(output.audio) / output.sample_rate
    if not args.quiet:
        print(
            f"wrote {args.output}: {seconds:.2f} s of video at {output.fps} fps in {done - loaded:.1f} s "
            f"(model loading {loaded - start:.1f} s)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teller", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="animate a portrait with a speech file → MP4 (H.264 + AAC)")
    gen.add_argument("--image", required=True, help="portrait photo (jpg, png, webp, ...)")
    gen.add_argument("--audio", required=True, help="speech (wav, mp3, flac, ogg, webm, m4a, ...)")
    gen.add_argument("--output", required=True, help="MP4 to write")
    gen.add_argument("--checkpoint", default=HUB_MODEL_ID,
                     help=f"pipeline folder or Hub repo id (default: {HUB_MODEL_ID}, from the Hugging Face cache "
                     "or downloaded into it once)")
    gen.add_argument("--seed", type=int, default=DEFAULTS.seed)
    gen.add_argument("--head-motion", type=float, default=DEFAULTS.head_motion_scale,
                     help="head-motion scale (0 = still head)")
    gen.add_argument("--expression", type=float, default=DEFAULTS.expression_scale,
                     help="expression / lip amplitude scale")
    gen.add_argument("--blinks-per-minute", type=float, default=DEFAULTS.blinks_per_minute)
    gen.add_argument("--breathing", type=float, default=DEFAULTS.breathing, help="idle sway amplitude (0 = none)")
    gen.add_argument("--head-smoothing", type=float, default=DEFAULTS.head_smoothing,
                     help="time constant in seconds of the head motion's low-pass (0 = as generated)")
    gen.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
    gen.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    gen.add_argument("--max-size", type=int, default=None, help="longest side of the output (default 1024)")
    gen.add_argument("--num-threads", type=int, default=None,
                     help="torch threads for the model calls (default: the package's, 1 or $TELLER_TORCH_THREADS; "
                     "0 = torch's own default)")
    gen.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        return _generate(args)
    except CheckpointNotFoundError as error:
        print(f"error: {error} (--checkpoint <folder>)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:  # bad input: a clear message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
