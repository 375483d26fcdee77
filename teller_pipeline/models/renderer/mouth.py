"""Mouth: what the photo's lips show, lips that close as a whole, and a synthesised interior where they part.

Inside the driven inner-lip contour, the source's own mouth interior (e.g. the teeth of a smiling photo) rides
on the lip it belongs to and is hidden by the other lip when the mouth closes. Where the lips part further than
in the photo, a synthesised oral cavity, tongue and teeth, coloured from the photo's skin and lips and given
its grain, fill the gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from diffusers.configuration_utils import FrozenDict
from scipy.ndimage import gaussian_filter

from ... import rig
from .geometry import NUM_MESH_VERTICES, Contours, local_frame, opening_pixels, sample, smoothstep

SKIN_SAMPLE_LANDMARKS = [50, 280, 101, 330, 118, 347, 205, 425, 36, 266, 142, 371]  # cheeks
LIP_SAMPLE_LANDMARKS = [0, 17, 37, 267, 84, 314, 39, 269, 181, 405]  # lip bodies
# Tooth boundaries across the upper arch, in half mouth widths from the centre: the arch curves away from
# the camera, so projected teeth narrow toward the corners.
TOOTH_EDGES = (0.0, 0.16, 0.3, 0.42, 0.53, 0.63, 0.72, 0.8, 1.01)
GRAIN_TILE = 64
TONGUE_HALF_WIDTH = 0.62  # half mouth widths: the tongue spans the lower arch
# half mouth widths: the opening's round ends lie this far inside its corners, where the warped lips show. At 0.03 a
# bowed head's blunt opening (jesper_head_down) ended in a hard black wedge reaching into the skin
CORNER_INSET = 0.12
# length of the opening's round end caps over half its height (see `rounded_ends`); at 2 the face landmarker read the
# widest openings ~0.005 smaller (Grace Hopper, jesper_speaking: a probe over their 10 widest real-speech frames)
CORNER_ROUNDNESS = 1.5
SHADOWED_OPENING = 0.12  # mouth widths: a synthesised opening this high or more is dark at its back
CORNER_SEAL_HEIGHT = 0.8  # at a closing corner the sealed band is this × its widest (see `seal_lips`)


@dataclass
class SourceMouth:
    """The photo's mouth: its lips, what its lip gap shows, and the look of a synthesised interior."""

    contours: Contours  # the inner lips in their local frame
    split: float  # fraction of the lip gap whose content rides on the upper lip
    has_teeth: bool
    colors: dict[str, np.ndarray]  # float32 RGB in 0..1: teeth, cavity_front, cavity_back, tongue
    light_gradient: float  # relative brightness change from the image-left to the image-right of the mouth
    grain: np.ndarray  # (GRAIN_TILE, GRAIN_TILE) float32, the photo's noise for synthesised pixels


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def measure_mouth(image: np.ndarray, points: np.ndarray, cfg: FrozenDict) -> SourceMouth:
    """Colours and grain for the synthesised mouth, fitted to the photo, and what its mouth shows.

    `image`: the photo (H, W, 3) uint8; `points`: its mesh landmarks (468, 2); `cfg`: the renderer's config.
    """
    mouth = local_frame(points, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER)
    rgb = image.astype(np.float32) / 255.0

    def sample_at(ids) -> np.ndarray:
        xy = np.round(points[ids]).astype(int)
        xy[:, 0] = xy[:, 0].clip(0, image.shape[1] - 1)
        xy[:, 1] = xy[:, 1].clip(0, image.shape[0] - 1)
        return rgb[xy[:, 1], xy[:, 0]]

    skin = np.median(sample_at(SKIN_SAMPLE_LANDMARKS), 0)
    lips = np.median(sample_at(LIP_SAMPLE_LANDMARKS), 0)
    skin_luma = float(_luma(skin))
    bright_skin = float(np.percentile(_luma(sample_at(np.arange(NUM_MESH_VERTICES))), 90))
    # left/right lighting from the cheeks beside the mouth (the subject's right cheek is image-left)
    right, left = _luma(sample_at([205, 50, 187])).mean(), _luma(sample_at([425, 280, 411])).mean()
    gradient = float(np.clip((left - right) / max(skin_luma, 1e-3), -0.5, 0.5))
    # grain: robust spread of the fine detail on the face
    x0, y0 = np.maximum(np.floor(points.min(0)).astype(int), 0)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 1
    face = _luma(rgb[y0:y1, x0:x1])
    if face.size:
        detail = face - cv2.GaussianBlur(face, (0, 0), 1.0)
        noise = cfg.grain_strength * float(np.clip(1.4826 * np.median(np.abs(detail)), 0.0, 0.05))
    else:
        noise = 0.0

    # what the source's own lip gap shows: teeth? where do the upper and lower parts separate?
    found = opening_pixels(mouth, image.shape[:2], margin=0)
    has_teeth, split, teeth = False, 0.5, None
    if found is not None and (found[6] > 0.99).sum() > 12:
        ox, oy, _, _, a, b, alpha = found
        inside = alpha > 0.99
        pix = rgb[oy : oy + inside.shape[0], ox : ox + inside.shape[1]][inside]
        depth = (a / np.maximum(a + b, 1e-6))[inside]
        luma = _luma(pix)
        bright = (luma > cfg.teeth_luma_threshold * skin_luma) & (pix.max(1) - pix.min(1) < 0.35)
        has_teeth = bool(bright.mean() > 0.3)
        if has_teeth:
            teeth = pix[bright].mean(0)
            split = _below_upper_teeth(depth, bright, pix[:, 0] - pix[:, 1], float(lips[0] - lips[1]),
                                       float((a + b)[inside].max()))
        else:
            # the darkest band across the gap separates what rides on the upper and on the lower lip
            bins = np.clip((depth * 8).astype(int), 0, 7)
            profile = np.array([luma[bins == k].mean() if (bins == k).any() else np.inf for k in range(8)])
            k = int(np.argmin(profile[2:])) + 2
            split = (k + 0.5) / 8 if profile[k] < 0.7 * profile[np.isfinite(profile)].max() else 1.0
    shade = np.clip(skin_luma / 0.62, 0.45, 1.15)
    if teeth is None:  # teeth under the face's light: the photo's colour cast, about as bright as skin
        reference = np.asarray(cfg.reference_skin_rgb)
        cast = np.clip((skin / max(skin_luma, 1e-3)) / (reference / _luma(reference)), 0.5, 2.0) ** 0.5
        teeth = np.asarray(cfg.teeth_rgb) * cast
        teeth *= np.clip(cfg.teeth_brightness * bright_skin, 0.3, 0.92) / _luma(teeth)
    # cavity and tongue take the lips' hue so they sit in the same light
    lip_hue = np.clip(lips / max(float(_luma(lips)), 1e-3), 0.5, 2.0) ** 0.5
    colors = {
        "teeth": np.clip(teeth, 0, 1),
        "cavity_front": np.clip(np.asarray(cfg.cavity_front_rgb) * shade * lip_hue, 0, 1),
        "cavity_back": np.clip(np.asarray(cfg.cavity_back_rgb) * shade * lip_hue, 0, 1),
        "tongue": np.clip(np.asarray(cfg.tongue_rgb) * shade * lip_hue, 0, 1),
    }
    # a fixed, tileable grain: the same pattern every frame, like the photo's own
    white = np.random.default_rng(0).standard_normal((GRAIN_TILE, GRAIN_TILE))
    grain = gaussian_filter(white, 0.6, mode="wrap").astype(np.float32)
    grain *= noise / max(float(grain.std()), 1e-6)
    return SourceMouth(
        contours=mouth,
        split=float(split),
        has_teeth=has_teeth,
        colors={k: np.asarray(v, np.float32) for k, v in colors.items()},
        light_gradient=gradient,
        grain=grain,
    )


