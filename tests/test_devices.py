"""The neural parts run on any device: a GPU Space moves them to CUDA, this machine has none.

So the neural components go to `meta` (shapes, no data) while a torch function mode fails on what a GPU would fail
on: an operation whose tensors, or whose random generator, sit on different devices; and on what a GPU would pay
for: a tensor the runtime creates without saying on which device. The geometric parts (motion encoder, renderer)
compute in numpy on the CPU by design; what comes back to them from `meta` comes back as zeros.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import teller_pipeline
from teller_pipeline import TellerPipeline
from teller_pipeline.models.temporal_refiner import refine_causally
from teller_pipeline.streaming import FPS

from .conftest import CHECKPOINT, GRACE_HOPPER

NEURAL_COMPONENTS = ("audio_encoder", "motion_generator", "motion_tokenizer", "temporal_refiner")
DEVICE = torch.device("meta")

_FACTORIES = {
    torch.arange, torch.empty, torch.eye, torch.full, torch.linspace, torch.ones, torch.rand, torch.randint,
    torch.randn, torch.tensor, torch.zeros,
}
_TRANSFERS = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.copy_}  # move data between devices on purpose
_RUNTIME = Path(teller_pipeline.__file__).parent
_HERE = Path(__file__)
_REAL_GENERATOR = torch.Generator


class _GeneratorType(type(_REAL_GENERATOR)):
    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, _REAL_GENERATOR)


class _ReportedGenerator(_REAL_GENERATOR, metaclass=_GeneratorType):
    """`torch.Generator` while a test runs: torch makes no generator for `meta`, so this is a CPU generator that
    reports the device it was made for (for the guard to check; meta tensors hold no numbers to draw)."""

    def __new__(cls, device: str | torch.device = "cpu"):
        generator = super().__new__(cls)
        generator.reported_device = torch.device(device)
        return generator

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()

    @property
    def device(self) -> torch.device:
        return self.reported_device


def _caller() -> tuple[str, int]:
    """File and line of the innermost frame outside torch and this test."""
    frame = sys._getframe(2)
    torch_root = Path(torch.__file__).parent
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path != _HERE and torch_root not in path.parents:
            return str(path), frame.f_lineno
        frame = frame.f_back
    return "?", 0


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class NeuralDeviceGuard(TorchFunctionMode):
    """Raises where a GPU run would fail (devices mixed in one operation, a generator on another device than its
    tensors) or copy needlessly (a tensor made by the runtime on the default device); copies out of `meta` give
    zeros."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and "device" not in kwargs:
            path, line = _caller()
            if _RUNTIME in Path(path).parents:
                raise AssertionError(f"{path}:{line} makes a tensor with torch.{func.__name__} on the default device")
        if func in _TRANSFERS:
            source = args[0]
            if func is torch.Tensor.cpu:
                target, dtype = torch.device("cpu"), None
            elif func is torch.Tensor.to:
                target, dtype = torch._C._nn._parse_to(*args[1:], **kwargs)[:2]
            else:
                target, dtype = None, None
            if source.device.type == "meta" and target is not None and target.type == "cpu":
                return torch.zeros(source.shape, dtype=dtype or source.dtype)  # meta holds no data
            return func(*args, **kwargs)
        # 0-d CPU tensors are scalars, which CUDA kernels accept beside device tensors.
        devices = {t.device for t in _tensors((args, kwargs)) if t.dim() or t.device.type != "cpu"}
        generator = kwargs.get("generator")
        if generator is not None:
            devices.add(torch.device(generator.device))
        if len(devices) > 1:
            path, line = _caller()
            name = getattr(func, "__name__", func)
            raise AssertionError(f"{path}:{line}: {name} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


@pytest.fixture
def meta_pipe(monkeypatch):
    """A pipeline of its own (the shared fixture must stay on the CPU) with its neural parts on `meta`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = TellerPipeline.from_pretrained(CHECKPOINT)
    source = pipe.prepare_source(GRACE_HOPPER, max_size=256)  # face analysis: CPU, before anything moves
    for name in NEURAL_COMPONENTS:
        getattr(pipe, name).to(DEVICE)
    monkeypatch.setattr(torch, "Generator", _ReportedGenerator)
    return pipe, source


def test_session_runs_with_the_neural_parts_off_the_cpu(meta_pipe, speech):
    """4 s of speech: more slices than the generator's context holds, so its re-encoding runs too."""
    pipe, source = meta_pipe
    assert pipe.motion_generator.config.max_context_slices * 0.2 < 4.0
    with NeuralDeviceGuard():
        session = pipe.start_session(source, seed=3)
        assert session.torch_generator.device == DEVICE  # sampling draws where the probabilities are
        audio = np.concatenate([speech, speech])[:64000]
        frames = []
        for start in range(0, len(audio), 2500):
            frames += session.push(audio[start : start + 2500], 16000)
        frames += session.finish()
    assert len(frames) == 4 * FPS
    assert all(frame.shape == source.image.shape for frame in frames)


def test_training_forwards_run_off_the_cpu(meta_pipe):
    """What the recipe's training and evaluation run on a GPU: teacher-forced generator, causal refiner."""
    pipe, _ = meta_pipe
    generator, refiner, tokenizer = pipe.motion_generator, pipe.temporal_refiner, pipe.motion_tokenizer
    q = generator.config.num_quantizers
    with NeuralDeviceGuard():
        prior = torch.zeros(2, 21, 3, device=DEVICE)
        audio = torch.zeros(2, 3, 10, 512, device=DEVICE)
        codes = torch.zeros(2, 3, q, dtype=torch.long, device=DEVICE)
        logits = generator(prior, audio, codes)
        coarse = tokenizer.decode(codes[:1])
        refined = refine_causally(refiner, tokenizer, coarse[0], audio[0])
    assert logits.shape == (2, 3, q, generator.config.codebook_size) and logits.device == DEVICE
    assert refined.shape == coarse[0].shape and refined.device == DEVICE

