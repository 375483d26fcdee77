"""A parametric face for synthetic motion: articulatory parameters → the 21 keypoints (canonical cm).

Everything is an offset from MediaPipe's canonical mesh keypoints, in its frame (x right, y down, z away from
the camera; "right"/"left" are the subject's sides, so the subject's right has negative x):

    absolute face(t) = canonical mesh + face shape + mouth/brow/eye state(t)

The canonical mesh's inner lips are ~0.55 cm apart; `CLOSED_MOUTH` brings the lips together, so that all
articulatory parameters at zero is a relaxed closed mouth. A synthetic "photo" is the face at its resting
state; its identity prior (what `MotionEncoder.identity_prior` would return) is face shape + resting state,
and the motion the corpus stores is state(t) − resting state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from teller_pipeline import rig

from .visemes import P

K = {name: k for k, name in enumerate(rig.KEYPOINT_NAMES)}
SIDES = ("right", "left")
SIGN = {"right": -1.0, "left": 1.0}  # x direction of "outward" for each side


def _closed_mouth() -> np.ndarray:
    """Offsets that close the canonical mesh's parted lips (calibrated on a closed-mouth photo)."""
    closed = np.zeros((rig.NUM_KEYPOINTS, 3))
    closed[K["upper_lip_inner"], 1] = 0.275
    closed[K["lower_lip_inner"], 1] = -0.275
    closed[K["upper_lip_outer"], 1] = 0.22
    closed[K["lower_lip_outer"], 1] = -0.2
    for side in SIDES:
        closed[K[f"upper_lip_{side}"], 1] = 0.26
        closed[K[f"lower_lip_{side}"], 1] = -0.22
    closed[K["chin"], 1] = -0.15
    return closed


CLOSED_MOUTH = _closed_mouth()


@dataclass
class Expression:
    """Per-frame controls (arrays of length N) besides the articulatory tracks."""

    smile: np.ndarray  # 0 neutral … 1 broad smile
    brow: np.ndarray  # brow raise, cm (negative: lowered)
    squint: np.ndarray  # 0 … 1, lower lids up


