"""Every example portrait, judged as a viewer would with the face landmarker on the rendered frames: the lips meet
and hide the teeth at rest whatever the photo's own mouth does, and an open vowel opens the mouth about as far as
a person's. Gap = inner-lip gap / outer eye-corner distance (0.11 ≈ 1 cm)."""

from __future__ import annotations

import numpy as np
import pytest

from teller_pipeline import rig
from teller_recipe.evaluation.evaluate import lip_gap
from teller_recipe.evaluation.portraits import CLOSED_GAP, DEFAULT_PORTRAITS

from .conftest import CHECKPOINT, EXAMPLES

PORTRAITS = [EXAMPLES / name for name in DEFAULT_PORTRAITS]
# What the bundled checkpoint reaches on a clip with ordinary pauses (`python -m teller_recipe.evaluation.portraits`:
# Grace Hopper p90 0.117, max 0.199, ratio 0.92; Obama speaking p90 0.154, max 0.243, ratio 1.21), a floor well
# above the murmur of earlier checkpoints (Grace Hopper p90 0.038, max 0.057).
GAP_P90, GAP_MAX = 0.105, 0.17
AMPLITUDE = (0.85, 1.2)  # rendered p90 / phone-implied p90
SYNC_R = 0.7
BILABIAL = 0.3  # gap at mid p/b/m over gap at mid open vowels
CLOSED_IN_SILENCE = 0.9
# A talking person measured the same way (issue 11); see test_issue_targets.
TARGET_GAP_P90, TARGET_GAP_MAX, TARGET_AMPLITUDE, TARGET_CLOSED = 0.12, 0.18, (0.85, 1.2), 0.9
KEY = {name: k for k, name in enumerate(rig.KEYPOINT_NAMES)}


def _viseme_motion(pipe, phone: str) -> np.ndarray:
    """The corpus' mouth shape of one phone as a motion latent (relative to a closed relaxed mouth)."""
    from teller_recipe.corpus import face_model, visemes

    tracks = np.array([visemes.VISEMES[phone].targets])
    tracks[:, visemes.P["closure"]] = np.clip(tracks[:, visemes.P["closure"]], 0, 1)
    neutral = face_model.Expression(*np.zeros((3, 1)))
    shape = face_model.face_state(tracks, neutral)[0] - face_model.face_state(0 * tracks, neutral)[0]
    motion = pipe.motion_encoder.neutral_motion()
    motion[: rig.NUM_KEYPOINTS] += shape
    return motion


def _render(pipe, source, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    landmarks = pipe.motion_encoder.decode(source.face, motion[None])[0]
    frame = pipe.renderer.render(source.render_state, landmarks)
    return frame, pipe.face_analyzer.largest_face(frame).points


def _teeth_share(frame: np.ndarray, points: np.ndarray) -> float:
    """Share of the pixels along the line where the lips meet (the inner-lip outline widened by ~2 mm) that look
    like teeth (bright and colourless); the lips' own highlights lie outside that band."""
    import cv2

    mask = np.zeros(frame.shape[:2], np.uint8)
    outline = rig.LIPS_INNER_UPPER + rig.LIPS_INNER_LOWER[::-1][1:-1]
    cv2.fillPoly(mask, [np.round(points[outline, :2]).astype(np.int32)], 1)
    cv2.polylines(mask, [np.round(points[outline, :2]).astype(np.int32)], True, 1)
    reach = max(1, round(0.02 * rig.inter_ocular_distance(points)))
    mask = cv2.dilate(mask, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
    pixels = frame[mask.astype(bool)].astype(np.float64)
    luma = pixels @ [0.299, 0.587, 0.114]
    chroma = pixels.max(1) - pixels.min(1)
    return float(((luma > 150) & (chroma < 45)).mean())


NOT_CLOSED_YET = {  # measured on the bundled checkpoint; strict, so a fix shows up as an unexpected pass
    "party_three_quarter": "the seam looks closed on the contact sheet, but on this scanned three-quarter smile "
                           "the landmarker reads the lips 0.054 apart",
    "party_glasses": "closed on the contact sheet; the landmarker reads 0.03 apart on this scanned broad smile",
}
NOT_OPEN_ENOUGH_YET = {  # the same, for the open vowels
    "jesper_head_down": "on this head bowed ~30° and rolled ~20° the landmarks handed to the renderer part 0.224 "
                        "on AA and 0.161 on AH, and the landmarker reads 0.142 and 0.101 on the render (0.18 and "
                        "0.12 asked)",
}


def _cases(expected_failures: dict[str, str]) -> list:
    return [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=expected_failures[p.stem]))
            if p.stem in expected_failures else p for p in PORTRAITS]


