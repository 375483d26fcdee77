"""Precompute what the trainers read: each utterance's audio slices through the whisper encoder.

    python training/precompute_features.py --corpus data/corpus --checkpoint checkpoints/teller-base \
        --output data/features

Each slice's window is cut exactly as `TellerSession` cuts it while streaming (`slice_windows`,
`embed_slice_windows`: the same window length and lookahead, read from the checkpoint's generator config),
so the models train on the features they will see. Motion is padded to whole slices with its last frame.
Output: a `datasets.DatasetDict` (same splits) with columns audio_features (S, 10, 512) fp16,
motion (5·S, 69), identity_prior (21, 3), silence (5·S), mouth_opening (5·S), voice, engine.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from teller_pipeline.audio import SAMPLE_RATE
from teller_pipeline.models.audio_encoder import TellerAudioEncoder
from teller_pipeline.motion import MOTION_FEATURES
from teller_pipeline.streaming import FRAMES_PER_SLICE, embed_slice_windows, slice_windows


def pad_frames(values: np.ndarray, frames: int) -> np.ndarray:
    values = np.asarray(values)
    if len(values) >= frames:
        return values[:frames]
    fill = values[-1:] if len(values) else np.zeros((1, *values.shape[1:]), values.dtype)
    return np.concatenate([values, np.repeat(fill, frames - len(values), 0)])


_WORKER: dict = {}


def _init_worker(checkpoint: str, generator_config: str | None, corpus: str, split: str) -> None:
    # One torch thread per worker process: on a busy 2-core machine two single-threaded processes beat one
    # process whose two threads keep waiting for each other.
    torch.set_num_threads(1)
    from datasets import load_from_disk
    from transformers import WhisperFeatureExtractor

    from teller_pipeline.models.motion_generator import MotionGenerator

    # through the model's config: a key the file lacks takes the class's default, as when the pipeline loads it
    gen_config = MotionGenerator.from_config(
        MotionGenerator.load_config(generator_config or os.path.join(checkpoint, "motion_generator"))).config
    _WORKER.update(
        encoder=TellerAudioEncoder.from_pretrained(os.path.join(checkpoint, "audio_encoder")).eval(),
        feature_extractor=WhisperFeatureExtractor.from_pretrained(os.path.join(checkpoint, "feature_extractor")),
        window=int(round(gen_config["audio_window_seconds"] * SAMPLE_RATE)),
        lookahead=int(round(gen_config["audio_lookahead_seconds"] * SAMPLE_RATE)),
        heard=int(round(gen_config["audio_lookahead_heard_seconds"] * SAMPLE_RATE)),
        per_slice=gen_config["audio_frames_per_slice"],
        data=load_from_disk(corpus)[split].with_format("numpy"),
    )


def _embed(index: int, batch_size: int = 24) -> tuple[np.ndarray, float]:
    """Whisper features (S, 10, 512) fp16 of utterance `index` of the worker's split, and its length in s."""
    w = _WORKER
    audio = np.asarray(w["data"][index]["audio"], np.float32)
    windows = slice_windows(audio, w["window"], w["lookahead"], w["heard"])
    if not len(windows):
        return np.zeros((0, w["per_slice"], w["encoder"].config.d_model), np.float16), 0.0
    embeddings = torch.cat([
        embed_slice_windows(w["encoder"], w["feature_extractor"], windows[b : b + batch_size], w["lookahead"],
                            w["per_slice"])
        for b in range(0, len(windows), batch_size)
    ])
    return embeddings.half().numpy(), len(audio) / SAMPLE_RATE


def main(argv: list[str] | None = None) -> None:
    import multiprocessing

    from datasets import Array2D, Array3D, Dataset, DatasetDict, Features, Sequence, Value, load_from_disk

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--checkpoint", default="checkpoints/teller-base")
    parser.add_argument("--generator_config", default=None,
                        help="folder whose config.json sets the audio window (default: the checkpoint's generator)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    args = parser.parse_args(argv)

    corpus = load_from_disk(args.corpus)
    from teller_pipeline.models.motion_generator import MotionGenerator

    gen_dir = args.generator_config or os.path.join(args.checkpoint, "motion_generator")
    per_slice = MotionGenerator.load_config(gen_dir)["audio_frames_per_slice"]
    d_model = TellerAudioEncoder.config_class.from_pretrained(os.path.join(args.checkpoint, "audio_encoder")).d_model
    features = Features({
        "audio_features": Array3D(shape=(None, per_slice, d_model), dtype="float16"),
        "motion": Array2D(shape=(None, MOTION_FEATURES), dtype="float32"),
        "identity_prior": Array2D(shape=(21, 3), dtype="float32"),
        "silence": Sequence(Value("bool")),
        "mouth_opening": Sequence(Value("float32")),
        "voice": Value("string"),
        "engine": Value("string"),
    })

    def rows(split):
        data = corpus[split].with_format("numpy", columns=["motion", "identity_prior", "silence",
                                                           "mouth_opening", "voice", "engine"])
        context = multiprocessing.get_context("spawn")
        start, done_seconds = time.time(), 0.0
        with context.Pool(args.workers, initializer=_init_worker,
                          initargs=(args.checkpoint, args.generator_config, args.corpus, split)) as pool:
            for i, (embeddings, seconds) in enumerate(pool.imap(_embed, range(len(data)), chunksize=2)):
                assert embeddings.shape[1:] == (per_slice, d_model), embeddings.shape
                example = data[i]
                frames = len(embeddings) * FRAMES_PER_SLICE
                done_seconds += seconds
                if i % 100 == 0:
                    print(f"{split}: {i}/{len(data)} utterances, {done_seconds / 60:.1f} min of audio, "
                          f"{time.time() - start:.0f} s", flush=True)
                yield {
                    "audio_features": embeddings,
                    "motion": pad_frames(example["motion"], frames).astype(np.float32),
                    "identity_prior": np.asarray(example["identity_prior"], np.float32).reshape(21, 3),
                    "silence": pad_frames(np.asarray(example["silence"], bool), frames),
                    "mouth_opening": pad_frames(np.asarray(example["mouth_opening"], np.float32), frames),
                    "voice": str(example["voice"]),
                    "engine": str(example["engine"]),
                }

    out = DatasetDict({
        split: Dataset.from_generator(rows, gen_kwargs={"split": split}, features=features, keep_in_memory=True)
        for split in corpus
    })
    out.save_to_disk(args.output)
    print(f"saved {args.output}: " + ", ".join(f"{s} {len(d)}" for s, d in out.items()))


if __name__ == "__main__":
    main()