def face_state(tracks: np.ndarray, expression: Expression, asymmetry: float = 0.0) -> np.ndarray:
    """(N, len(PARAMS)) articulatory tracks + expression → (N, 21, 3) keypoint offsets from the mesh."""
    n = len(tracks)
    jaw, up, low = tracks[:, P["jaw"]], tracks[:, P["upper"]], tracks[:, P["lower"]]
    rnd, spr = tracks[:, P["round"]], tracks[:, P["spread"]]
    tuck, clo, prs = tracks[:, P["tuck"]], np.clip(tracks[:, P["closure"]], 0, 1), tracks[:, P["press"]]
    sm, brow, sq = expression.smile, expression.brow, expression.squint

    # Inner-lip positions: the upper lip rises by `upper`, the lower lip follows the jaw plus its own drop;
    # a bilabial closure brings them together (the lower lip travels most of the way).
    y_up, y_lo = -up, jaw + low
    raw = y_lo - y_up
    gap, mid = np.maximum(raw, 0.0), 0.5 * (y_lo + y_up)
    y_up, y_lo = (
        np.where(raw < 0, mid, y_up + clo * 0.35 * gap),
        np.where(raw < 0, mid, y_lo - clo * 0.65 * gap),
    )

    s = np.zeros((n, rig.NUM_KEYPOINTS, 3))
    s[:] = CLOSED_MOUTH
    s[:, K["upper_lip_inner"]] += np.stack(
        [0 * jaw, y_up - 0.05 * sm, -0.45 * rnd + 0.1 * spr - 0.05 * tuck + 0.12 * prs], -1
    )
    s[:, K["upper_lip_outer"]] += np.stack(
        [0 * jaw, 0.8 * y_up - 0.08 * rnd + 0.05 * prs - 0.05 * sm, -0.5 * rnd + 0.1 * spr + 0.03 * prs], -1
    )
    s[:, K["lower_lip_inner"]] += np.stack(
        [0 * jaw, y_lo - 0.03 * sm, 0.2 * jaw - 0.45 * rnd + 0.1 * spr + 0.35 * tuck + 0.12 * prs], -1
    )
    s[:, K["lower_lip_outer"]] += np.stack(
        [
            0 * jaw,
            0.95 * y_lo + 0.08 * rnd - 0.1 * tuck - 0.05 * prs,
            0.25 * jaw - 0.5 * rnd + 0.1 * spr + 0.2 * tuck,
        ],
        -1,
    )
    s[:, K["chin"]] += np.stack([0 * jaw, jaw, 0.3 * jaw], -1)
    for side in SIDES:
        out = SIGN[side]
        gain = 1.0 + (asymmetry if side == "right" else -asymmetry)
        s[:, K[f"upper_lip_{side}"]] += np.stack(
            [
                out * (-0.22 * rnd + 0.12 * spr + 0.1 * sm * gain),
                0.85 * y_up - 0.03 * spr - 0.2 * sm * gain,
                -0.4 * rnd + 0.05 * spr + 0.1 * sm,
            ],
            -1,
        )
        s[:, K[f"lower_lip_{side}"]] += np.stack(
            [
                out * (-0.22 * rnd + 0.12 * spr - 0.03 * jaw + 0.1 * sm * gain),
                0.85 * y_lo + 0.05 * rnd - 0.12 * sm * gain,
                0.2 * jaw - 0.4 * rnd + 0.05 * spr + 0.1 * tuck + 0.1 * sm,
            ],
            -1,
        )
        s[:, K[f"mouth_corner_{side}"]] += np.stack(
            [
                out * (-0.12 * jaw - 0.55 * rnd + 0.35 * spr - 0.03 * prs + 0.45 * sm) * gain,
                0.3 * y_lo + 0.1 * y_up + 0.05 * rnd - 0.05 * spr - 0.85 * sm * gain,
                0.1 * jaw - 0.25 * rnd + 0.25 * spr + 0.65 * sm,
            ],
            -1,
        )
        s[:, K[f"jaw_{side}"]] += np.stack([0 * jaw, 0.3 * jaw, 0.05 * jaw], -1)
        s[:, K[f"cheek_{side}"]] += np.stack(
            [
                out * (-0.08 * rnd + 0.05 * spr + 0.15 * sm) * gain,
                0.15 * jaw - 0.08 * spr - 0.3 * sm * gain,
                -0.2 * sm,
            ],
            -1,
        )
        s[:, K[f"brow_{side}"]] += np.stack([0 * jaw, -brow, -0.1 * brow], -1)
        s[:, K[f"upper_eyelid_{side}"], 1] += -0.2 * brow + 0.02 * sm + 0.04 * sq
        s[:, K[f"lower_eyelid_{side}"], 1] += -0.06 * sm - 0.1 * sq
    return s


# --- identity: face shape and resting expression ---------------------------------------------------------
# Mean offsets of real photos' keypoints from the canonical mesh (measured on the two example portraits,
# expression removed): eyes, brows and mouth corners sit wider, the jaw line higher, the lips forward.
def _mean_shape() -> np.ndarray:
    mean = np.zeros((rig.NUM_KEYPOINTS, 3))
    for side in SIDES:
        out = SIGN[side]
        mean[K[f"jaw_{side}"]] = (0.0, -0.6, -0.2)
        mean[K[f"upper_eyelid_{side}"]] = (0.45 * out, -0.3, 0.16)
        mean[K[f"lower_eyelid_{side}"]] = (0.15 * out, -0.05, 0.1)
        mean[K[f"brow_{side}"]] = (0.62 * out, 0.0, 0.22)
        mean[K[f"cheek_{side}"]] = (0.5 * out, 0.0, -0.3)
        mean[K[f"mouth_corner_{side}"]] = (0.3 * out, -0.05, 0.1)
        for lip in ("upper_lip", "lower_lip"):
            mean[K[f"{lip}_{side}"], 2] = -0.25
    for lip in ("upper_lip_inner", "upper_lip_outer", "lower_lip_inner", "lower_lip_outer"):
        mean[K[lip], 2] = -0.25
    mean[K["chin"]] = (0.0, -0.2, 0.0)
    return mean


MEAN_SHAPE = _mean_shape()
RESTING_KINDS = ("closed", "slight_smile", "parted", "open_smile")
RESTING_PROBABILITIES = (0.55, 0.2, 0.12, 0.13)


