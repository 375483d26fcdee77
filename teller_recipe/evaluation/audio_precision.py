"""What the audio encoder's int8 products change: `python -m teller_recipe.evaluation.audio_precision`.

    python -m teller_recipe.evaluation.audio_precision --corpus data/corpus-test [--portrait examples/grace_hopper.jpg]
        [--seeds 6]

`TellerPipeline` runs a third of the audio encoder's matrix products in int8 on a CPU (`TellerAudioEncoder.int8`);
the generator and refiner were trained on float32 features. This compares the two, on the same speech as
`teller_recipe.evaluation.portraits` (the ARCTIC clip with pauses, and held-out voices of the corpus' test split):

* **embeddings**: per slice (200 ms) the mean cosine similarity of the int8 embeddings to the float32 ones, and
  |difference| / |float32| per embedding;
* **motion**: the mouth the session makes from each, before rendering (`portraits.decoded_motion`: the landmarks
  handed to the renderer, so the renderer and the landmarker's own noise stay out), with several seeds: driven
  gap p90 and maximum, amplitude ratio, bilabial ratio and sync r, as mean ± standard deviation over the seeds. The
  generator samples, so a seed's own spread is the yardstick: a difference within it is none a viewer can see.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from teller_recipe import ROOT
from teller_recipe.evaluation.portraits import (
    HELD_OUT_UTTERANCES,
    Speech,
    driven_metrics,
    held_out_speech,
    real_speech,
)

# of `driven_metrics`' entries, those the speech encoder can move (closed in silence is the session's silence gate's)
MOTION_METRICS = ("gap_p90", "gap_max", "amplitude_ratio", "bilabial_ratio", "sync_r")


def embedding_agreement(pipe, speeches: list[Speech]) -> dict[str, float]:
    """int8 against float32 embeddings of every slice of `speeches`, as a session cuts them."""
    from teller_pipeline.audio import SAMPLE_RATE
    from teller_pipeline.streaming import AUDIO_BATCH_SLICES, embed_slice_windows, slice_windows, torch_threads

    config = pipe.motion_generator.config
    window = int(round(config.audio_window_seconds * SAMPLE_RATE))
    lookahead = int(round(config.audio_lookahead_seconds * SAMPLE_RATE))
    windows = np.concatenate([slice_windows(s.audio, window, lookahead) for s in speeches])
    encoder, embeddings = pipe.audio_encoder, {}
    with torch_threads():
        for int8 in (False, True):
            encoder.int8 = int8
            embeddings[int8] = torch.cat([
                embed_slice_windows(encoder, pipe.feature_extractor, windows[i : i + AUDIO_BATCH_SLICES], lookahead)
                for i in range(0, len(windows), AUDIO_BATCH_SLICES)])
    cosine = torch.nn.functional.cosine_similarity(embeddings[True], embeddings[False], dim=-1).mean(1).numpy()
    change = ((embeddings[True] - embeddings[False]).norm(dim=-1) / embeddings[False].norm(dim=-1)).numpy()
    return {"slices": len(windows), "cosine_mean": float(cosine.mean()), "cosine_p5": float(np.percentile(cosine, 5)),
            "cosine_min": float(cosine.min()), "change_mean": float(change.mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "teller-base"))
    parser.add_argument("--corpus", default=str(ROOT / "data" / "corpus-test"),
                        help="a corpus folder (build_corpus) for the held-out voices; 'none' for the real clip only")
    parser.add_argument("--portrait", default=str(ROOT / "examples" / "grace_hopper.jpg"))
    parser.add_argument("--held-out", type=int, default=HELD_OUT_UTTERANCES, help="held-out utterances")
    parser.add_argument("--seeds", type=int, default=6)
    args = parser.parse_args(argv)

    from teller_pipeline import TellerPipeline

    pipe = TellerPipeline.from_pretrained(args.checkpoint)
    groups = {"real": [real_speech()]}
    if args.corpus != "none":
        groups["held_out"] = held_out_speech(args.corpus, args.held_out)
    agreement = embedding_agreement(pipe, [s for speeches in groups.values() for s in speeches])
    print(f"embeddings, {agreement['slices']} slices: cosine mean {agreement['cosine_mean']:.4f}, 5th percentile "
          f"{agreement['cosine_p5']:.4f}, least {agreement['cosine_min']:.3f}; change {agreement['change_mean']:.3f}")
    # rendering is not measured here: a frame is the photo itself, which saves its time
    source = pipe.prepare_source(args.portrait, max_size=256)
    pipe.renderer.render = lambda state, landmarks: state.image
    print(f"driven mouth on {args.portrait}, mean ± standard deviation over seeds 0-{args.seeds - 1}:")
    for int8 in (False, True):
        pipe.audio_encoder.int8 = int8
        runs = [driven_metrics(pipe, source, groups, seed) for seed in range(args.seeds)]
        for group in groups:
            values = {m: np.array([run[group][m] for run in runs]) for m in MOTION_METRICS}
            print(f"  {'int8' if int8 else 'float32':<8} {group:<9}"
                  + " ".join(f"{m} {v.mean():.4f}±{v.std():.4f}" for m, v in values.items()), flush=True)


if __name__ == "__main__":
    main()
