"""Dense warp: the whole photo moved with the driven landmarks.

Control points are the 468 mesh landmarks plus rings of anchors extruded from the face's outline (hair, ears,
neck, background). Anchors follow the head's rigid 2D motion and the outline's own non-rigid motion with a
falloff (slow above the face, where hair and hats ride on the head; faster below, where the neck and
shoulders stay put); the outermost ring and the image border are fixed. Per frame the destination triangles
are rasterised (barycentric → source coordinates, nearest triangle drawn last) on a coarse grid, and per
pixel around the mouth and eyes and along folds; the map is upsampled and `cv2.remap` samples the photo. Only
the moving region is touched, so the source's own landmarks give back the photo exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from diffusers.configuration_utils import FrozenDict

from ... import rig
from .geometry import NUM_MESH_VERTICES, similarity_2d


@dataclass
class ControlMesh:
    """The warp's control points and triangles for one source photo."""

    points: np.ndarray  # (468 + A, 2) float32 source positions of the control points
    triangles: np.ndarray  # (T, 3) int32 over the control points
    anchor_triangle: np.ndarray  # (T,) bool: outside the face (drawn first, behind it)
    anchor_origin: np.ndarray  # (A,) the outline landmark each anchor was extruded from (`face_outline`)
    anchor_weight: np.ndarray  # (A,) how much each anchor follows the head
    grid_step: int
    folded: np.ndarray  # (T,) bool: face triangles folded over in the photo (`folded_triangles`)


def control_mesh(points: np.ndarray, face_triangles: np.ndarray, shape: tuple[int, int],
                 cfg: FrozenDict) -> ControlMesh:
    """The photo's landmarks and face triangles plus rings of anchors around the face's outline, joined by strips.

    `points`: the mesh landmarks (468, 2); `shape`: the photo's (height, width); `cfg`: the renderer's config.
    """
    height, width = shape
    # rings of anchors on rays from the oval's centre through the face's outline
    centre = points[rig.FACE_OVAL].mean(0)
    outline = face_outline(points, centre)
    rays = points[outline] - centre
    down = np.clip(rays[:, 1] / np.maximum(np.linalg.norm(rays, axis=1), 1e-6), 0.0, 1.0) ** 1.5
    rings, weights = [], []
    for radius, w_up, w_down in zip(cfg.anchor_radii, cfg.anchor_weights_up, cfg.anchor_weights_down,
                                    strict=True):
        ring = centre + radius * rays
        to_border = np.min([ring[:, 0], ring[:, 1], width - 1 - ring[:, 0], height - 1 - ring[:, 1]], 0)
        pinned = np.clip(to_border / (cfg.border_margin * min(width, height)), 0.0, 1.0)
        rings.append(ring)
        weights.append(((1 - down) * w_up + down * w_down) * pinned)

    # strips between consecutive rings (ring 0 is the outline itself)
    n = len(outline)
    ring_ids = [outline] + [NUM_MESH_VERTICES + k * n + np.arange(n) for k in range(len(rings))]
    nxt = np.roll(np.arange(n), -1)
    strips = []
    for inner, outer in zip(ring_ids[:-1], ring_ids[1:], strict=True):
        strips += [np.stack([inner, inner[nxt], outer[nxt]], 1), np.stack([inner, outer[nxt], outer], 1)]
    all_triangles = np.concatenate([face_triangles, *strips]).astype(np.int32)

    iod = rig.inter_ocular_distance(points)
    return ControlMesh(
        points=np.concatenate([points, *rings]).astype(np.float32),
        triangles=all_triangles,
        anchor_triangle=np.arange(len(all_triangles)) >= len(face_triangles),
        anchor_origin=np.tile(outline, len(rings)),
        anchor_weight=np.concatenate(weights).astype(np.float32),
        grid_step=int(np.clip(round(cfg.grid_spacing * iod), 1, cfg.max_grid_step)),
        folded=np.concatenate([folded_triangles(points, face_triangles),
                               np.zeros(len(all_triangles) - len(face_triangles), bool)]),
    )


