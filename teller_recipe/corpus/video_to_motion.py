"""Real talking-head videos → the corpus's columns, so the same training code uses real data.

Every frame goes through MediaPipe's face landmarker; the motion encoder turns each frame's landmarks into a
motion latent relative to a reference frame (the "photo"), and those become the 69-d features. The identity
prior is the reference frame's, the mouth opening is `rig.mouth_opening` of the tracked landmarks, and
silence comes from the audio level (real videos have no phone timing: `phonemes` stays empty).

    python -m teller_recipe.corpus.video_to_motion clip1.mp4 clip2.mp4 --output data/videos
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import av
import numpy as np
from scipy.ndimage import gaussian_filter1d, median_filter

from teller_pipeline import rig
from teller_pipeline.audio import AudioError, load_audio
from teller_pipeline.motion import motion_to_features

from .motion_synth import FPS, SAMPLES_PER_FRAME

SILENCE_BELOW_PEAK_DB = 35.0  # a frame this far below the clip's loud frames counts as silent
SILENCE_FLOOR_DB = -55.0  # and anything below this level always does


def _default_tools(analyzer, motion_encoder):
    if analyzer is None:
        from teller_pipeline.face_analysis import FaceAnalyzer

        analyzer = FaceAnalyzer(max_faces=1)
    if motion_encoder is None:
        from teller_pipeline.face_analysis import find_face_landmarker_model, load_canonical_mesh
        from teller_pipeline.models.motion_encoder import MotionEncoder

        motion_encoder = MotionEncoder.from_canonical_mesh(load_canonical_mesh(find_face_landmarker_model()))
    return analyzer, motion_encoder


def track_faces(
    path: str | os.PathLike, analyzer
) -> tuple[list[float], list[np.ndarray | None], tuple[int, int]]:
    """Each frame's display time (s, its centre) and its largest face's 478 landmarks (None: no face)."""
    times, landmarks = [], []
    size = (0, 0)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or FPS)
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            size = (image.shape[1], image.shape[0])
            faces = analyzer.detect(image)
            start = float(frame.time) if frame.time is not None else len(times) / rate
            times.append(start + 0.5 / rate)
            landmarks.append(faces[0].points if faces else None)
    return times, landmarks, size


def silence_from_audio(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """Per 25 fps frame: True where the level is far below the clip's speech (smoothed over 5 frames)."""
    padded = np.pad(audio, (0, max(0, num_frames * SAMPLES_PER_FRAME - len(audio))))
    frames = padded[: num_frames * SAMPLES_PER_FRAME].reshape(num_frames, SAMPLES_PER_FRAME)
    level = 10 * np.log10((frames.astype(np.float64) ** 2).mean(1) + 1e-12)
    loud = np.percentile(level, 90) if num_frames else 0.0
    silent = (level < loud - SILENCE_BELOW_PEAK_DB) | (level < SILENCE_FLOOR_DB)
    return median_filter(silent.astype(np.uint8), size=5, mode="nearest").astype(bool)


def video_to_motion(
    path: str | os.PathLike,
    reference_frame: int = 0,
    analyzer=None,
    motion_encoder=None,
    smoothing_frames: float = 0.0,
    speaker: str | None = None,
    text: str = "",
    max_missing_fraction: float = 0.2,
) -> dict:
    """One video → a dict with the corpus's columns (see `corpus.features`).

    `reference_frame`: the frame used as the "photo" (the first frame with a face from there on).
    `smoothing_frames`: Gaussian σ (in 25 fps frames) against tracker jitter; 0 keeps the raw tracks.
    Frames without a face are interpolated from their neighbours.
    """
    analyzer, motion_encoder = _default_tools(analyzer, motion_encoder)
    times, landmarks, size = track_faces(path, analyzer)
    found = [k for k, points in enumerate(landmarks) if points is not None]
    if not found:
        raise ValueError(f"{path}: no face was found in any frame")
    missing = 1 - len(found) / len(landmarks)
    if missing > max_missing_fraction:
        raise ValueError(f"{path}: no face in {missing:.0%} of the frames")
    reference = next((k for k in found if k >= reference_frame), found[0])
    # Motion relative to the rest pose (the reference frame with its lips closed), as the pipeline generates it.
    source = motion_encoder.close_lips(motion_encoder.encode_source(landmarks[reference], size))
    latents = np.stack([motion_encoder.encode(source, landmarks[k]) for k in found])
    features = motion_to_features(latents).numpy().astype(np.float64)
    openings = np.array([rig.mouth_opening(landmarks[k]) for k in found])

    try:
        audio = load_audio(path)
    except AudioError:  # a silent video (no audio stream): keep the motion, with silent audio
        audio = np.zeros(0, np.float32)
    duration = len(audio) / 16000 if len(audio) else times[-1] + 0.5 / FPS
    num_frames = max(1, int(round(duration * FPS)))
    audio = np.pad(audio, (0, max(0, num_frames * SAMPLES_PER_FRAME - len(audio))))[
        : num_frames * SAMPLES_PER_FRAME
    ]
    # Resample the tracks to 25 fps frame centres (any source frame rate, faceless frames bridged).
    t_found = np.asarray(times)[found]
    t_out = (np.arange(num_frames) + 0.5) / FPS
    features = np.stack([np.interp(t_out, t_found, features[:, j]) for j in range(features.shape[1])], 1)
    openings = np.interp(t_out, t_found, openings)
    if smoothing_frames > 0:
        features = gaussian_filter1d(features, smoothing_frames, axis=0, mode="nearest")
        openings = gaussian_filter1d(openings, smoothing_frames, mode="nearest")
    name = speaker or Path(path).stem
    return {
        "id": Path(path).stem,
        "audio": audio.astype(np.float32),
        "motion": features.astype(np.float32),
        "identity_prior": motion_encoder.identity_prior(source),
        "mouth_opening": openings.astype(np.float32),
        "silence": silence_from_audio(audio, num_frames),
        "phonemes": {"start": [], "end": [], "phone": []},
        "text": text,
        "voice": f"video/{name}",
        "engine": "video",
        "augmentation": "none",
        "duration": num_frames / FPS,
        "synthesis": json.dumps(
            {
                "source": str(path),
                "reference_frame": reference,
                "video_frames": len(times),
                "frames_without_face": len(times) - len(found),
            }
        ),
    }


def videos_to_dataset(paths: list[str | os.PathLike], **kwargs):
    """Several videos → a `datasets.Dataset` with the corpus's schema (one analyzer for all)."""
    from datasets import Dataset

    from .corpus import features

    kwargs.setdefault("analyzer", _default_tools(None, None)[0])
    kwargs.setdefault("motion_encoder", _default_tools(kwargs["analyzer"], None)[1])
    schema = features()
    rows = [video_to_motion(p, **kwargs) for p in paths]
    return Dataset.from_dict({name: [row[name] for row in rows] for name in schema}, features=schema)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--output", required=True, help="folder for `Dataset.save_to_disk`")
    parser.add_argument("--reference-frame", type=int, default=0)
    parser.add_argument("--smoothing-frames", type=float, default=0.0)
    args = parser.parse_args(argv)
    dataset = videos_to_dataset(
        args.videos, reference_frame=args.reference_frame, smoothing_frames=args.smoothing_frames
    )
    dataset.save_to_disk(args.output)
    print(dataset)


if __name__ == "__main__":
    main()