CLOSING_CASES, OPENING_CASES = _cases(NOT_CLOSED_YET), _cases(NOT_OPEN_ENOUGH_YET)


@pytest.mark.parametrize("portrait", CLOSING_CASES, ids=lambda p: p.stem)
def test_rest_pose_and_bilabials_close_the_lips_over_the_teeth(pipe, portrait):
    source = pipe.prepare_source(portrait)
    photo_gap = lip_gap(pipe.face_analyzer.largest_face(source.image).points)
    for motion in (pipe.motion_encoder.neutral_motion(), _viseme_motion(pipe, "M")):
        frame, seen = _render(pipe, source, motion)
        assert lip_gap(seen) <= CLOSED_GAP, (portrait.stem, photo_gap, lip_gap(seen))
        assert _teeth_share(frame, seen) < 0.05, portrait.stem  # a strip of teeth covers far more of the band


@pytest.mark.parametrize("portrait", OPENING_CASES, ids=lambda p: p.stem)
def test_open_vowel_opens_about_two_centimetres_with_teeth_and_a_dark_cavity(pipe, portrait):
    source = pipe.prepare_source(portrait)
    frame, seen = _render(pipe, source, _viseme_motion(pipe, "AA"))  # implied gap 0.28 (2.5 cm)
    assert 0.18 <= lip_gap(seen) <= 0.32, (portrait.stem, lip_gap(seen))
    _, ah = _render(pipe, source, _viseme_motion(pipe, "AH"))  # implied 0.20
    assert 0.12 <= lip_gap(ah) <= lip_gap(seen), (portrait.stem, lip_gap(ah))


NOT_AS_WIDE_AS_DRIVEN_YET = {  # measured on the bundled checkpoint, as NOT_CLOSED_YET
    "jesper_head_down": "reads 0.079 of the 0.109 driven (0.72) on this head bowed ~30° and rolled ~20°",
}


@pytest.mark.parametrize("portrait", _cases(NOT_AS_WIDE_AS_DRIVEN_YET), ids=lambda p: p.stem)
def test_a_centimetre_opening_reads_as_wide_as_it_is_driven(pipe, portrait):
    """Half an open vowel (about 1.2 cm, the p90 of real speech) reads as wide as the landmarks handed to the
    renderer. On closed-mouth photos it read 8-23 % smaller (the beard 0.106 of 0.138): the photo's lips parted a
    few pixels off the line where they meet, and a lip-red cavity front and tongue were read as lip."""
    source = pipe.prepare_source(portrait)
    motion = pipe.motion_encoder.neutral_motion()
    motion[: rig.NUM_KEYPOINTS] += 0.5 * (_viseme_motion(pipe, "AA") - motion)[: rig.NUM_KEYPOINTS]
    driven = lip_gap(pipe.motion_encoder.decode(source.face, motion[None])[0])
    _, seen = _render(pipe, source, motion)
    assert 0.1 <= driven <= 0.15, (portrait.stem, driven)
    assert AMPLITUDE[0] <= lip_gap(seen) / driven <= AMPLITUDE[1], (portrait.stem, driven, lip_gap(seen))


