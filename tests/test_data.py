"""The synthetic training corpus: speech engines, phones → visemes → motion, augmentation, splits, videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from teller_pipeline import rig
from teller_recipe.corpus import augment, face_model, visemes
from teller_recipe.corpus.motion_synth import SAMPLES_PER_FRAME, frame_times, synthesize_motion
from teller_recipe.corpus.phonemes import (
    PHONE_SET,
    SILENCE,
    Phone,
    ipa_chars_to_phones,
    ipa_to_arpabet,
    normalize,
)
from teller_recipe.corpus.speech import EngineUnavailable, synthesize

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "teller-base"
GRACE_HOPPER = ROOT / "examples" / "grace_hopper.jpg"
TEXT = "The juice of lemons makes fine punch. Bring me the map."


# ---------------------------------------------------------------------------------------------- engines
@pytest.mark.parametrize(
    "voice",
    [
        "piper/joe",
        "espeak-ng/m3",
        "espeak-ng/f2",
        "flite/kal",
        "flite/slt",
        "festival/slt_hts",
        "festival/kal_diphone",
    ],
)
def test_engine_gives_audio_and_phones_covering_it(voice, tmp_path):
    try:
        speech = synthesize(voice, TEXT, np.random.default_rng(0), cache_dir=tmp_path)
    except EngineUnavailable as error:
        pytest.skip(str(error))
    audio, phones = speech.audio, speech.phones
    assert audio.dtype == np.float32 and audio.ndim == 1 and 2.0 < speech.duration < 8.0
    assert phones[0].start == 0.0 and phones[-1].end == pytest.approx(speech.duration)
    for a, b in zip(phones, phones[1:], strict=False):
        assert a.end == pytest.approx(b.start) and b.end > b.start
    assert {p.phone for p in phones} <= set(PHONE_SET)
    assert phones[0].phone == SILENCE or phones[0].duration < 0.05
    names = [p.phone for p in phones]
    for expected in ("JH", "UW", "M", "P"):  # "juice", "lemons", "punch", "map"
        assert expected in names
    # The phones are where the sound is: speech is ~30 dB louder than what the engine called pauses.
    rate, level = 16000, []
    for kind in (True, False):
        chunks = [
            audio[int(p.start * rate) : int(p.end * rate)]
            for p in phones
            if (p.phone == SILENCE) == kind and p.duration > 0.04
        ]
        level.append(10 * np.log10(np.mean(np.concatenate(chunks) ** 2) + 1e-12))
    assert level[1] - level[0] > 25


def test_ipa_conversion():
    assert ipa_to_arpabet("tʃ") == ["CH"]
    assert ipa_to_arpabet("ɑːɹ") == ["AA", "R"]
    assert ipa_to_arpabet("ˈaɪ") == ["AY"]
    assert ipa_to_arpabet("ʉː") == ["UW"]
    # Piper's per-code-point timing: stress goes to the vowel, length to the vowel, word gaps are shared.
    chars = [
        ("^", 0.0, 0.1),
        ("h", 0.1, 0.15),
        ("ˈ", 0.15, 0.17),
        ("a", 0.17, 0.25),
        ("ɪ", 0.25, 0.3),
        (" ", 0.3, 0.34),
        ("m", 0.34, 0.4),
        ("i", 0.4, 0.45),
        ("ː", 0.45, 0.5),
        (".", 0.5, 0.6),
        ("$", 0.6, 0.7),
    ]
    phones = ipa_chars_to_phones(chars)
    assert [p.phone for p in phones] == [SILENCE, "HH", "AY", "M", "IY", SILENCE, SILENCE]
    assert phones[2].start == pytest.approx(0.15) and phones[2].end == pytest.approx(0.32)
    merged = normalize(phones, 0.7)
    assert [p.phone for p in merged][-1] == SILENCE and len(merged) == 6


def test_flite_and_festival_parsers():
    from teller_recipe.corpus.speech.festival import parse_segs
    from teller_recipe.corpus.speech.flite import parse_psdur

    phones = parse_psdur("pau:0.184 dh:0.228 ax:0.258 pau:0.4\n")
    assert [p.phone for p in phones] == [SILENCE, "DH", "AH", SILENCE]
    assert phones[1].start == pytest.approx(0.184) and phones[-1].end == pytest.approx(0.4)
    phones = parse_segs("#\n0.1650 100 pau\n0.2100 100 dh\n0.2500 100 ax\n")
    assert [p.phone for p in phones] == [SILENCE, "DH", "AH"]


def _message(*fields: tuple[int, bytes]) -> bytes:
    from teller_recipe.corpus.speech.piper import _length_delimited

    return b"".join(_length_delimited(number, payload) for number, payload in fields)


def test_piper_duration_output_patch():
    from teller_recipe.corpus.speech.piper import _fields, add_duration_output

    ceil = _message((1, b"x"), (2, b"durations"), (4, b"Ceil"))
    other = _message((1, b"durations"), (2, b"audio"), (4, b"Mul"))
    graph = _message((1, ceil), (1, other), (12, _message((1, b"audio"))))
    model = b"\x08\x07" + _message((7, graph))  # ir_version = 7, then the graph
    patched = add_duration_output(model)

    def outputs(data: bytes) -> list[bytes]:
        (g,) = [p for n, _, _, _, p in _fields(memoryview(data)) if n == 7]
        return [bytes(q) for n, _, _, _, p in _fields(g) if n == 12 for m, _, _, _, q in _fields(p) if m == 1]

    assert outputs(model) == [b"audio"]
    assert outputs(patched) == [b"audio", b"durations"]
    assert patched.startswith(b"\x08\x07")
    assert add_duration_output(patched) == patched  # already patched: unchanged


# ---------------------------------------------------------------------------------------------- visemes
PHONES = [
    Phone(0.0, 0.5, SILENCE),
    Phone(0.5, 0.75, "AA"),
    Phone(0.75, 0.84, "M"),
    Phone(0.84, 1.08, "AA"),
    Phone(1.08, 1.16, "P"),
    Phone(1.16, 1.36, "IY"),
    Phone(1.36, 1.46, "F"),
    Phone(1.46, 1.7, "AO"),
    Phone(1.7, 2.4, SILENCE),
]


def _fake_audio(phones: list[Phone], duration: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    audio = np.zeros(int(round(duration * 25)) * SAMPLES_PER_FRAME, np.float32)
    for p in phones:
        if p.phone != SILENCE:
            audio[int(p.start * 16000) : int(p.end * 16000)] = 0.2 * rng.normal(
                size=int(p.end * 16000) - int(p.start * 16000)
            )
    return audio


def _opening_at(motion, t: float) -> float:
    return float(np.interp(t, frame_times(len(motion.mouth_opening)), motion.mouth_opening))


@pytest.mark.parametrize("seed", range(6))
def test_mouth_opens_on_vowels_and_closes_on_bilabials_and_pauses(seed):
    motion = synthesize_motion(_fake_audio(PHONES, 2.4), PHONES, np.random.default_rng(seed))
    vowel = _opening_at(motion, 0.62)
    assert vowel > 0.14  # a wide "aa": ~1.7 cm of inner-lip gap (centre 2 cm) over ~8.9 cm between the eyes
    assert _opening_at(motion, 0.795) < 0.15 * vowel  # "m"
    assert _opening_at(motion, 1.12) < 0.15 * vowel  # "p"
    assert _opening_at(motion, 2.2) < 0.012  # relaxed closed mouth in a pause (lips together)
    assert _opening_at(motion, 1.58) > 0.5 * vowel  # "ao"
    t = frame_times(len(motion.silence))
    assert motion.silence[t > 2.0].all() and not motion.silence[(t > 0.45) & (t < 1.8)].any()


@pytest.mark.parametrize("seed", range(6))
def test_motion_is_continuous_and_starts_from_the_photo(seed):
    motion = synthesize_motion(_fake_audio(PHONES, 2.4), PHONES, np.random.default_rng(seed))
    features = motion.features
    assert features.shape == (60, 69) and features.dtype == np.float32
    assert np.abs(features[0]).max() < 0.05  # frame 0 is (almost) the photo itself
    # No jumps: a bilabial release into a wide vowel opens the lips fast (the aperture's speed reaches ~30 cm/s
    # in talkers), still < ~1.3 cm of centre gap per 40 ms frame.
    assert np.abs(np.diff(motion.mouth_opening)).max() < 0.13
    keypoints = features[:, :63].reshape(-1, 21, 3)
    assert np.linalg.norm(np.diff(keypoints, axis=0), axis=-1).max() < 1.0  # cm per frame: lower lip ≤ 25 cm/s
    assert np.degrees(np.abs(np.diff(features[:, 63:66], axis=0))).max() < 1.0  # degrees per frame
    assert np.degrees(np.abs(features[:, 63:66])).max() < 6.0  # a few degrees at most
    # Blinks are not part of the training motion: eyelids move only a little (squint, brows).
    lids = [rig.KEYPOINT_NAMES.index(n) for n in rig.KEYPOINT_NAMES if "eyelid" in n]
    assert np.abs(keypoints[:, lids]).max() < 0.15


def test_mouth_anticipates_a_vowel():
    phones = [Phone(0.0, 0.6, SILENCE), Phone(0.6, 0.9, "AA"), Phone(0.9, 1.6, SILENCE)]
    tracks, times = visemes.articulation(phones, 1.6)
    jaw = tracks[:, visemes.P["jaw"]]
    at = lambda t: float(np.interp(t, times, jaw))  # noqa: E731
    assert at(0.3) < 0.02  # still closed well before
    assert at(0.55) > 0.15 * at(0.75)  # already opening 50 ms before the sound
    assert at(0.45) > at(0.3) + 0.01  # and 150 ms before
    assert np.all(np.diff(jaw[(times > 0.3) & (times < 0.7)]) >= -1e-9)  # rising smoothly into the vowel


def test_identity_prior_is_the_photo():
    kinds = set()
    for seed in range(40):
        motion = synthesize_motion(_fake_audio(PHONES, 2.4), PHONES, np.random.default_rng(seed))
        info = motion.info
        kinds.add(info["resting_face"])
        prior = motion.identity_prior
        assert prior.shape == (21, 3) and np.abs(prior).max() < 2.5
        photo_opening = face_model.mouth_opening(prior)
        assert info["resting_opening"] == pytest.approx(photo_opening, abs=1e-3)
        # The motion starts at zero on the photo's face with its lips closed, as the runtime decodes it, so a
        # photo's parted lips add nothing to (and take nothing from) what the phones ask.
        assert motion.mouth_opening[0] < 0.005
        if info["resting_face"] == "open_smile":
            assert photo_opening > 0.04 and motion.mouth_opening[-1] < 0.012  # closes in the pause
    assert kinds == set(face_model.RESTING_KINDS)


def test_face_model_constants_match_the_canonical_mesh():
    from teller_pipeline.face_analysis import find_face_landmarker_model, load_canonical_mesh

    try:
        mesh = load_canonical_mesh(find_face_landmarker_model())
    except FileNotFoundError as error:
        pytest.skip(str(error))
    v = mesh.vertices
    assert v[14, 1] - v[13, 1] == pytest.approx(face_model.CANONICAL_INNER_LIP_GAP, abs=1e-4)
    assert rig.inter_ocular_distance(v) == pytest.approx(face_model.CANONICAL_INTER_OCULAR, abs=1e-4)
    assert rig.mouth_opening(v) > 0.05 and face_model.mouth_opening(face_model.CLOSED_MOUTH) == 0.0


# ---------------------------------------------------------------------------------------------- augmentation
def test_augmentation_keeps_length_and_changes_the_signal():
    rng = np.random.default_rng(0)
    speech = _fake_audio(PHONES, 2.4)
    changed = 0
    for seed in range(10):
        out, description = augment.augment(speech, np.random.default_rng(seed))
        again, _ = augment.augment(speech, np.random.default_rng(seed))
        assert out.shape == speech.shape and out.dtype == np.float32 and np.abs(out).max() <= 1.0
        assert np.array_equal(out, again)  # seeded
        assert "gain(" in description
        assert not np.allclose(out, speech)
        if ";" in description:  # more than a level change: the waveform itself differs
            normalised = out / (np.abs(out).max() + 1e-9) - speech / np.abs(speech).max()
            assert np.abs(normalised).max() > 1e-3
            changed += 1
    assert changed >= 5
    # Each transform on its own keeps the timing.
    impulse = np.zeros(16000, np.float32)
    impulse[8000] = 1.0
    for transformed in (
        augment.reverberate(impulse, rng, 0.5, 3.0),
        augment.resample_round_trip(impulse, 8000),
        augment.telephone(impulse, rng),
    ):
        assert transformed.shape == impulse.shape and abs(int(np.argmax(np.abs(transformed))) - 8000) <= 2
    noisy = augment.add_noise(speech.astype(np.float64), rng, 10.0, "pink")
    speech_power = augment._speech_power(speech)
    noise_power = np.mean((noisy - speech) ** 2)
    assert 10 * np.log10(speech_power / noise_power) == pytest.approx(10.0, abs=0.5)
    phone_line = augment.telephone(rng.normal(size=16000), rng)
    spectrum = np.abs(np.fft.rfft(phone_line)) ** 2
    assert spectrum[5000:].sum() < 0.01 * spectrum.sum()  # nothing above ~4 kHz (bins are 1 Hz)


# ---------------------------------------------------------------------------------------------- corpus
def test_text_source_has_thousands_of_sentences():
    from teller_recipe.corpus.text import load_sentences

    try:
        sentences = load_sentences()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    assert len(sentences) >= 3000 and len(set(sentences)) == len(sentences)
    assert all(4 <= len(s.split()) <= 25 for s in sentences)


def test_tiny_corpus_holds_out_whole_voices(tmp_path):
    from teller_recipe.corpus.build_corpus import build
    from teller_recipe.corpus.corpus import HELD_OUT

    voices = ["espeak-ng/m1", "espeak-ng/m7", "espeak-ng/f3", "flite/kal16", "flite/awb", "flite/rms"]
    try:
        summary = build(tmp_path / "corpus", voices=voices, tiny=True, cache_dir=tmp_path / "cache")
    except (EngineUnavailable, FileNotFoundError) as error:
        pytest.skip(str(error))
    from datasets import load_from_disk

    corpus = load_from_disk(str(tmp_path / "corpus"))
    assert set(corpus) == {"train", "validation", "test"} and not summary["failures"]
    voices_in = {split: set(corpus[split]["voice"]) for split in corpus}
    assert voices_in["validation"] == set(HELD_OUT["validation"])
    assert voices_in["test"] == set(HELD_OUT["test"])
    held = set(HELD_OUT["validation"]) | set(HELD_OUT["test"])
    assert voices_in["train"] and not voices_in["train"] & held
    texts = {split: set(corpus[split]["text"]) for split in corpus}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    row = corpus["train"].with_format("numpy")[0]
    frames = len(row["motion"])
    assert row["motion"].shape == (frames, 69) and row["identity_prior"].shape == (21, 3)
    assert len(row["audio"]) == frames * SAMPLES_PER_FRAME and row["audio"].dtype == np.float32
    assert len(row["mouth_opening"]) == len(row["silence"]) == frames
    assert row["phonemes"]["end"][-1] == pytest.approx(frames / 25, abs=1e-3)
    assert set(json.loads(row["synthesis"])) >= {"seed", "resting_face", "rate"}
    assert (tmp_path / "corpus" / "README.md").is_file()


# ---------------------------------------------------------------------------------------------- real videos
def test_video_to_motion_recovers_rendered_motion(tmp_path):
    """Render a clip with known motion through the pipeline, track it back, compare."""
    try:
        from teller_pipeline import TellerPipeline
    except ImportError as error:
        pytest.skip(f"the pipeline is not importable yet: {error}")
    if not (CHECKPOINT / "model_index.json").is_file():
        pytest.skip(f"{CHECKPOINT} is not built yet")
    import torch

    from teller_pipeline.motion import features_to_motion
    from teller_pipeline.video import write_mp4
    from teller_recipe.corpus.video_to_motion import video_to_motion

    pipe = TellerPipeline.from_pretrained(CHECKPOINT)
    source = pipe.prepare_source(GRACE_HOPPER)
    known = synthesize_motion(_fake_audio(PHONES, 2.4), PHONES, np.random.default_rng(1))
    landmarks = pipe.motion_encoder.decode(source.face, features_to_motion(torch.from_numpy(known.features)))
    frames = [pipe.renderer.render(source.render_state, points) for points in landmarks]
    clip = write_mp4(tmp_path / "clip.mp4", frames, 25, _fake_audio(PHONES, 2.4), 16000)
    recovered = video_to_motion(clip, analyzer=pipe.face_analyzer, motion_encoder=pipe.motion_encoder)
    got, want = recovered["motion"], known.features
    assert got.shape == want.shape and recovered["identity_prior"].shape == (21, 3)
    assert np.abs(recovered["identity_prior"] - source.identity_prior).max() < 0.3

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    chin = 3 * rig.KEYPOINT_NAMES.index("chin") + 1
    lower_lip = 3 * rig.KEYPOINT_NAMES.index("lower_lip_inner") + 1
    assert corr(got[:, chin], want[:, chin]) > 0.7
    assert corr(got[:, lower_lip], want[:, lower_lip]) > 0.6
    assert corr(got[:, 64], want[:, 64]) > 0.7  # yaw
    assert np.degrees(np.abs(got[:, 63:66] - want[:, 63:66])).mean() < 1.5
    assert corr(recovered["mouth_opening"], known.mouth_opening) > 0.5
