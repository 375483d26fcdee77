"""Speech with phone timing → a synthetic face: 25 fps motion features, identity prior, mouth opening.

Per utterance a face is drawn (shape + resting expression, as the photo would show it) along with a
speaking style (articulation strength, head-motion and brow liveliness, a smile kept while talking). The
mouth follows the phones with coarticulation (`visemes`), the head and brows follow prosody (`prosody`), and
the stored motion is what the face does relative to its own photo with the lips closed, as the runtime
decodes it. Frame k covers [k/25, (k+1)/25) of the audio and shows the face at the frame's centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from teller_pipeline import rig

from . import face_model, prosody, visemes
from .phonemes import SILENCE, Phone

FPS = 25
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
SILENCE_GUARD = 0.15  # s: a pause frame counts as silent this far from any speech sound
SETTLE = 0.35  # s: from the photo's expression into the talking face at the start


@dataclass
class SyntheticMotion:
    features: np.ndarray  # (T, 69) float32: motion relative to the photo (see teller_pipeline.motion)
    identity_prior: np.ndarray  # (21, 3) float32: the photo's keypoints minus the canonical mesh's
    mouth_opening: np.ndarray  # (T,) float32: the face's inner-lip gap / inter-ocular distance
    silence: np.ndarray  # (T,) bool: inside a pause, at least SILENCE_GUARD from speech
    info: dict  # the drawn face and style


def frame_times(num_frames: int) -> np.ndarray:
    return (np.arange(num_frames) + 0.5) / FPS


def silence_mask(phones: list[Phone], times: np.ndarray, guard: float = SILENCE_GUARD) -> np.ndarray:
    speech = [(p.start, p.end) for p in phones if p.phone != SILENCE]
    if not speech:
        return np.ones(len(times), bool)
    starts, ends = np.array(speech).T
    # Distance from each time to the nearest speech interval (0 inside one).
    distance = np.maximum(starts[None] - times[:, None], times[:, None] - ends[None]).clip(min=0).min(1)
    return distance >= guard


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def synthesize_motion(audio: np.ndarray, phones: list[Phone], rng: np.random.Generator) -> SyntheticMotion:
    """Motion for one utterance; `audio` is 16 kHz and a whole number of frames long."""
    num_frames = len(audio) // SAMPLES_PER_FRAME
    duration = num_frames / FPS
    level = prosody.energy_db(audio)
    stress = prosody.phone_stress(phones, level)

    # Who is speaking, and how.
    shape = face_model.sample_face_shape(rng)
    rest = face_model.sample_resting_face(rng)
    gain = rng.uniform(0.8, 1.2)
    head_style = float(np.clip(np.exp(rng.normal(0.0, 0.35)), 0.35, 2.0))
    brow_style = rng.uniform(0.4, 1.5)
    asymmetry = rng.normal(0.0, 0.06)
    talk_smile = rest.smile * rng.uniform(0.3, 0.9) + (rng.uniform(0.0, 0.25) if rng.random() < 0.2 else 0.0)

    tracks, times = visemes.articulation(phones, duration, stress, gain)
    rotation, translation, brow = prosody.head_and_brows(phones, stress, times, rng, head_style, brow_style)
    activity = prosody.speech_activity(phones, times)
    smile = np.clip(
        talk_smile
        + 0.04 * np.sin(2 * np.pi * times / rng.uniform(3, 7) + rng.uniform(0, 6))
        + 0.06 * activity * rng.uniform(-1, 1),
        0.0,
        1.0,
    )

    # The runtime decodes motion onto the photo's face with its lips closed (`MotionEncoder.close_lips`), so the
    # lips' motion is an offset from the resting face with closed lips: from the parted one, a speaker whose photo
    # shows parted lips would lose that gap from every opening (training/README.md, "Mouth size on held-out
    # voices"). Settle from that face (motion exactly zero at t = 0) into the talking face.
    closed_tracks = rest.tracks.copy()
    closed_tracks[[face_model.P["jaw"], face_model.P["upper"], face_model.P["lower"]]] = 0.0
    settle = _smoothstep(times / SETTLE)[:, None]
    tracks = closed_tracks[None] * (1 - settle) + tracks * settle
    smile = rest.smile * (1 - settle[:, 0]) + smile * settle[:, 0]
    brow = rest.brow + brow * settle[:, 0]
    expression = face_model.Expression(smile, brow, 0.3 * smile)
    state = face_model.face_state(tracks, expression, asymmetry)
    rest_state = rest.state(asymmetry)
    closed_rest_state = face_model.RestingFace(rest.kind, closed_tracks, rest.smile, rest.brow, rest.squint).state(
        asymmetry
    )

    # Sample the 100 Hz tracks at the frames' centres.
    t_frames = frame_times(num_frames)
    motion = state - closed_rest_state[None]
    flat = np.concatenate([motion.reshape(len(times), -1), rotation, translation], 1)
    features = np.stack([np.interp(t_frames, times, flat[:, j]) for j in range(flat.shape[1])], 1)
    identity_prior = shape + rest_state
    expression_frames = features[:, : rig.NUM_KEYPOINTS * 3].reshape(num_frames, rig.NUM_KEYPOINTS, 3)
    opening = face_model.mouth_opening((shape + closed_rest_state)[None] + expression_frames)
    info = {
        "resting_face": rest.kind,
        "resting_opening": round(float(face_model.mouth_opening(identity_prior[None])[0]), 4),
        "resting_smile": round(float(rest.smile), 3),
        "talking_smile": round(float(talk_smile), 3),
        "articulation_gain": round(float(gain), 3),
        "head_style": round(head_style, 3),
        "brow_style": round(float(brow_style), 3),
    }
    return SyntheticMotion(
        features.astype(np.float32),
        identity_prior.astype(np.float32),
        opening.astype(np.float32),
        silence_mask(phones, t_frames),
        info,
    )