def _below_upper_teeth(depth: np.ndarray, bright: np.ndarray, redness: np.ndarray, lip_redness: float,
                       rows: float) -> float:
    """Where a photo's upper teeth end, as a fraction of its lip gap (`rows` px high) from the upper lip: the
    bottom of the first band, from the top, that looks like teeth (mostly bright pixels, nearer the whitest
    band's redness than the lips'). `depth`, `bright` and `redness` (red minus green) per pixel of the gap;
    `lip_redness`, the lips'. Bands are 1.5 px or more (4 to 16 across the gap); a single bright band that is too
    red between two of teeth (a reflection, a gum) does not end the teeth, a dark one (the gap between the upper
    and the lower teeth) does.

    What lies below (the lower lip's own edge, lower teeth, the dark between) rides on the lower lip. The
    landmarker's lower inner-lip line often runs on the lower lip's body, so a gap ends in lip; split at its
    darkest band, that lip rode on the upper lip, and an opening mouth showed a second lip under the teeth above
    a black gap (jesper_speaking, party_glasses)."""
    bins = int(np.clip(rows / 1.5, 4, 16))
    index = np.clip((depth * bins).astype(int), 0, bins - 1)
    present = np.array([(index == k).any() for k in range(bins)])
    share = np.array([bright[index == k].mean() if present[k] else 0.0 for k in range(bins)])
    red = np.array([redness[index == k].mean() if present[k] else np.inf for k in range(bins)])
    lit = share >= 0.5
    whitest = red[lit].min() if lit.any() else np.inf
    tooth = lit & (red < 0.5 * (whitest + lip_redness))
    if not tooth.any():
        return 1.0
    end = int(np.flatnonzero(tooth)[0])
    while end + 1 < bins and (tooth[end + 1] or (end + 2 < bins and lit[end + 1] and tooth[end + 2])):
        end += 1
    return (end + 1) / bins