@pytest.fixture(scope="module")
def real_speech():
    from teller_recipe.evaluation.portraits import implied_gap, real_speech

    speech = real_speech()
    return speech, implied_gap(speech.audio, speech.phones)


_MEASURED: dict = {}


def _real_speech_metrics(pipe, real_speech, portrait: str) -> dict:
    from teller_recipe.evaluation.evaluate import measure, render
    from teller_recipe.evaluation.portraits import decoded_motion, group_metrics

    if portrait not in _MEASURED:
        speech, implied = real_speech
        source = pipe.prepare_source(EXAMPLES / portrait)
        with decoded_motion(pipe) as decoded:
            frames = render(pipe, source, speech.audio)
        gap = measure(pipe, source, frames).gap
        _MEASURED[portrait] = group_metrics([(speech, gap, implied)], [np.concatenate(decoded.gaps)])
    return _MEASURED[portrait]


@pytest.mark.parametrize("portrait", ["grace_hopper.jpg", "obama_speaking.jpg"])
def test_real_speech_keeps_sync_and_meets_on_bilabials(pipe, real_speech, portrait):
    """The part of the test below that holds on every portrait, also where its size or closing is an xfail."""
    m = _real_speech_metrics(pipe, real_speech, portrait)
    assert m["face_found"] == 1.0 and m["sync_r"] >= SYNC_R and m["bilabial_ratio"] <= BILABIAL, m


@pytest.mark.parametrize("portrait", ["grace_hopper.jpg", "obama_speaking.jpg"])
def test_a_photo_taken_mid_word_is_driven_as_far_as_a_closed_mouth(pipe, real_speech, portrait):
    """The motion handed to the renderer (before it and the landmarker): a photo whose lips are wide apart gets a
    mouth as large as a closed-mouth photo's (once half as large: its identity prior's landmark depth)."""
    m = _real_speech_metrics(pipe, real_speech, portrait)
    assert m["driven_p90"] >= TARGET_GAP_P90 and AMPLITUDE[0] <= m["driven_ratio"] <= AMPLITUDE[1], m
    assert m["driven_bilabial_ratio"] <= BILABIAL, m


def test_the_driven_only_evaluation_gives_what_the_rendered_one_hands_the_renderer(pipe, real_speech, tmp_path):
    """`portraits --driven-only` (the quick A/B of checkpoints, over seeds) skips rendering, not the motion: its seed 0
    is the driven measure of the full evaluation."""
    from teller_recipe.evaluation.portraits import evaluate_driven

    full = _real_speech_metrics(pipe, real_speech, "grace_hopper.jpg")
    quick = evaluate_driven(CHECKPOINT, None, tmp_path, [EXAMPLES / "grace_hopper.jpg"], seeds=1)
    real = quick["portraits"]["grace_hopper"]["real"]
    assert real["gap_p90"]["seeds"] == [full["driven_p90"]] and real["gap_max"]["seeds"] == [full["driven_max"]]
    assert "| grace_hopper | real |" in (tmp_path / "driven.md").read_text()


def test_the_rendered_evaluation_over_several_seeds_is_the_one_seed_run_per_seed(pipe, real_speech, tmp_path):
    """`portraits --seed 0 1`: each seed's run is what `--seed k` alone gives (seed 0: the measure above), and
    seeds.md reports their mean and spread, which a 7-s clip's p90 needs at the 0.12 line."""
    import json

    from teller_recipe.evaluation.portraits import main

    one = _real_speech_metrics(pipe, real_speech, "grace_hopper.jpg")
    main(["--checkpoint", str(CHECKPOINT), "--corpus", "none", "--held-out", "0", "--output", str(tmp_path),
          "--portraits", str(EXAMPLES / "grace_hopper.jpg"), "--seed", "0", "1"])
    summary = json.loads((tmp_path / "seeds.json").read_text())
    p90 = summary["portraits"]["grace_hopper"]["real"]["gap_p90"]
    assert p90["seeds"][0] == one["gap_p90"] and p90["seeds"][1] != p90["seeds"][0], p90  # the seed reaches the model
    seed_1 = json.loads((tmp_path / "seed_1" / "metrics.json").read_text())
    assert seed_1["seed"] == 1 and seed_1["portraits"]["grace_hopper"]["real"]["gap_p90"] == p90["seeds"][1]
    assert p90["mean"] == pytest.approx(np.mean(p90["seeds"])) and p90["std"] > 0
    assert "| grace_hopper | real |" in (tmp_path / "seeds.md").read_text()