def folded_triangles(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T,) bool: face triangles wound the other way round than most in the photo, of FOLD_MIN_AREA or more: on
    a photo of a turned face the far side's landmarks lie behind the cheek, and its mesh folds over itself there.
    The lips and lids, whose closed lines make slivers of either winding, are left out."""
    a, b, c = points[triangles[:, 0], :2], points[triangles[:, 1], :2], points[triangles[:, 2], :2]
    doubled_area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    backwards = np.sign(doubled_area) == -np.sign(np.median(doubled_area))
    return backwards & (np.abs(doubled_area) >= 2 * FOLD_MIN_AREA) & ~np.isin(triangles, OPENINGS).any(1)


def face_outline(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Per landmark of the face oval, the landmark that reaches furthest out along its ray from `centre`.

    On a frontal photo that is the oval landmark itself. On a turned face (jesper_head_down) the far side's oval
    lies behind the cheek, whose own landmarks form the outline: strips started at the oval would lie on the
    cheek, and moved, show its edge a second time outside the face.
    """
    oval = np.asarray(rig.FACE_OVAL)
    rays = points[oval, :2] - centre
    length = np.linalg.norm(rays, axis=1)
    units = rays / np.maximum(length, 1e-6)[:, None]
    offsets = points[:, :2] - centre
    # each landmark belongs to the oval ray nearest to it in angle
    sector = np.argmax(offsets @ units.T / np.maximum(np.linalg.norm(offsets, axis=1), 1e-6)[:, None], axis=1)
    reach = np.einsum("ij,ij->i", offsets, units[sector])
    outline = oval.copy()
    for k in range(len(oval)):
        members = np.flatnonzero(sector == k)
        best = members[np.argmax(reach[members])] if len(members) else oval[k]
        if reach[best] > length[k] + OUTLINE_MARGIN:
            outline[k] = best
    return outline