def lips_closed(contours: Contours) -> bool:
    """Whether a photo's inner lips meet at their centre (closer than 2 % of the mouth's width, or half a pixel)."""
    centre = len(contours.upper) // 2
    return bool(contours.lower[centre, 1] - contours.upper[centre, 1] < max(0.02 * contours.length, 0.5))


def lip_seam_shift(image: np.ndarray, points: np.ndarray, reach: float) -> np.ndarray:
    """How far (px, down the mouth) the line where a closed photo's lips meet lies from the landmarker's inner-lip
    line, at each inner-lip landmark between the corners ((n - 2,), zero if the lips are apart).

    The landmarker can put that line a few pixels into a lip (measured: ~2 px below the seam on Biden's photo, at
    an inter-ocular distance of 96 px). An opening drawn from there leaves the dark seam and a strip of the lower
    lip on the upper lip, which then reads as still closed, and the landmarker on the rendered frame saw a
    5 mm opening as about 1 mm. The seam is the darkest line across the lips, searched within `reach` × the
    mouth's width of the landmark line.
    """
    up, lo = rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER
    mouth = local_frame(points, up, lo)
    shift = np.zeros(len(up) - 2)
    if not lips_closed(mouth):
        return shift
    luma = cv2.GaussianBlur(_luma(image.astype(np.float32) / 255.0), (0, 0), 0.7)
    half = max(2.0, reach * mouth.length)
    offsets = np.arange(-half, half + 0.25, 0.25)
    for k, (i, j) in enumerate(zip(up[1:-1], lo[1:-1], strict=True)):
        centre = 0.5 * (points[i] + points[j]) + offsets[:, None] * mouth.ey
        profile = cv2.remap(luma, centre[:, 0].astype(np.float32)[None], centre[:, 1].astype(np.float32)[None],
                            cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
        darkest = int(np.argmin(profile))
        # a seam is a dip, darker than the lips on both sides of it; otherwise keep the landmarker's line
        if profile[darkest] < 0.9 * min(profile[: darkest + 1].max(), profile[darkest:].max()):
            shift[k] = offsets[darkest]
    # one dark pore or hair should not pull a single point off the lip line: follow the neighbours' median
    padded = np.pad(shift, 1, mode="edge")
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), 0)