# obama_speaking, photographed mid-word, read 1.21 of what the phones ask with the previous checkpoint (1.14 now)
@pytest.mark.parametrize("portrait", ["grace_hopper.jpg", "obama_speaking.jpg"])
def test_real_speech_moves_the_mouth_like_a_person(pipe, real_speech, portrait):
    """Two real recordings with ordinary pauses, default settings: the mouth opens about a centimetre and more on
    open vowels, about as far as the phones ask, in time with them, and closes on p/b/m and in the pauses."""
    m = _real_speech_metrics(pipe, real_speech, portrait)
    assert m["face_found"] == 1.0
    assert m["gap_p90"] >= GAP_P90 and m["gap_max"] >= GAP_MAX, m
    assert AMPLITUDE[0] <= m["amplitude_ratio"] <= AMPLITUDE[1], m
    assert m["sync_r"] >= SYNC_R, m
    assert m["bilabial_ratio"] <= BILABIAL, m
    assert m["closed_in_silence"] >= CLOSED_IN_SILENCE, m


AT_THE_LINE = ("rendered real-speech p90 0.111 at seed 0 (issue 11 asks 0.12), driven 0.121; three refiners on the "
               "bundled generator (train_refiner.py --seed 0/1/2) drive it to 0.121/0.119/0.121 before rendering, the "
               "previous checkpoint's refiner 0.128 (training/README.md, 'Mouth size on held-out voices')")


@pytest.mark.parametrize("portrait", [
    pytest.param("grace_hopper.jpg", marks=pytest.mark.xfail(strict=True, reason=AT_THE_LINE)),
    "obama_speaking.jpg",
])
def test_issue_targets(pipe, real_speech, portrait):
    m = _real_speech_metrics(pipe, real_speech, portrait)
    assert m["gap_p90"] >= TARGET_GAP_P90 and m["gap_max"] >= TARGET_GAP_MAX, m
    assert TARGET_AMPLITUDE[0] <= m["amplitude_ratio"] <= TARGET_AMPLITUDE[1], m
    assert m["closed_in_silence"] >= TARGET_CLOSED, m


@pytest.mark.parametrize("portrait", ["obama_smile.jpg", "party_glasses.jpg"])
def test_faces_unlike_the_training_faces_talk_as_wide(pipe, real_speech, portrait):
    """A broad toothy smile, a turned head behind glasses: their identity priors lie far outside the synthetic
    corpus' faces, and before the generator clamped them to the training range it answered with a nearly shut
    mouth (p90 0.059 and 0.063, ratio 0.46 and 0.49). Now they open at least as far as the phones ask, in time
    (party glasses overshoots: ratio 1.25 over the issue's 1.2, which the portraits evaluation reports)."""
    m = _real_speech_metrics(pipe, real_speech, portrait)
    assert m["gap_p90"] >= GAP_P90 and m["gap_max"] >= GAP_MAX, m
    assert m["amplitude_ratio"] >= AMPLITUDE[0], m
    assert m["sync_r"] >= SYNC_R and m["bilabial_ratio"] <= BILABIAL, m