def sample_face_shape(rng: np.random.Generator) -> np.ndarray:
    """A random face shape (21, 3): the mean photo offsets plus a few anatomical modes and a little noise."""
    shape = MEAN_SHAPE.copy()
    width, length, eye_size, eye_gap = rng.normal(0, [0.3, 0.3, 0.08, 0.15])
    brow_height, brow_gap, mouth_width = rng.normal(0, [0.2, 0.2, 0.2])
    upper_lip, lower_lip, mouth_height, lip_depth, jaw_depth = rng.normal(0, [0.1, 0.12, 0.15, 0.15, 0.2])
    for side in SIDES:
        out = SIGN[side]
        shape[K[f"jaw_{side}"]] += (out * width, 0.5 * length, jaw_depth)
        shape[K[f"cheek_{side}"], 0] += out * 0.5 * width
        shape[K[f"upper_eyelid_{side}"]] += (out * eye_gap, -eye_size, 0)
        shape[K[f"lower_eyelid_{side}"]] += (out * eye_gap, 0.5 * eye_size, 0)
        shape[K[f"brow_{side}"]] += (out * (0.8 * eye_gap + brow_gap), -brow_height, 0)
        shape[K[f"mouth_corner_{side}"]] += (out * mouth_width, mouth_height, 0)
        shape[K[f"upper_lip_{side}"]] += (out * 0.4 * mouth_width, mouth_height - 0.8 * upper_lip, lip_depth)
        shape[K[f"lower_lip_{side}"]] += (out * 0.4 * mouth_width, mouth_height + 0.8 * lower_lip, lip_depth)
    shape[K["chin"], 1] += length
    for lip, thickness in (("upper_lip_outer", -upper_lip), ("lower_lip_outer", lower_lip)):
        shape[K[lip]] += (0, mouth_height + thickness, lip_depth)
    for lip in ("upper_lip_inner", "lower_lip_inner"):
        shape[K[lip]] += (0, mouth_height, lip_depth)
    noise = rng.normal(0, 0.04, shape.shape)
    noise[K["lower_lip_inner"], 1] = noise[K["upper_lip_inner"], 1]  # a closed mouth stays closed
    return shape + noise


@dataclass
class RestingFace:
    kind: str
    tracks: np.ndarray  # (len(PARAMS),) articulatory parameters of the photo
    smile: float
    brow: float
    squint: float

    def state(self, asymmetry: float = 0.0) -> np.ndarray:
        expression = Expression(np.array([self.smile]), np.array([self.brow]), np.array([self.squint]))
        return face_state(self.tracks[None], expression, asymmetry)[0]


def sample_resting_face(rng: np.random.Generator) -> RestingFace:
    """Mostly closed relaxed mouths, some slight smiles, some parted lips, some open smiles with teeth."""
    kind = RESTING_KINDS[rng.choice(len(RESTING_KINDS), p=RESTING_PROBABILITIES)]
    tracks = np.zeros(len(P))
    smile = rng.uniform(0.0, 0.15)
    if kind == "slight_smile":
        smile = rng.uniform(0.25, 0.6)
    elif kind == "parted":
        tracks[[P["jaw"], P["upper"], P["lower"]]] = rng.uniform([0.05, 0.05, 0.05], [0.3, 0.2, 0.25])
        smile = rng.uniform(0.0, 0.3)
    elif kind == "open_smile":
        tracks[[P["jaw"], P["upper"], P["lower"], P["spread"]]] = rng.uniform(
            [0.15, 0.3, 0.0, 0.2], [0.4, 0.6, 0.2, 0.5]
        )
        smile = rng.uniform(0.6, 1.0)
    return RestingFace(kind, tracks, smile, float(rng.normal(0, 0.05)), 0.3 * smile)


# --- measurements in the units of `rig.mouth_opening` ------------------------------------------------------
# From MediaPipe's canonical mesh (checked against it in tests): the gap between the inner-lip keypoints
# 13 and 14, and the distance between the outer eye corners, in cm.
CANONICAL_INNER_LIP_GAP = 0.54796
CANONICAL_INTER_OCULAR = 8.89172
SIDE_GAP_RATIO = (
    0.85  # a real mouth's inner-lip gap a third of the way to the corners, relative to the centre
)


def mouth_opening(face: np.ndarray) -> np.ndarray:
    """The mouth opening `rig.mouth_opening` measures on a real face whose keypoints sit at mesh + `face`
    (..., 21, 3) → (...): the mean of the inner-lip gap at the centre and at both sides (taken as
    `SIDE_GAP_RATIO` × the centre's) over the inter-ocular distance."""
    centre = CANONICAL_INNER_LIP_GAP + face[..., K["lower_lip_inner"], 1] - face[..., K["upper_lip_inner"], 1]
    return np.maximum(centre, 0.0) * (1 + 2 * SIDE_GAP_RATIO) / 3 / CANONICAL_INTER_OCULAR