def settle_lips(mouth: SourceMouth, points: np.ndarray, src_points: np.ndarray,
                lip_margin: float) -> tuple[np.ndarray, float]:
    """Lips close as a whole: once the centre closes below the photo's gap, the sides follow.

    The rig drives the inner lips through their centre landmarks and spreads that only partly to the rest
    of the lip; without this, a mouth closing from an open photo would keep a slit at the sides. The
    landmarker's inner-lip line of an open photo often runs over the teeth, inside the true lip edge, so a
    closing lip takes its edge from `lip_margin` × the photo's gap further into the lip (`src_points` is
    updated in place), and less of a strip of teeth is left between closed lips. Returns the points and how
    open the lips are relative to the photo's (0 closed … 1 as open or more).
    """
    src = mouth.contours
    up, lo = rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER
    gap_src = np.maximum(src.lower[:, 1] - src.upper[:, 1], 0.0)
    centre = len(up) // 2
    if lips_closed(src):
        return points, 1.0
    ey = local_frame(points, up, lo).ey
    gap = (points[lo] - points[up]) @ ey
    ratio = np.clip(gap[centre] / gap_src[centre], 0.0, 1.0)
    if ratio < 1.0:
        excess = np.maximum(gap - ratio * gap_src, 0.0)
        excess[[0, -1]] = 0.0
        points[lo] -= excess[:, None] * ey  # the jaw closes: the lower lip rises
        margin = lip_margin * gap_src[1:-1] * (1.0 - ratio)
        src_points[up[1:-1]] -= margin[:, None] * src.ey
        src_points[lo[1:-1]] += margin[:, None] * src.ey
    return points, float(ratio)