def test_generator_reads_identity_priors_within_the_training_range(pipe):
    import torch

    generator = pipe.motion_generator
    low, high = generator.identity_prior_low, generator.identity_prior_high
    # fitted by training/train_generator.py on priors without their depth (`in_image_plane`), whose range is [0, 0]
    in_plane = low.reshape(rig.NUM_KEYPOINTS, 3)[:, :2], high.reshape(rig.NUM_KEYPOINTS, 3)[:, :2]
    assert torch.isfinite(low).all() and (low <= high).all() and (in_plane[0] < in_plane[1]).all()
    far = 100 * torch.randn(1, rig.NUM_KEYPOINTS, 3, generator=torch.Generator().manual_seed(0))
    inside = torch.clamp(far.flatten(1), low, high).reshape(far.shape)
    assert torch.equal(generator.embed_prefix(far), generator.embed_prefix(inside))


@pytest.fixture(scope="module")
def held_out_corpus(tmp_path_factory):
    """The evaluation's held-out test voices (never in training), built as the README says (a few seconds)."""
    import shutil

    from teller_recipe.corpus.build_corpus import build

    if not (shutil.which("flite") and shutil.which("espeak-ng")):
        pytest.skip("flite and espeak-ng make the held-out voices")
    folder = tmp_path_factory.mktemp("held_out")
    build(folder / "corpus", hours=0.03, voices=["espeak-ng/f3", "flite/rms"], cache_dir=folder / "cache")
    return folder / "corpus"


@pytest.fixture(scope="module")
def held_out_voices(held_out_corpus):
    from teller_recipe.evaluation.portraits import HELD_OUT_UTTERANCES, held_out_speech, implied_gap

    speeches = held_out_speech(held_out_corpus, HELD_OUT_UTTERANCES)
    return [(speech, implied_gap(speech.audio, speech.phones)) for speech in speeches]


def test_held_out_voices_close_the_lips_on_bilabials(pipe, held_out_voices):
    """Voices the model never heard, on Grace Hopper: the lips it drives meet at the middle of p, b and m, open on
    open vowels about as far as the phones ask, in time with them."""
    from teller_recipe.evaluation.evaluate import render
    from teller_recipe.evaluation.portraits import decoded_motion, group_metrics

    source = pipe.prepare_source(EXAMPLES / "grace_hopper.jpg")
    items = []
    for speech, implied in held_out_voices:
        with decoded_motion(pipe) as decoded:
            render(pipe, source, speech.audio)
        items.append((speech, np.concatenate(decoded.gaps), implied))
    m = group_metrics(items)
    assert m["bilabial_frames"] >= 20, m  # enough p, b and m to judge
    assert m["bilabial_ratio"] <= BILABIAL, m
    assert m["sync_r"] >= SYNC_R and AMPLITUDE[0] <= m["amplitude_ratio"] <= AMPLITUDE[1], m


def test_the_corpus_motion_opens_as_far_as_its_phones_ask_whatever_the_resting_face(pipe, held_out_corpus, monkeypatch):
    """The corpus' own motion, decoded onto a closed-mouth photo as generated motion is, opens as far as the phones
    ask times its speaker's articulation gain, whether that speaker's face rests closed or with parted lips: the
    lips' motion is an offset from the resting face with its lips closed (before, a parted resting face took its
    own opening off every opening: 0.25-0.63 of what the phones ask; `portraits --resting-faces` reports it)."""
    from teller_recipe.evaluation.portraits import resting_faces

    monkeypatch.setattr(pipe.renderer, "render", lambda state, landmarks: state.image)  # only the motion counts
    rows = resting_faces(pipe, pipe.prepare_source(EXAMPLES / "grace_hopper.jpg"), held_out_corpus)
    assert len(rows) >= 8 and {row["resting_face"] for row in rows} - {"closed", "slight_smile"}, rows
    for row in rows:
        assert 0.8 <= row["corpus_ratio"] / row["articulation_gain"] <= 1.2, row
    assert all(np.isfinite(row["generated_ratio"]) for row in rows)