def delaunay_face(points: np.ndarray) -> np.ndarray:
    """A triangulation of the face without the canonical mesh: Delaunay inside the face oval.

    It is computed with the lips and lids pulled apart, so that no triangle joins the upper lip (or lid) to
    the lower one through the lip itself; only triangles across the openings do.
    """
    from scipy.spatial import Delaunay

    opened = points.copy()
    for upper, lower in [(rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER), *rig.EYE_CONTOURS]:
        span = np.linalg.norm(points[upper[-1]] - points[upper[0]])
        inner = np.asarray(lower[1:-1])
        opened[inner, 1] += np.maximum(0.25 * span - (points[inner, 1] - points[upper[1:-1], 1]), 0.0)
    triangles = Delaunay(opened).simplices
    # keep the triangles inside the oval (Delaunay also fills the oval's concavities)
    oval = points[rig.FACE_OVAL]
    centroid = points[triangles].mean(1)
    inside = np.zeros(len(triangles), bool)
    for (x0, y0), (x1, y1) in zip(oval, np.roll(oval, -1, 0), strict=True):  # ray casting
        crosses = (y0 > centroid[:, 1]) != (y1 > centroid[:, 1])
        x_cross = x0 + (centroid[:, 1] - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (centroid[:, 0] < x_cross)
    return triangles[inside]


def anchor_targets(mesh: ControlMesh, driven: np.ndarray) -> np.ndarray:
    """Anchors follow the head's rigid 2D motion plus the outline's own deformation, with their weights."""
    src = mesh.points.astype(np.float64)
    ids = rig.STATIC_LANDMARKS
    a, b = similarity_2d(src[ids], driven[ids])
    anchors = src[NUM_MESH_VERTICES:]
    rigid = (a - 1) * (anchors @ [1, 1j]) + b
    origin = mesh.anchor_origin
    residual = driven[origin] @ [1, 1j] - (a * (src[origin] @ [1, 1j]) + b)
    moved = mesh.anchor_weight * (rigid + residual)
    return anchors + np.stack([moved.real, moved.imag], 1)


def warp_photo(frame: np.ndarray, image: np.ndarray, mesh: ControlMesh, src: np.ndarray, dst: np.ndarray,
               depth: np.ndarray, moved: np.ndarray, border_margin: float, detail_margin: float) -> None:
    """Backward piecewise-affine warp of the moving region of `image`, written into `frame`.

    The map is rasterised on a coarse grid and upsampled, except around the eyes and the mouth, where the
    lids and lips squeeze whole regions into a line: there it is rasterised (nearly) per pixel; and along the
    seams where a turned face folds over itself (`seam_boxes`), per pixel.
    """
    height, width = frame.shape[:2]
    moving = moved[mesh.triangles].any(1)
    tris = mesh.triangles[moving]
    # far first, nearest last (later writes win): anchors behind the face, then by depth
    tri_depth = np.where(mesh.anchor_triangle[moving], np.inf, depth[tris].mean(1))
    order = np.argsort(-tri_depth, kind="stable")
    tris, folded = tris[order], mesh.folded[moving][order]
    p, q = dst[tris], src[tris]  # (T, 3, 2)
    extent = (p.min(1), p.max(1))  # each triangle's bounding box, for every map below
    x0, y0 = np.maximum(np.floor(extent[0].min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(extent[1].max(0)).astype(int) + 2, [width, height])
    if x1 <= x0 or y1 <= y0:
        return
    step, bounds = mesh.grid_step, (x0, y0, x1, y1)
    full = dense_map(p, q, extent, bounds, step, (height, width), border_margin)
    detail_step = max(1, round(step / 3))
    if detail_step < step:
        for box in detail_boxes(dst, detail_margin):
            _refine(full, box, bounds, (height, width), p, q, extent, detail_step, border_margin)
        # a fold of the photo's mesh that the motion reshapes (not one that only moves along) draws its layers anew
        fold_p, fold_q = p[folded], q[folded]
        reshaped = np.abs((fold_p - fold_p.mean(1, keepdims=True)) - (fold_q - fold_q.mean(1, keepdims=True)))
        for box in seam_boxes(full, bounds, step, detail_boxes(dst, 0.0), fold_p[reshaped.max((1, 2)) > FOLD_RESHAPE]):
            _refine(full, box, bounds, (height, width), p, q, extent, 1, border_margin)
    frame[y0:y1, x0:x1] = cv2.remap(image, full, None, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def dense_map(p: np.ndarray, q: np.ndarray, extent: tuple[np.ndarray, np.ndarray], box: tuple[int, int, int, int],
              step: int, shape: tuple[int, int], border_margin: float) -> np.ndarray:
    """Source coordinates (h, w, 2) float32 of the pixels in `box`, for triangles `p` (driven) → `q`, whose
    bounding boxes are `extent` (least and greatest corners, (T, 2) each).

    Grid nodes sit at pixel i·step + off, where cv2.resize puts its samples; an extra node on each side
    keeps resize's edge clamping out of the box. Nodes no moving triangle covers stay in place, and
    the displacement fades out toward the image border, which stays put.
    """
    x0, y0, x1, y1 = box
    height, width = shape
    off = (step - 1) / 2.0
    i0, j0 = int(np.floor((x0 - off) / step)) - 1, int(np.floor((y0 - off) / step)) - 1
    i1, j1 = int(np.ceil((x1 - 1 - off) / step)) + 2, int(np.ceil((y1 - 1 - off) / step)) + 2
    node_x = np.arange(i0, i1) * step + off
    node_y = np.arange(j0, j1) * step + off
    lo, hi = extent
    near = (hi[:, 0] >= node_x[0]) & (lo[:, 0] <= node_x[-1]) & (hi[:, 1] >= node_y[0]) & (lo[:, 1] <= node_y[-1])
    g0 = np.array([i0, j0])
    disp = rasterise((p[near] - off) / step - g0, q[near], i1 - i0, j1 - j0, step, off, g0)
    margin = border_margin * min(width, height)
    fade_x = np.clip((np.minimum(node_x, width - 1 - node_x) - step) / margin, 0, 1)
    fade_y = np.clip((np.minimum(node_y, height - 1 - node_y) - step) / margin, 0, 1)
    disp *= np.minimum.outer(fade_y, fade_x).astype(np.float32)[..., None]
    # A face the photo's edge cuts, moved along or away from that edge, needs what the photo does not have: rows
    # from beyond the edge (BORDER_REPLICATE streaks) or a shear squeezed into the fade (slanted streaks, folded:
    # jesper_head_down raised). So near a border a pixel moves at most BORDER_GIVE of its distance to it, along the
    # border or away from it; toward the inside it moves freely (a jaw dropping toward the bottom edge).
    to_left, to_right = np.maximum(node_x - step, 0), np.maximum(width - 1 - step - node_x, 0)
    to_top, to_bottom = np.maximum(node_y - step, 0), np.maximum(height - 1 - step - node_y, 0)
    along_x = BORDER_GIVE * np.minimum(to_top, to_bottom)[:, None]  # x moves along the top and bottom edges
    along_y = BORDER_GIVE * np.minimum(to_left, to_right)[None, :]
    np.clip(disp[..., 0], -np.minimum(BORDER_GIVE * to_left[None, :], along_x),
            np.minimum(BORDER_GIVE * to_right[None, :], along_x), out=disp[..., 0])
    np.clip(disp[..., 1], -np.minimum(BORDER_GIVE * to_top[:, None], along_y),
            np.minimum(BORDER_GIVE * to_bottom[:, None], along_y), out=disp[..., 1])
    disp[..., 0] += node_x.astype(np.float32)[None, :]
    disp[..., 1] += node_y.astype(np.float32)[:, None]
    if step > 1:
        disp = cv2.resize(disp, ((i1 - i0) * step, (j1 - j0) * step), interpolation=cv2.INTER_LINEAR)
    return disp[y0 - j0 * step : y1 - j0 * step, x0 - i0 * step : x1 - i0 * step]


def _refine(full: np.ndarray, box: tuple[int, int, int, int], bounds: tuple[int, int, int, int],
            shape: tuple[int, int], p: np.ndarray, q: np.ndarray, extent: tuple[np.ndarray, np.ndarray], step: int,
            border_margin: float) -> None:
    """Rasterise `box` (photo pixels) at `step` into `full`, the map of `bounds` in a photo of `shape`."""
    x0, y0, x1, y1 = bounds
    bx0, by0, bx1, by1 = max(box[0], x0), max(box[1], y0), min(box[2], x1), min(box[3], y1)
    if bx1 > bx0 and by1 > by0:
        full[by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = dense_map(p, q, extent, (bx0, by0, bx1, by1), step, shape,
                                                                   border_margin)


def seam_boxes(full: np.ndarray, bounds: tuple[int, int, int, int], step: int,
               openings: list[tuple[int, int, int, int]], folds: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (photo pixels) around the seams of the map `full` (of `bounds`, rasterised every `step` pixels).

    Where a nearer part of the face covers a farther one (the nose over a turned cheek, the jaw over the neck)
    the map jumps between two grid nodes, and the upsampled map sweeps across the photo between the two sides: a
    squeezed copy of what lies there (a sawtooth jaw line, a dark line down the nose). There the map is
    rasterised per pixel. The lips and lids (`openings`) close by squeezing, seams of their own, already
    rasterised finely. A map without seams (a face turned a few degrees) costs one comparison per node. `folds`:
    triangles (driven, photo pixels) folded in the photo itself, whose thin layers a coarse grid samples as a
    sawtooth; their tiles are refined too.
    """
    x0, y0 = bounds[:2]
    nodes = full[::step, ::step]
    stretch = np.zeros(nodes.shape[:2], np.float32)  # source px per frame px, to the next node right or down
    stretch[:, :-1] = np.linalg.norm(np.diff(nodes, axis=1), axis=-1)
    stretch[:-1] = np.maximum(stretch[:-1], np.linalg.norm(np.diff(nodes, axis=0), axis=-1))
    stretch /= step
    for bx0, by0, bx1, by1 in openings:
        stretch[max(by0 - y0, 0) // step : max(by1 - y0, 0) // step + 1,
                max(bx0 - x0, 0) // step : max(bx1 - x0, 0) // step + 1] = 0
    if not (stretch > SEAM_STRETCH[1]).any() and not len(folds):
        return []
    rows, cols = -(-stretch.shape[0] // SEAM_TILE), -(-stretch.shape[1] // SEAM_TILE)
    padded = np.zeros((rows * SEAM_TILE, cols * SEAM_TILE), np.float32)
    padded[: stretch.shape[0], : stretch.shape[1]] = stretch
    most = padded.reshape(rows, SEAM_TILE, cols, SEAM_TILE).max(axis=(1, 3))
    size = SEAM_TILE * step
    for lo, hi in zip(folds.min(1), folds.max(1), strict=True):  # counted as the strongest seams
        (i0, j0), (i1, j1) = ((lo - (x0, y0)) // size).astype(int), ((hi - (x0, y0)) // size).astype(int)
        most[max(j0, 0) : max(j1 + 1, 0), max(i0, 0) : max(i1 + 1, 0)] = np.inf
    _, label = cv2.connectedComponents((most > SEAM_STRETCH[0]).astype(np.uint8))
    tiles = np.isin(label, label[most > SEAM_STRETCH[1]])
    tiles = cv2.dilate(tiles.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # a sweep may start in the next tile
    boxes = []
    for r in range(rows):  # each run of seam tiles along a row of tiles is one box
        ends = np.flatnonzero(np.diff(np.concatenate([[0], tiles[r].view(np.int8), [0]])))
        boxes += [(x0 + a * size, y0 + r * size, x0 + b * size, y0 + (r + 1) * size)
                  for a, b in zip(ends[::2], ends[1::2], strict=True)]
    return boxes


def detail_boxes(dst: np.ndarray, detail_margin: float) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (x0, y0, x1, y1) around the driven mouth and eyes, rasterised per pixel."""
    boxes = []
    for ids in (rig.LIPS_OUTER_UPPER + rig.LIPS_OUTER_LOWER, rig.EYE_RIGHT, rig.EYE_LEFT):
        lo, hi = dst[ids].min(0), dst[ids].max(0)
        pad = detail_margin * (hi[0] - lo[0])
        boxes.append((int(lo[0] - pad), int(lo[1] - pad), int(hi[0] + pad) + 2, int(hi[1] + pad) + 2))
    return boxes


BORDER_GIVE = 0.5  # see `dense_map`
FOLD_RESHAPE = 3.0  # px a folded triangle's corner moves against its others before its tiles are refined
FOLD_MIN_AREA = 2.0  # px²: smaller triangles folded in the photo are landmark noise (see `folded_triangles`)
# the landmarks of the lips and lids (see `folded_triangles`)
OPENINGS = np.array(sorted(set(rig.LIPS_OUTER_UPPER + rig.LIPS_OUTER_LOWER + rig.LIPS_INNER_UPPER
                               + rig.LIPS_INNER_LOWER + list(rig.EYE_RIGHT) + list(rig.EYE_LEFT))))
OUTLINE_MARGIN = 0.5  # px a landmark must reach past the oval to take its place in the outline
# source px per frame px between grid nodes: a seam runs through tiles above the first, one of them above the second
# (a fold's jump varies along it; a mouth corner's squeeze next to the lips stays below 2.5 and is not worth the time)
SEAM_STRETCH = (2.0, 2.5)
SEAM_TILE = 4  # grid steps: seams are rasterised finely in tiles this wide
SPAN_MARGIN = 0.05  # grid units: a row's span is widened by this (far more than the inside test's tolerance)


def _places(counts: np.ndarray) -> np.ndarray:
    """0, 1, …, counts[0] - 1, then 0, 1, …, counts[1] - 1, …: each item's place within its group."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _row_spans(grid: np.ndarray, tri: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where row `y` (grid units) enters and leaves triangle `tri`: the least and greatest x of its edges there."""
    lo, hi = np.full(len(y), np.inf), np.full(len(y), -np.inf)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        xa, ya = grid[tri, a, 0], grid[tri, a, 1]
        xb, yb = grid[tri, b, 0], grid[tri, b, 1]
        dy = yb - ya
        # a level edge is covered by the two edges that meet it at its ends
        crosses = (dy != 0) & (y >= np.minimum(ya, yb) - 1e-4) & (y <= np.maximum(ya, yb) + 1e-4)
        x = xa + np.clip((y - ya) / np.where(dy != 0, dy, 1.0), 0.0, 1.0) * (xb - xa)
        lo = np.where(crosses, np.minimum(lo, x), lo)
        hi = np.where(crosses, np.maximum(hi, x), hi)
    return lo, hi


def rasterise(grid: np.ndarray, q: np.ndarray, nx: int, ny: int, step: int, off: float,
              g0: np.ndarray) -> np.ndarray:
    """Displacement (ny, nx, 2) at the grid nodes covered by triangles `grid` (grid units) → `q` (px).

    Triangles are drawn in order, so where they overlap (a fold, the nose over a turned cheek) the last
    one wins; nodes no triangle covers keep a zero displacement.
    """
    # Same arithmetic as the straightforward per-pair version, element for element (so the same bits), but
    # everything that depends only on the triangle (inverse determinant, edges, source corners) is computed
    # once per triangle and gathered from contiguous arrays, the source position only for covered nodes, and
    # each triangle visits, row by row, only the nodes between its edges, SPAN_MARGIN wider: 2.4x fewer pairs on a
    # face. The inside test below still decides, as over the whole bounding box, except at the tip of a sliver,
    # whose tolerance can reach further along a row than the margin (there a neighbour's nearly equal value stays)
    p0, e1, e2 = grid[:, 0], grid[:, 1] - grid[:, 0], grid[:, 2] - grid[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-9
    p0, e1, e2, det, q, grid = p0[ok], e1[ok], e2[ok], det[ok], q[ok], grid[ok]
    i0 = np.clip(np.ceil(grid[..., 0].min(1) - 1e-4), 0, nx).astype(np.int64)
    i1 = np.clip(np.floor(grid[..., 0].max(1) + 1e-4), -1, nx - 1).astype(np.int64)
    j0 = np.clip(np.ceil(grid[..., 1].min(1) - 1e-4), 0, ny).astype(np.int64)
    j1 = np.clip(np.floor(grid[..., 1].max(1) + 1e-4), -1, ny - 1).astype(np.int64)
    disp = np.zeros((ny, nx, 2), np.float32)
    heights = np.maximum(j1 - j0 + 1, 0) * (i1 >= i0)
    rows = int(heights.sum())
    if rows == 0:
        return disp
    # every (triangle, row) in the triangles' bounding boxes, and the columns its edges span on that row
    tri = np.repeat(np.arange(len(heights)), heights)
    row_j = j0[tri] + _places(heights)
    span_lo, span_hi = _row_spans(grid, tri, row_j.astype(np.float64))
    row_i0 = np.maximum(np.ceil(span_lo - SPAN_MARGIN), i0[tri]).astype(np.int64)
    row_i1 = np.minimum(np.floor(span_hi + SPAN_MARGIN), i1[tri]).astype(np.int64)
    counts = np.maximum(row_i1 - row_i0 + 1, 0)
    total = int(counts.sum())
    if total == 0:
        return disp
    # then every node of those spans, and keep the nodes inside
    pair_row = np.repeat(np.arange(rows), counts)
    tri = tri[pair_row]
    gi = row_i0[pair_row] + _places(counts)
    gj = row_j[pair_row]
    vx = gi - p0[:, 0].copy()[tri]
    vy = gj - p0[:, 1].copy()[tri]
    inv = (1.0 / det)[tri]
    l1 = (vx * e2[:, 1].copy()[tri] - vy * e2[:, 0].copy()[tri]) * inv
    l2 = (e1[:, 0].copy()[tri] * vy - e1[:, 1].copy()[tri] * vx) * inv
    inside = (l1 >= -1e-5) & (l2 >= -1e-5) & (l1 + l2 <= 1 + 1e-5)
    tri, gi, gj, l1, l2 = tri[inside], gi[inside], gj[inside], l1[inside], l2[inside]
    q0, d1, d2 = q[:, 0], q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]  # float32, as (qt[:, 1] - qt[:, 0]) was
    sx = q0[:, 0][tri] + l1 * d1[:, 0][tri] + l2 * d2[:, 0][tri]
    sy = q0[:, 1][tri] + l1 * d1[:, 1][tri] + l2 * d2[:, 1][tri]
    disp[gj, gi, 0] = sx - ((gi + g0[0]) * step + off)
    disp[gj, gi, 1] = sy - ((gj + g0[1]) * step + off)
    return disp