def seal_lips(frame: np.ndarray, mouth: SourceMouth, points: np.ndarray, lips_open: float,
              lip_seal: float, lip_seal_until: float, corner_reach: float) -> None:
    """Where lips photographed apart close, fill a thin band along the line where they meet with the lip
    colours just above and below it (blended across the band, darker at the line itself), hiding the
    leftover sliver of teeth or cavity that the warp squeezes between them.

    The band fades out while the lips are still less than `lip_seal_until` of the photo's gap apart: a wider
    band covered small openings whole, so an open-mouth photo looked shut until its lips parted ~8 mm.

    Within `corner_reach` mouth widths of each corner, inside and beyond it, the band keeps most of its widest
    height: a photo's dark mouth corners can reach past the landmarker's inner corners into lip triangles that no
    closing squeezes, and showed as a dark dot at each corner of the closed mouth (obama_speaking)."""
    dst = local_frame(points, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER)
    src = mouth.contours
    closed = smoothstep(1.0 - lips_open / max(lip_seal_until, 1e-6))
    half = closed * lip_seal * np.maximum(src.lower[:, 1] - src.upper[:, 1], 0.0)
    if half.max() < 0.5:
        return
    found = opening_pixels(dst, frame.shape[:2], margin=int(np.ceil(half.max())) + 2)
    if found is None:
        return
    x0, y0, u, _, a, b, _ = found
    h, w = u.shape
    x = u * dst.length
    offset = 0.5 * (a - b)  # from the line midway between the driven lips, down the mouth
    width = np.interp(x, dst.upper[:, 0], half) * np.clip(x / 2.0, 0, 1) * np.clip((dst.length - x) / 2.0, 0, 1)
    if corner_reach > 0:  # (0: no corner seal)
        to_corner = np.minimum(np.abs(x), np.abs(dst.length - x))
        corner = np.clip(1 - to_corner / (corner_reach * dst.length), 0, 1)
        width = np.maximum(width, CORNER_SEAL_HEIGHT * half.max() * corner)
    if not (np.abs(offset) < width).any():
        return

    def beyond(sign: float) -> np.ndarray:  # the lip pixels just beyond the band, above or below each pixel
        shift = (sign * (width + 1.5) - offset)[..., None] * dst.ey
        map_x = (np.arange(x0, x0 + w)[None, :] + shift[..., 0]).astype(np.float32)
        map_y = (np.arange(y0, y0 + h)[:, None] + shift[..., 1]).astype(np.float32)
        return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

    t = np.clip(0.5 + 0.5 * offset / np.maximum(width, 1e-6), 0, 1)[..., None]
    fill = beyond(-1.0) * (1 - t) + beyond(1.0) * t
    fill *= (1.0 - 0.25 * np.exp(-(offset / 0.8) ** 2))[..., None]  # the thin shadow where the lips meet
    alpha = np.clip(width - np.abs(offset) + 0.5, 0, 1)[..., None]
    region = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    region += alpha * (fill - region)
    frame[y0 : y0 + h, x0 : x0 + w] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def composite_mouth(frame: np.ndarray, image: np.ndarray, mouth: SourceMouth, points: np.ndarray,
                    cfg: FrozenDict) -> None:
    """Inside the driven inner lips: the photo's own mouth interior on its lips, the synthesised one between."""
    dst = local_frame(points, rig.LIPS_INNER_UPPER, rig.LIPS_INNER_LOWER)
    src = mouth.contours
    found = opening_pixels(dst, frame.shape[:2])
    if found is None or found[6].max() <= 0:
        return
    x0, y0, u, _, a, b, alpha = found
    h, w = alpha.shape
    gap = a + b
    up_s = np.interp(u * src.length, src.upper[:, 0], src.upper[:, 1])
    lo_s = np.interp(u * src.length, src.lower[:, 0], src.lower[:, 1])
    gap_s = np.maximum(lo_s - up_s, 0.0)
    # the photo's own mouth interior rides on its lips (the upper teeth on the upper lip, …); as the mouth
    # closes the lower lip covers it, as it opens the synthesised interior shows in between
    ext_up, ext_lo = mouth.split * gap_s, (1 - mouth.split) * gap_s
    # which lip a pixel's content rides on, anti-aliased over a pixel: a hard switch drew a stair-stepped seam
    # where the two parts meet
    synthesised = np.maximum(gap - gap_s, 0.0)
    upper = np.clip(ext_up + 0.5 * synthesised - a + 0.5, 0, 1)[..., None]
    region = frame[y0 : y0 + h, x0 : x0 + w].astype(np.float32) / 255.0
    interior = synthesise_mouth(mouth, u, a, b, dst.length, x0, y0, cfg, synthesised, ext_lo)
    interior = region + rounded_ends(u, a - ext_up, synthesised, dst.length)[..., None] * (interior - region)
    for weight, v_s, shown in ((upper, up_s + a, ext_up - a), (1 - upper, lo_s - b, ext_lo - b)):
        real_alpha = weight * np.clip(shown + 0.5, 0, 1)[..., None]
        if real_alpha.max() > 0:
            real = sample(image, src, u, v_s) / 255.0
            interior += real_alpha * (real - interior)
    out = region + alpha[..., None] * (interior - region)
    frame[y0 : y0 + h, x0 : x0 + w] = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def rounded_ends(u: np.ndarray, below_top: np.ndarray, height: np.ndarray, length: float) -> np.ndarray:
    """Opacity that ends the synthesised part of a mouth opening in round caps just inside the points of the
    landmarks' outline, where the warped lips show instead: a dark interior drawn into those points read as hard
    polygon corners, and under a photo's teeth, with ends cut square, as a black bar laid across the mouth
    (jesper_speaking). `u` as from `opening_pixels`; `below_top`: px below the synthesised part's top edge;
    `height`: its height (px) in the pixel's column; `length`: the mouth's width (px)."""
    half = np.maximum(0.5 * height, 1e-6)
    # each cap a half-ellipse as tall as the part and CORNER_ROUNDNESS × its half height long
    across = np.clip((below_top - half) / half, -1.0, 1.0)
    cap = CORNER_ROUNDNESS * half * (1.0 - np.sqrt(1.0 - across * across))
    inside = (1.0 - CORNER_INSET - np.abs(2.0 * u - 1.0)) * 0.5 * length - cap  # px inside the cap
    return np.clip(inside / 1.5 + 0.5, 0, 1)  # soft over 1.5 px


