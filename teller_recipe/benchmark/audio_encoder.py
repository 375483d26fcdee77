"""The audio-encoder stage alone, before and after its written-out forward:
`python -m teller_recipe.benchmark.audio_encoder [--repeats 30]`.

Times `embed_slice_windows` (log-mel and whisper's encoder for a batch of slice windows, as `TellerSession` runs
it) on windows of the example recording, at the package's torch thread count, live (one window) and as a file goes
(`AUDIO_BATCH_SLICES` windows), for three forwards:

* `transformers layers`: `WhisperEncoderLayer.forward` per layer, all positions, as `encode_window` ran before;
* `written out, MKL`: `whisper_inference.encode_layers` with `F.linear` (MKL's sgemm) for the products;
* `written out, oneDNN`: the same with oneDNN's kernel, float32 throughout (`TellerAudioEncoder.int8` off);
* `written out, int8`: the same with the query, key and first MLP products in int8 (opt-in:
  `TellerPipeline.from_pretrained(..., audio_encoder_int8=True)`).

The forwards take turns, repeat after repeat, and each prints its fastest and median time per window: the machine is
shared, so single timings are noisy and the minimum is what the stage costs when nothing else runs. The 1-minute
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from teller_recipe import ROOT


def encode_window_with_transformers_layers(encoder, input_features: torch.Tensor,
                                           keep: slice = slice(None)) -> torch.Tensor:
    """`TellerAudioEncoder.encode_window` as it ran before `whisper_inference`: the transformers layers on every
    position, then the kept ones (tests/test_whisper_inference.py compares the two)."""
    x = torch.cat([encoder._convolve(window[None]) for window in input_features])
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    for layer in encoder.layers:
        x = layer(x, None)
    return encoder.layer_norm(x)[:, keep]


FORWARDS = ("transformers layers", "written out, MKL", "written out, oneDNN", "written out, int8")


@contextlib.contextmanager
def forward_named(encoder, name: str) -> Iterator[None]:
    """Run the block with `encoder.encode_window` as the forward `name` (one of `FORWARDS`)."""
    from teller_pipeline.models import whisper_inference

    if name not in FORWARDS:
        raise ValueError(f"no forward named {name!r}; there are {FORWARDS}")
    onednn, int8 = whisper_inference.ONEDNN_LINEAR, encoder.int8
    if name == "transformers layers":
        encoder.encode_window = lambda features, keep=slice(None): encode_window_with_transformers_layers(
            encoder, features, keep)
    whisper_inference.ONEDNN_LINEAR = onednn and name != "written out, MKL"
    encoder.int8 = name == "written out, int8"
    try:
        yield
    finally:
        whisper_inference.ONEDNN_LINEAR, encoder.int8 = onednn, int8
        encoder.__dict__.pop("encode_window", None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "teller-base"))
    parser.add_argument("--audio", default=str(ROOT / "examples" / "arctic_a0009.wav"))
    parser.add_argument("--repeats", type=int, default=30, help="turns of each forward per batch size")
    args = parser.parse_args(argv)

    from teller_pipeline.audio import SAMPLE_RATE, load_audio
    from teller_pipeline.streaming import AUDIO_BATCH_SLICES, embed_slice_windows, slice_windows, torch_threads

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import WhisperFeatureExtractor

        from teller_pipeline import MotionGenerator
        from teller_pipeline.models.audio_encoder import TellerAudioEncoder

        encoder = TellerAudioEncoder.from_pretrained(f"{args.checkpoint}/audio_encoder").eval()
        feature_extractor = WhisperFeatureExtractor.from_pretrained(f"{args.checkpoint}/feature_extractor")
        config = MotionGenerator.load_config(f"{args.checkpoint}/motion_generator")
    window = int(round(config["audio_window_seconds"] * SAMPLE_RATE))
    lookahead = int(round(config["audio_lookahead_seconds"] * SAMPLE_RATE))
    windows = slice_windows(load_audio(args.audio), window, lookahead)[:AUDIO_BATCH_SLICES]

    def stage(batch: np.ndarray) -> Callable[[], torch.Tensor]:
        return lambda: embed_slice_windows(encoder, feature_extractor, batch, lookahead)

    with torch_threads():
        print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads: {torch.get_num_threads()} (the package's "
              f"count); window {window / SAMPLE_RATE:g} s + lookahead {lookahead / SAMPLE_RATE:g} s")
        for batch in (windows[len(windows) // 2 :][:1], windows):
            seconds: dict[str, list[float]] = {name: [] for name in FORWARDS}
            for _ in range(args.repeats):
                for name in FORWARDS:
                    with forward_named(encoder, name):
                        run = stage(batch)
                        start = time.perf_counter()
                        run()
                        seconds[name].append((time.perf_counter() - start) / len(batch))
            print(f"\nbatch of {len(batch)} window(s): ms per window, fastest / median of {args.repeats}")
            for name, times in seconds.items():
                print(f"  {name:<22} {1000 * min(times):6.1f} / {1000 * float(np.median(times)):6.1f}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
