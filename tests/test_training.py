"""The starter recipe at toy scale: a tiny corpus → whisper features → tokenizer, generator and refiner trained
for a few steps with `accelerate launch` (checkpoint rotation, resuming, metrics) → a checkpoint the pipeline
loads and animates with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from teller_pipeline.models.motion_generator import MotionGenerator
from teller_pipeline.models.motion_tokenizer import MotionTokenizer
from teller_recipe.corpus.speech import EngineUnavailable
from teller_recipe.training.utils import load_features

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
          "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _run(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def _training_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its functions must be importable by name in worker processes
    spec.loader.exec_module(module)
    return module


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    from teller_recipe.corpus.build_corpus import build

    root = tmp_path_factory.mktemp("recipe")
    voices = ["espeak-ng/m1", "espeak-ng/m7", "espeak-ng/f3", "flite/kal16", "flite/awb", "flite/rms"]
    try:
        build(root / "corpus", voices=voices, tiny=True, cache_dir=root / "cache")
    except (EngineUnavailable, FileNotFoundError) as error:
        pytest.skip(str(error))
    _run(sys.executable, "training/precompute_features.py", "--corpus", root / "corpus", "--output",
         root / "features", "--workers", "1")
    return root / "features"


def test_recipe_trains_resumes_and_builds_a_working_checkpoint(features, tmp_path, monkeypatch):
    from teller_pipeline import TellerPipeline, TemporalRefiner

    common = ["--features", features, "--size", "tiny", "--train_batch_size", "8", "--lr_warmup_steps", "2",
              "--validation_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
              "--resume_from_checkpoint", "latest"]
    tokenizer = tmp_path / "tokenizer"
    _run(*LAUNCH, "training/train_tokenizer.py", *common, "--output_dir", tokenizer, "--max_train_steps", "6")
    # Rotation keeps the newest two; a longer run resumes from the newest instead of starting again.
    assert sorted(p.name for p in tokenizer.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    log = _run(*LAUNCH, "training/train_tokenizer.py", *common, "--output_dir", tokenizer, "--max_train_steps", "8")
    assert "resuming from" in log and "checkpoint-6" in log
    assert sorted(p.name for p in tokenizer.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    # Validation every 4 steps and at the end of each run, the resumed run appending to the same log.
    assert [m["step"] for m in _metrics(tokenizer) if "val_expression_rmse_cm" in m] == [4, 6, 8]

    generator = tmp_path / "generator"
    _run(*LAUNCH, "training/train_generator.py", *common, "--output_dir", generator, "--max_train_steps", "4",
         "--tokenizer", tokenizer / "motion_tokenizer")
    assert any("val_token_accuracy" in m for m in _metrics(generator))

    refiner = tmp_path / "refiner"
    _run(*LAUNCH, "training/train_refiner.py", *common, "--output_dir", refiner, "--max_train_steps", "4",
         "--tokenizer", tokenizer / "motion_tokenizer", "--generator", generator / "motion_generator",
         "--generated_utterances", "4", "--workers", "2", "--generated_cache", tmp_path / "kept")
    assert len(list((tmp_path / "kept").glob("*.pt"))) == 2  # the train and validation splits' samples, kept
    gain = TemporalRefiner.from_pretrained(refiner / "temporal_refiner").config.expression_gain
    assert 1.0 <= gain <= 1.5 and gain == _metrics(refiner)[-1]["expression_gain"]
    # The refiner's training motion is the same however many processes generate it.
    train_refiner = _training_script("train_refiner")
    data = {k: v[:3] for k, v in load_features(features, "train").items()}
    models = (MotionGenerator.from_pretrained(generator / "motion_generator"),
              MotionTokenizer.from_pretrained(tokenizer / "motion_tokenizer"))
    one, two = (train_refiner.generated_motion(*models, data, seed=0, workers=w) for w in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    # Kept samples (--generated_cache): a later run with the same generator, utterances and seed loads them.
    cache = tmp_path / "samples"
    kept = train_refiner.cached_generated_motion(str(cache), *models, data, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(kept, one, strict=True)) and len(list(cache.glob("*.pt"))) == 1
    monkeypatch.setattr(train_refiner, "generated_motion", None)  # sampling again would fail
    again = train_refiner.cached_generated_motion(str(cache), *models, data, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again, one, strict=True))
    with pytest.raises(TypeError):  # another seed is not what was kept
        train_refiner.cached_generated_motion(str(cache), *models, data, seed=1)

    trained = tmp_path / "trained"
    trained.mkdir()
    for part in (tokenizer / "motion_tokenizer", generator / "motion_generator", refiner / "temporal_refiner"):
        (trained / part.name).symlink_to(part)
    _run(sys.executable, "-m", "teller_recipe.conversion.build_checkpoint", "--output", tmp_path / "checkpoint",
         "--trained", trained, "--size", "tiny")
    pipe = TellerPipeline.from_pretrained(str(tmp_path / "checkpoint"))
    speech = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    video = pipe(ROOT / "examples" / "grace_hopper.jpg", speech, max_size=128)
    assert len(video.frames) >= 25 and max(video.frames.shape[1:3]) == 128



def test_refiner_gap_loss_measures_the_lip_gap_and_prefers_closed_lips_when_closing_is_likelier():
    """`lip_gap_axis` turns a feature difference into the inner-lip gap's error; with it, where the data closes the
    lips in 3 of 4 cases and opens them 1 cm in the fourth, the refiner's loss is least for closed lips, where the
    squared errors alone are least for the mean: a mouth a quarter open that never closes."""
    from teller_pipeline import rig

    train_refiner = _training_script("train_refiner")
    tokenizer = MotionTokenizer.from_pretrained(ROOT / "checkpoints" / "teller-base" / "motion_tokenizer")
    lower = rig.KEYPOINT_NAMES.index("lower_lip_inner") * 3 + 1
    upper = rig.KEYPOINT_NAMES.index("upper_lip_inner") * 3 + 1
    rest = tokenizer.normalize(torch.zeros(69))
    opened = torch.zeros(69)  # the lower lip 1 cm down, in normalised units
    opened[lower] = 1.0 / tokenizer.feature_std[lower]
    axis = train_refiner.lip_gap_axis(tokenizer, [rest.expand(40, -1), (rest + opened).expand(40, -1)], 1.0)
    spread_cm = float(torch.cat([torch.zeros(40), torch.ones(40)]).std())
    assert float(opened @ axis) == pytest.approx(1.0 / spread_cm, rel=1e-4)
    raised = torch.zeros(69)  # the upper lip 0.5 cm up opens the mouth by as much
    raised[upper] = -0.5 / tokenizer.feature_std[upper]
    assert float(raised @ axis) == pytest.approx(0.5 / spread_cm, rel=1e-4)

    target = rest.expand(4, 6, 69).clone()
    target[3] += opened  # closed, closed, closed, open
    weights = train_refiner.lip_weights(4.0, 69)

    def loss(prediction: torch.Tensor, gap: bool) -> float:
        refined = prediction.expand(4, 6, 69)
        squared = train_refiner.refiner_loss(refined[:, 1:], target[:, 1:], refined[:, :1], weights)
        return float(squared + ((refined - target) @ axis).abs().mean() * gap)

    closed, quarter_open = rest[None, None], (rest + 0.25 * opened)[None, None]
    assert loss(quarter_open, gap=False) < loss(closed, gap=False)
    assert loss(closed, gap=True) < loss(quarter_open, gap=True)


def test_refiner_closure_term_charges_lips_left_apart_where_the_data_closes_them_and_nothing_else():
    """`lip_gap` reads the inner-lip gap in cm from normalised features; `closure_term` charges refined lips that
    stay apart where the data's meet, in units of the gap's spread, and nothing where the data opens or where the
    refined lips press tighter."""
    from teller_pipeline import rig

    train_refiner = _training_script("train_refiner")
    tokenizer = MotionTokenizer.from_pretrained(ROOT / "checkpoints" / "teller-base" / "motion_tokenizer")
    lower = rig.KEYPOINT_NAMES.index("lower_lip_inner") * 3 + 1
    closed = torch.zeros(69)
    opened = closed.clone()
    opened[lower] = 1.0  # the lower lip 1 cm down
    pressed = closed.clone()
    pressed[lower] = -0.3
    normalised = [tokenizer.normalize(x) for x in (closed, opened, pressed)]
    gap = train_refiner.lip_gap(tokenizer, [torch.stack(normalised)])
    axis, offset, spread = gap
    assert [round(float(x @ axis + offset), 4) for x in normalised] == [0.0, 1.0, -0.3]

    def term(refined: torch.Tensor, target: torch.Tensor) -> float:
        return float(train_refiner.closure_term(refined[None, None], target[None, None], gap, weight=2.0))

    c, o, p = normalised
    assert term(o, c) == pytest.approx(2.0 * 1.0 / float(spread), rel=1e-4)  # apart where the data closes
    assert term(c, o) == 0.0 and term(o, o) == 0.0  # the data opens: no charge, whatever the refiner does
    assert term(p, c) == 0.0  # pressed tighter than the data: no charge


def test_closure_gate_closes_a_portrait_lips_the_way_the_data_closes_them(features, pipe):
    """The gate's closing (`opening_model`, fitted on the tiny corpus): open data frames moved by their opening
    along the closing direction have lips that meet when decoded onto a portrait, and its eyes and brows stay put
    (the brows of these six utterances rise with the mouth: fitted on the whole face, they moved ~2.5 px)."""
    from teller_pipeline.motion import features_to_motion
    from teller_recipe.evaluation.evaluate import lip_gap

    from .conftest import EXAMPLES

    train_refiner = _training_script("train_refiner")
    tokenizer = pipe.motion_tokenizer
    data = load_features(features, "train")
    motion = [tokenizer.normalize(torch.from_numpy(m).float()) for m in data["motion"]]
    axis, offset, direction = train_refiner.opening_model(tokenizer, motion, data["mouth_opening"])
    assert float(axis @ direction) == pytest.approx(1.0, abs=1e-4)
    x = torch.cat(motion)
    wide = x[torch.from_numpy(np.concatenate(data["mouth_opening"])[: len(x)] > 0.08)][:40]
    assert len(wide) >= 10
    source = pipe.prepare_source(EXAMPLES / "grace_hopper.jpg")

    def decoded(features: torch.Tensor) -> np.ndarray:
        return np.asarray(pipe.motion_encoder.decode(source.face, features_to_motion(tokenizer.denormalize(features))))

    before = decoded(wide)
    after = decoded(wide - (wide @ axis + offset).clamp_min(0)[:, None] * direction)
    gaps_before, gaps_after = np.array([lip_gap(p) for p in before]), np.array([lip_gap(p) for p in after])
    assert np.median(gaps_before) > 0.08 and np.all(gaps_after <= 0.025), (gaps_before, gaps_after)
    upper_face = [33, 263, 159, 386, 105, 334]  # eye corners, upper lids, brows
    moved = np.abs(after[:, upper_face, :2] - before[:, upper_face, :2]).max((0, 2))
    assert moved.max() < 0.5, dict(zip(upper_face, moved, strict=True))  # px


def test_closure_gate_closes_by_its_probability_and_can_be_turned_off():
    from teller_pipeline.models.temporal_refiner import TemporalRefiner

    refiner = TemporalRefiner(closure_gate=True, closure_threshold=0.5).eval()
    refiner.lip_opening_axis[3] = 1.0
    refiner.closing_direction[3] = 1.0
    refined = torch.zeros(1, 5, 69)
    refined[..., 3] = 2.0  # an opening of 2
    logits = torch.logit(torch.tensor([[0.2, 0.5, 0.75, 0.999999, 1.0]]))
    out = refiner.close_lips(refined, logits)
    assert torch.allclose(out[0, :, 3], torch.tensor([2.0, 2.0, 1.0, 0.0, 0.0]), atol=1e-4)
    assert torch.equal(out[..., :3], refined[..., :3]) and torch.equal(out[..., 4:], refined[..., 4:])
    refiner.register_to_config(closure_threshold=1.0)  # off
    assert torch.equal(refiner.close_lips(refined, logits), refined)


def test_closure_gate_closes_only_for_two_frames_or_more_inside_a_slice():
    """A p, b or m closes the lips for two frames or more; one frame above the threshold amid open ones is not a
    closure (it snapped the lips shut mid-vowel). At the slice's edges the next or previous frames are unknown
    (streaming), so a frame there may start or end a closure."""
    from teller_pipeline.models.temporal_refiner import TemporalRefiner

    refiner = TemporalRefiner(closure_gate=True, closure_threshold=0.5, closure_min_frames=2).eval()
    refiner.lip_opening_axis[3] = 1.0
    refiner.closing_direction[3] = 1.0
    refined = torch.zeros(3, 5, 69)
    refined[..., 3] = 2.0
    p = torch.tensor([[0.2, 0.2, 0.999999, 0.2, 0.2],  # one frame, inside: stays open
                      [0.2, 0.999999, 0.999999, 0.2, 0.2],  # two frames: close
                      [0.999999, 0.2, 0.2, 0.2, 0.999999]])  # at the edges: close
    out = refiner.close_lips(refined, torch.logit(p))[..., 3]
    assert torch.allclose(out, torch.tensor([[2.0, 2, 2, 2, 2], [2, 0, 0, 2, 2], [0, 2, 2, 2, 0]]), atol=1e-4)
    refiner.register_to_config(closure_min_frames=1)
    assert torch.allclose(refiner.close_lips(refined, torch.logit(p))[0, :, 3], torch.tensor([2.0, 2, 0, 2, 2]),
                          atol=1e-4)


def test_closure_gate_learns_in_its_own_layer_and_leaves_the_regression_alone():
    """Trained through the refiner's layers, the gate's cross-entropy made the mouth smaller on real speech (three
    seeds, training/README.md, "A closure gate"); it reads their features detached, so only its own layer learns."""
    from teller_pipeline.models.temporal_refiner import TemporalRefiner

    torch.manual_seed(0)
    refiner = TemporalRefiner(closure_gate=True)
    _, logits = refiner.regress(torch.randn(2, 10, 69), torch.randn(2, 5, 69), torch.randn(2, 10, 512))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    learned = {name for name, p in refiner.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert learned == {"closure.weight", "closure.bias"}