def synthesise_mouth(mouth: SourceMouth, u: np.ndarray, a: np.ndarray, b: np.ndarray, width: float,
                     x0: int, y0: int, cfg: FrozenDict, synthesised: np.ndarray,
                     on_lower_lip: np.ndarray | float) -> np.ndarray:
    """Oral cavity, tongue and teeth in the mouth's local coordinates (float RGB in 0..1). `synthesised`: how
    much of the lip gap (px, per pixel's column) they fill, where the photo's own interior fills the rest;
    `on_lower_lip`: how much of that rides on the lower lip (px), above which the tongue and lower teeth rise."""
    c = mouth.colors
    gap = np.maximum(a + b, 1e-6)
    # the tongue and lower teeth stand on the photo's own lower interior: measured from the lower lip they hid
    # behind it and left a flat black slab under a photo's teeth (jesper_speaking)
    floor = np.maximum(b - on_lower_lip, 0.0)
    s = 2.0 * u - 1.0  # -1..1 across the mouth
    rel_gap = gap / width
    # where a pixel sits on an ellipse inscribed in the opening: 0 at its centre, 1 at the corners and 0.5 at the
    # middle of the lips, which stays dark: lit as far as 1 there (and lip-red) it was read as lip by the face
    # landmarker (`python -m teller_recipe.evaluation.portraits --corpus none --held-out 0`: giunchedi_beard gap
    # p90 0.122 → 0.119); its level lines end round where the landmarks' outline ends in a point
    radius = np.sqrt(s * s + (0.5 * (a - b) / gap) ** 2)
    # the cheeks darken what recedes toward the corners (teeth, tongue); the last teeth fade into their shadow
    corner = smoothstep((np.abs(s) - 0.5) / 0.45)
    buccal = 1 - smoothstep((np.abs(s) - 0.7) / 0.25)
    # cavity: darkest at the back (the middle of the opening), lighter toward the corners and the lips beside them
    front = smoothstep((radius - cfg.cavity_depth) / (1.0 - cfg.cavity_depth))
    # a slit under a photo's teeth is too shallow to hold the back's shadow: at its back's colour it read as a
    # black line drawn under the teeth of a smiling photo (party_glasses, obama_smile)
    front = np.maximum(front, 1 - smoothstep(synthesised / (SHADOWED_OPENING * width)))
    out = c["cavity_back"] + front[..., None] * (c["cavity_front"] - c["cavity_back"])
    # tongue: a low dome behind the lower lip, its back in the cavity's dark
    # the lower teeth show once the jaw is well open; the tongue rises above them (behind them it was hidden)
    lower_teeth = cfg.lower_teeth_height * width * smoothstep((rel_gap - cfg.lower_teeth_opening) / 0.1)
    out = _tongue(out, c["tongue"], s, floor, np.minimum(synthesised, gap), lower_teeth, rel_gap, corner, cfg)
    # teeth: lower ones (only when the jaw is well open, mostly hidden by the lower lip), then upper ones
    tooth, within, to_edge = tooth_pattern(np.abs(s), width)
    # lower teeth sit deeper in the mouth, in the upper teeth's shadow: a little darker; lit from above, they get
    # no shadow from the lower lip (a shaded lower row read as a grey band, and the landmarker took it for lip)
    rows = [("lower", floor, 0.92, False)] + ([] if mouth.has_teeth else [("upper", a, 1.0, True)])
    for name, dist, brightness, lip_shadow in rows:
        if name == "upper":
            height = np.minimum(cfg.upper_teeth_height * width, cfg.upper_teeth_max_fraction * gap)
            arch = np.sqrt(np.clip(1 - (s / 0.97) ** 2, 0, 1))
        else:
            height = lower_teeth
            arch = np.sqrt(np.clip(1 - (s / 0.65) ** 2, 0, 1))
            brightness = brightness * (1 - 0.4 * np.minimum(np.abs(s) / 0.65, 1) ** 2)  # the arch curves back
        length = height * arch * (1 - 0.1 * within**2)  # each tooth's edge is slightly rounded
        if length.max() < 0.3:
            continue
        teeth_alpha = np.clip(length - dist + 0.5, 0, 1) * buccal
        shade = brightness * (1.0 - 0.05 * tooth) * (1 - 0.5 * corner)
        # faint separations between the front teeth; the upper lip shades the teeth next to it
        shade = shade * (1 - 0.15 * np.exp(-((to_edge / 0.45) ** 2)) * (tooth < 4))
        if lip_shadow:
            shade = shade * (0.65 + 0.35 * smoothstep(dist / max(cfg.lip_shadow * width, 1e-3)))
        # shadows on teeth are warm (light bounced off lips and gums): darken blue more than red
        tinted = c["teeth"] * shade[..., None] ** np.array([1.0, 1.2, 1.45], np.float32)
        out += teeth_alpha[..., None] * (tinted - out)
    # the lips darken what is right at their edges; light falls across the mouth as across the face
    out *= (0.78 + 0.22 * smoothstep(np.minimum(a, b) / 1.2))[..., None]
    out *= (1 + 0.5 * mouth.light_gradient * s)[..., None]
    if cfg.synthesis_blur > 0:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), cfg.synthesis_blur)
    tile = mouth.grain
    ys = (np.arange(y0, y0 + out.shape[0]) % GRAIN_TILE)[:, None]
    xs = (np.arange(x0, x0 + out.shape[1]) % GRAIN_TILE)[None, :]
    out += tile[ys, xs][..., None]
    return np.clip(out, 0, 1).astype(np.float32)


