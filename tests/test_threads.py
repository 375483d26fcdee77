"""Thread use: the pipeline runs its models at its own torch thread count and gives the caller's back after.

Each model's forward is observed through a hook that records `torch.get_num_threads()` while it runs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
import torch

from teller_pipeline import streaming

from .conftest import ASTRONAUT

# A count no default gives: the caller's own setting, distinguishable from the package's.
CALLER_THREADS = streaming.TORCH_THREADS + 1


@contextmanager
def observed_threads(pipe):
    """Yields a list that receives (thread name, torch threads) from inside every neural model's forward."""
    seen: list[tuple[str, int]] = []
    # The audio encoder's layers run written out (`whisper_inference`), not through their forward: its conv1 does.
    modules = [pipe.audio_encoder.conv1, pipe.motion_generator.audio_proj, pipe.temporal_refiner]
    hooks = [m.register_forward_hook(lambda *_: seen.append((threading.current_thread().name,
                                                              torch.get_num_threads()))) for m in modules]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture
def caller_threads():
    """The test's thread at `CALLER_THREADS`, as a caller who set it; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(CALLER_THREADS)
    yield CALLER_THREADS
    torch.set_num_threads(before)


def _counts(seen: list[tuple[str, int]]) -> set[int]:
    assert len(seen) >= 3, "every model ran"
    return {count for _, count in seen}


def test_call_runs_at_the_package_count_and_leaves_the_callers(pipe, speech, caller_threads):
    with observed_threads(pipe) as seen:
        pipe(ASTRONAUT, speech[:8000], max_size=128)
    assert _counts(seen) == {streaming.TORCH_THREADS}
    assert torch.get_num_threads() == caller_threads


def test_session_push_and_finish_run_at_the_package_count(pipe, speech, caller_threads):
    with observed_threads(pipe) as seen:
        session = pipe.start_session(ASTRONAUT, max_size=128)
        assert torch.get_num_threads() == caller_threads
        frames = session.push(speech[:9600], 16000)
        assert frames and torch.get_num_threads() == caller_threads
        frames += session.finish()
    assert _counts(seen) == {streaming.TORCH_THREADS}
    assert torch.get_num_threads() == caller_threads


def test_stream_restores_the_callers_count_between_chunks(pipe, speech, caller_threads):
    chunks = [speech[i : i + 3200] for i in range(0, 12800, 3200)]
    with observed_threads(pipe) as seen:
        for _ in pipe.stream(ASTRONAUT, chunks, max_size=128):
            assert torch.get_num_threads() == caller_threads  # the caller's code between the chunks
    assert _counts(seen) == {streaming.TORCH_THREADS}


@pytest.mark.parametrize("num_threads", [3, 0], ids=["explicit", "callers-own"])
def test_num_threads_argument(pipe, speech, caller_threads, num_threads):
    with observed_threads(pipe) as seen:
        pipe(ASTRONAUT, speech[:8000], max_size=128, num_threads=num_threads)
    assert _counts(seen) == {num_threads or caller_threads}
    assert torch.get_num_threads() == caller_threads


def test_negative_num_threads_is_refused(pipe):
    with pytest.raises(ValueError, match="num_threads"):
        pipe.start_session(ASTRONAUT, max_size=128, num_threads=-1)


def test_sessions_in_two_threads_at_once_each_keep_their_threads_count(pipe, speech, caller_threads):
    """As the app's sessions run: two threads, each with its own torch setting, push and finish side by side."""
    source = pipe.prepare_source(ASTRONAUT, max_size=128)
    own = {"first": CALLER_THREADS + 1, "second": CALLER_THREADS + 2}
    after: dict[str, int] = {}
    both_started = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []

    def listener() -> None:
        name = threading.current_thread().name
        try:
            torch.set_num_threads(own[name])
            session = pipe.start_session(source)
            both_started.wait()
            for i in range(0, 12800, 3200):
                session.push(speech[i : i + 3200], 16000)
            session.finish()
            after[name] = torch.get_num_threads()
        except BaseException as error:  # reported by the test's thread
            errors.append(error)

    with observed_threads(pipe) as seen:
        threads = [threading.Thread(target=listener, name=name) for name in own]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    assert after == own  # each thread got its own setting back
    assert {name for name, _ in seen} == set(own) and _counts(seen) == {streaming.TORCH_THREADS}
    assert torch.get_num_threads() == caller_threads  # and the test's own thread was never touched


def test_frames_do_not_depend_on_the_thread_count(pipe, speech):
    """The default changed torch's count for callers who never set it; what they get must not change with it."""
    one, two = (pipe(ASTRONAUT, speech[:24000], seed=2, max_size=128, num_threads=n).frames for n in (1, 2))
    assert len(one) == 38
    assert all((a == b).all() for a, b in zip(one, two, strict=True))
