"""Face rig: which MediaPipe landmarks are Teller's 21 keypoints, face regions, and rigid fitting.

Indices refer to MediaPipe's 478-landmark face mesh (468 vertices + 10 iris points). "Left"/"right" below
are the subject's own sides; in an unmirrored photo the subject's right side is on the image's left.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

# The 21 keypoints whose offsets make up the expression part of the motion latent (rows 0-20).
KEYPOINTS: dict[str, int] = {
    # lips (10): corners, outer and inner centre lines, and the sides of both lips
    "mouth_corner_right": 61,
    "mouth_corner_left": 291,
    "upper_lip_outer": 0,
    "lower_lip_outer": 17,
    "upper_lip_inner": 13,
    "lower_lip_inner": 14,
    "upper_lip_right": 37,
    "upper_lip_left": 267,
    "lower_lip_right": 84,
    "lower_lip_left": 314,
    # jaw (3)
    "chin": 152,
    "jaw_right": 172,
    "jaw_left": 397,
    # eyelids (4)
    "upper_eyelid_right": 159,
    "lower_eyelid_right": 145,
    "upper_eyelid_left": 386,
    "lower_eyelid_left": 374,
    # brows (2)
    "brow_right": 105,
    "brow_left": 334,
    # cheeks (2)
    "cheek_right": 205,
    "cheek_left": 425,
}
KEYPOINT_NAMES = list(KEYPOINTS)
KEYPOINT_INDICES = list(KEYPOINTS.values())
NUM_KEYPOINTS = len(KEYPOINTS)
MOTION_ROWS = NUM_KEYPOINTS + 4  # + 3 rotation rows + translation = 25
ROTATION_ROWS = slice(NUM_KEYPOINTS, NUM_KEYPOINTS + 3)
TRANSLATION_ROW = NUM_KEYPOINTS + 3

# Landmarks that stay put when the face changes expression (forehead, nose bridge, temples, ears' front).
# They anchor the interpolation of keypoint offsets so that, e.g., opening the mouth does not lift the nose.
STATIC_LANDMARKS = [10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 109, 338, 67, 297, 103, 332, 54, 284,
                    21, 251, 162, 389, 127, 356, 234, 454, 33, 133, 263, 362, 98, 327, 48, 278]

# Contours (ordered) used by the renderer and the evaluation.
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
# Eye contours from the outer to the inner corner, (upper lid, lower lid), subject's right then left eye; index k of
# the upper list faces index k of the lower list. The outlines and lid pairs below are derived from them.
EYE_CONTOURS = (
    ([33, 246, 161, 160, 159, 158, 157, 173, 133], [33, 7, 163, 144, 145, 153, 154, 155, 133]),
    ([263, 466, 388, 387, 386, 385, 384, 398, 362], [263, 249, 390, 373, 374, 380, 381, 382, 362]),
)
EYE_RIGHT, EYE_LEFT = (upper + lower[-2:0:-1] for upper, lower in EYE_CONTOURS)  # closed outlines
# Pairs of (upper, lower) eyelid landmarks that meet when the eye closes.
EYELID_PAIRS_RIGHT, EYELID_PAIRS_LEFT = (list(zip(upper[1:-1], lower[1:-1], strict=True))
                                         for upper, lower in EYE_CONTOURS)
IRIS_RIGHT = list(range(468, 473))
IRIS_LEFT = list(range(473, 478))
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
EYE_CORNERS = (33, 263)  # outer corners, for the inter-ocular distance


def inter_ocular_distance(points: np.ndarray) -> float:
    """Distance between the outer eye corners, in the units of `points`."""
    return float(np.linalg.norm(points[EYE_CORNERS[0], :2] - points[EYE_CORNERS[1], :2]))


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip aperture (mean of three vertical gaps) divided by the inter-ocular distance."""
    gaps = [points[lo, 1] - points[up, 1] for up, lo in ((82, 87), (13, 14), (312, 317))]
    return float(max(np.mean(gaps), 0.0) / inter_ocular_distance(points))


def eye_opening(points: np.ndarray) -> float:
    """Mean lid aperture of both eyes (upper to lower lid, middle three pairs) over the inter-ocular distance."""
    pairs = EYELID_PAIRS_RIGHT[2:5] + EYELID_PAIRS_LEFT[2:5]
    gaps = [np.linalg.norm(points[lo, :2] - points[up, :2]) for up, lo in pairs]
    return float(np.mean(gaps) / inter_ocular_distance(points))


def fit_similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None):
    """Weighted similarity Procrustes (Umeyama): `target ≈ scale · source @ R + t` with R a proper rotation.

    Row-vector convention as in LivePortrait: x_driven = scale · (x_canonical @ R + exp) + t.
    """
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s = (w[:, None] * source).sum(0)
    mu_t = (w[:, None] * target).sum(0)
    s0, t0 = source - mu_s, target - mu_t
    cov = (w[:, None] * s0).T @ t0  # 3x3
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rotation = u @ fix @ vt
    var_s = (w * (s0**2).sum(1)).sum()
    scale = float((sig * np.diag(fix)).sum() / var_s)
    translation = mu_t - scale * mu_s @ rotation
    return scale, rotation, translation