def _tongue(out: np.ndarray, color: np.ndarray, s: np.ndarray, b: np.ndarray, gap: np.ndarray,
            lower_teeth: np.ndarray, rel_gap: np.ndarray, corner: np.ndarray, cfg: FrozenDict) -> np.ndarray:
    """The tongue over the cavity: a dome on the floor of the mouth `b` px below, rising `cfg.tongue_height` × the
    cavity's height `gap` above the `lower_teeth` (px) in front of it, once the lips are `cfg.tongue_opening`
    mouth widths (`rel_gap`) apart."""
    rise = lower_teeth + cfg.tongue_height * np.maximum(gap - lower_teeth, 0.0)
    top = rise * np.clip(1 - (s / TONGUE_HALF_WIDTH) ** 2, 0, 1) ** 0.8
    top *= smoothstep((rel_gap - cfg.tongue_opening) / 0.15)
    if top.max() < 0.5:
        return out
    height = b / np.maximum(top, 1e-3)  # 0 at the lower lip, 1 at the tongue's top edge
    # its front is shaded by the lower lip and teeth, its upper surface lit from above, and its top edge turns
    # away from the light into the dark behind it; its sides curve down into the cheeks' shadow
    shade = 0.42 + 0.43 * smoothstep(height / 0.75) - 0.2 * smoothstep((height - 0.8) / 0.2)
    shade *= (1 - 0.4 * (s / TONGUE_HALF_WIDTH) ** 2).clip(0, 1) * (1 - 0.5 * corner)
    shade *= 1 - 0.15 * np.exp(-((s / 0.05) ** 2)) * smoothstep((height - 0.3) / 0.4)  # the groove down its middle
    # its top edge soft over a fifth of its height: wider, lighter and edged over one pixel, the landmarker took
    # the tongue for part of the lower lip
    alpha = smoothstep((top - b) / np.maximum(0.2 * top, 0.75)) * (top > 0.3)
    return out + alpha[..., None] * (color * shade[..., None] - out)


def tooth_pattern(edge: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For |s| across the arch: tooth index from the centre, place within it (-1..1), px to its edge."""
    edges = np.asarray(TOOTH_EDGES)
    idx = np.clip(np.searchsorted(edges, edge, side="right") - 1, 0, len(edges) - 2)
    lo_e, hi_e = edges[idx], edges[idx + 1]
    within = (edge - lo_e) / (hi_e - lo_e) * 2 - 1
    to_edge = np.minimum(edge - lo_e, hi_e - edge) * width * 0.5
    return idx, within, to_edge
