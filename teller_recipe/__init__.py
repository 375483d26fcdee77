"""The recipe: everything that makes or measures a Teller checkpoint, one subpackage per job.

    corpus/       synthetic speech with known phone timing → face motion (and real videos → the same columns)
    training/     helpers shared by the `accelerate` scripts in the checkout's `training/` folder
    evaluation/   lip sync, mouth size, silence, head motion and blinks measured on rendered video
    benchmark/    per-stage speed, RTF, latency and memory of streaming and offline generation
    conversion/   whisper-base (CTranslate2) → the audio encoder; trained parts → the Hub-layout checkpoint
    model_card/   the checkpoint's README from the recipe's own outputs

The runtime package `teller_pipeline` never imports this one. The recipe runs from a checkout (it reads the
example media and writes into `checkpoints/`), with the `train` and `data` extras installed.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout the recipe runs in