def mesh_geodesic_distances(vertices: np.ndarray, triangles: np.ndarray, sources: list[int]) -> np.ndarray:
    """Shortest-path distances along mesh edges from each source vertex to all vertices: (len(sources), V).

    Distances along the surface respect the holes of the mesh, so the upper lip is far from the lower lip
    even though they touch in space.
    """
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    n = len(vertices)
    graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    return dijkstra(graph, directed=False, indices=sources)


def without_lip_and_lid_bridges(triangles: np.ndarray) -> np.ndarray:
    """The canonical mesh's triangles minus those joining the upper and lower lips and eyelids.

    MediaPipe's canonical mesh is closed over the mouth and eyes; distances measured across those bridges
    would move the upper lip with the lower one and keep the eyelids from closing.
    """
    pairs = [(set(LIPS_INNER_UPPER[1:-1]), set(LIPS_INNER_LOWER[1:-1]))]
    for lids in (EYELID_PAIRS_RIGHT, EYELID_PAIRS_LEFT):
        pairs.append(({up for up, _ in lids}, {lo for _, lo in lids}))
    keep = [not any(up & set(t) and lo & set(t) for up, lo in pairs) for t in triangles.tolist()]
    return triangles[np.asarray(keep)]


EYELID_KEYPOINTS = [name for name in KEYPOINTS if "eyelid" in name]
EYELID_SIGMA_SCALE = 4 / 3  # the eyelids' offsets spread this much further (see keypoint_interpolation_weights)
LIP_PROFILE_EXPONENT = 0.6  # inner-lip contour profile: 0.5 = an elliptical opening, 1 = a parabola


def keypoint_interpolation_weights(
    vertices: np.ndarray, triangles: np.ndarray, sigma: float, num_landmarks: int = 478
) -> np.ndarray:
    """Fixed weights W (num_landmarks, 21) spreading keypoint offsets to every landmark: offsets = W @ exp.

    Normalised Gaussian weights of the geodesic distance to the 21 keypoints (the eyelids' with a wider
    kernel) and to the static landmarks (which carry zero offset); a keypoint carries its own offset exactly,
    and the inner-lip contours follow their centre keypoints with a rounded profile (`_round_inner_lips`).
    Iris points follow their eyelids' mean so the eye does not tear.
    """
    controls = KEYPOINT_INDICES + STATIC_LANDMARKS
    dist = mesh_geodesic_distances(vertices, without_lip_and_lid_bridges(triangles), controls).T  # (V, C)
    # A closing eyelid carries the skin around the eye with it (EYELID_SIGMA_SCALE × sigma), which reads as a
    # closed eye; elsewhere a tighter spread follows the landmarks of talking faces more closely.
    scale = np.ones(len(controls))
    scale[[KEYPOINT_NAMES.index(name) for name in EYELID_KEYPOINTS]] = EYELID_SIGMA_SCALE
    kernel = np.exp(-0.5 * (dist / (sigma * scale)) ** 2)
    weights = kernel[:, :NUM_KEYPOINTS] / (kernel.sum(1, keepdims=True) + 1e-8)
    for k, idx in enumerate(KEYPOINT_INDICES):
        weights[idx] = 0.0
        weights[idx, k] = 1.0
    _round_inner_lips(weights, vertices)
    full = np.zeros((num_landmarks, NUM_KEYPOINTS))
    full[: len(vertices)] = weights
    # The iris stays centred between the lids: half of each lid's motion (keeps the iris inside the eye).
    for iris, (up, lo) in ((IRIS_RIGHT, (159, 145)), (IRIS_LEFT, (386, 374))):
        full[iris] = 0.5 * (full[up] + full[lo])
    return full.astype(np.float32)


def _round_inner_lips(weights: np.ndarray, vertices: np.ndarray) -> None:
    """Inner-lip contour points follow their lip's centre keypoint with a rounded profile across the mouth.

    Gaussian weights leave the points beside the centre keypoint far behind it, so a dropping jaw pulled the
    lower lip into a V (and the upper into a Λ); an open mouth is rounded. A contour point at x across the
    mouth (s = 0 at the centre, ±1 at the inner corners) takes (1 - s²)^LIP_PROFILE_EXPONENT of the centre
    keypoint's offset and the rest from its inner corner (which keeps its own, Gaussian, weights).
    """
    for contour, centre in ((LIPS_INNER_UPPER, "upper_lip_inner"), (LIPS_INNER_LOWER, "lower_lip_inner")):
        k = KEYPOINT_NAMES.index(centre)
        middle = vertices[KEYPOINTS[centre], 0]
        half = len(contour) // 2
        for corner, side in ((contour[0], contour[1:half]), (contour[-1], contour[half + 1 : -1])):
            for vertex in side:
                s = np.clip((vertices[vertex, 0] - middle) / (vertices[corner, 0] - middle), 0.0, 1.0)
                share = (1.0 - s**2) ** LIP_PROFILE_EXPONENT
                weights[vertex] = (1.0 - share) * weights[corner]
                weights[vertex, k] += share


def rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix (row-vector convention) → axis-angle vector (radians)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(rotation, np.float64).T).as_rotvec()


def axis_angle_to_rotation(rotvec: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rotvec, np.float64)).as_matrix().T
