"""Look at an utterance: waveform with phones, mouth opening, jaw, lip shape, head and brows over time.

python -m teller_recipe.corpus.plot --voice piper/joe --text "Glue the sheet to the dark blue background."
python -m teller_recipe.corpus.plot --corpus data/corpus --split test --index 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from teller_pipeline import rig

from .phonemes import SILENCE, from_columns

_KP = {name: k for k, name in enumerate(rig.KEYPOINT_NAMES)}


def plot_example(example: dict, path: str | Path, title: str | None = None) -> Path:
    """Draw one corpus row (the dataset's columns) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    audio = np.asarray(example["audio"], np.float32)
    motion = np.asarray(example["motion"], np.float32)
    phones = from_columns(example["phonemes"])
    t_audio = np.arange(len(audio)) / 16000
    t = (np.arange(len(motion)) + 0.5) / 25
    exp = motion[:, :63].reshape(len(motion), 21, 3)
    fig, axes = plt.subplots(5, 1, figsize=(14, 11), sharex=True)
    ax = axes[0]
    ax.plot(t_audio, audio, lw=0.4, color="0.3")
    for p in phones:
        if p.phone != SILENCE:
            ax.axvline(p.start, color="tab:blue", lw=0.3, alpha=0.5)
            ax.text(0.5 * (p.start + p.end), 0.95 * np.abs(audio).max(), p.phone, ha="center", fontsize=6)
        else:
            ax.axvspan(p.start, p.end, color="0.9")
    ax.set_ylabel("waveform")
    ax.set_title(title or f"{example.get('voice', '')}: {example.get('text', '')}", fontsize=9)
    ax = axes[1]
    ax.plot(t, example["mouth_opening"], label="mouth opening (inner-lip gap / IOD)")
    silence = np.asarray(example["silence"], bool)
    ax.fill_between(
        t, 0, np.max(example["mouth_opening"]) + 0.01, where=silence, color="0.85", label="silence"
    )
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[2]
    ax.plot(t, exp[:, _KP["chin"], 1], label="chin dy (jaw)")
    ax.plot(t, exp[:, _KP["lower_lip_inner"], 1], label="lower inner lip dy")
    ax.plot(t, exp[:, _KP["upper_lip_inner"], 1], label="upper inner lip dy")
    ax.set_ylabel("cm")
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[3]
    width = exp[:, _KP["mouth_corner_left"], 0] - exp[:, _KP["mouth_corner_right"], 0]
    ax.plot(t, width, label="mouth width change (spread +, round −)")
    ax.plot(t, exp[:, _KP["upper_lip_outer"], 2], label="upper lip dz (protrusion −)")
    ax.plot(t, -exp[:, _KP["brow_left"], 1], label="brow raise")
    ax.set_ylabel("cm")
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[4]
    rotation = np.degrees(motion[:, 63:66])
    for j, name in enumerate(("pitch (chin down +)", "yaw", "roll")):
        ax.plot(t, rotation[:, j], label=name)
    ax.plot(t, motion[:, 67] * 10, label="dy ×10 (cm)", lw=0.7, ls="--")
    ax.set_ylabel("degrees")
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", help="a corpus folder written by build_corpus")
    parser.add_argument("--split", default="train")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--voice", default="piper/joe")
    parser.add_argument(
        "--text",
        default="The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="data/cache")
    parser.add_argument("--output", default="data/plots/utterance.png")
    args = parser.parse_args(argv)
    if args.corpus:
        from datasets import load_from_disk

        example = load_from_disk(args.corpus)[args.split][args.index]
    else:
        from .corpus import UtteranceSpec, make_example

        spec = UtteranceSpec(split="train", voice=args.voice, sentences=[args.text], seed=args.seed)
        example = make_example(spec, cache_dir=args.cache_dir, augment_audio=False)
    print(plot_example(example, args.output))


if __name__ == "__main__":
    main()
