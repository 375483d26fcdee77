"""The audio encoder's written-out forward (`whisper_inference`) computes what the transformers layers compute, and
its opt-in int8 products stay close to them.

`TellerAudioEncoder.encode_window` runs `whisper_inference.encode_layers`: the same layers on the same weights, with
oneDNN's matrix products on a CPU and the last layer only at the kept positions. Here it runs beside the
transformers layers (`encode_window` as it was) on real speech: the embeddings agree to float32 rounding, and the
motion generator samples the same codes from either.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from teller_pipeline.audio import SAMPLE_RATE, load_audio
from teller_pipeline.models import whisper_inference
from teller_pipeline.streaming import AUDIO_BATCH_SLICES, embed_slice_windows, slice_windows, torch_threads
from teller_recipe.benchmark.audio_encoder import FORWARDS, encode_window_with_transformers_layers, forward_named

from .conftest import ASTRONAUT, CHECKPOINT, EXAMPLES

# Max |difference| of the embeddings. Both forwards sum the same float32 products in other orders (oneDNN's blocking
# is not MKL's). Over the 69 slice windows of the three example recordings, one after the other, the embeddings (rms
# 1.4, up to ±22) differ by 1.3e-5 in the median window and by 1.6e-3 at most, in windows whose last 0.4 s is nearly
# silent (the end of a recording); on the two recordings here 4.8e-4. The generator samples the same codes from
# either (the test below; 20 seeds over those 69 slices gave no code that differed).
TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def source(pipe):
    return pipe.prepare_source(ASTRONAUT, max_size=256)


@pytest.fixture(scope="module")
def speech_windows(pipe, source) -> np.ndarray:
    """The slice windows of two real recordings, one after the other (36 slices), as a session cuts them."""
    speech = np.concatenate([load_audio(EXAMPLES / "arctic_a0009.wav"), load_audio(EXAMPLES / "arctic_a0007.wav")])
    session = pipe.start_session(source)
    return slice_windows(speech, session.window_samples, session.lookahead_samples)


def _embed(pipe, windows: np.ndarray, forward: str) -> torch.Tensor:
    """Every window's slice embeddings, `AUDIO_BATCH_SLICES` windows per call as a file goes, by `forward`."""
    lookahead = int(round(pipe.motion_generator.config.audio_lookahead_seconds * SAMPLE_RATE))
    with torch_threads(), forward_named(pipe.audio_encoder, forward):
        return torch.cat([embed_slice_windows(pipe.audio_encoder, pipe.feature_extractor,
                                              windows[i : i + AUDIO_BATCH_SLICES], lookahead)
                          for i in range(0, len(windows), AUDIO_BATCH_SLICES)])


@pytest.fixture(scope="module")
def slice_embeddings(pipe, speech_windows) -> dict[str, torch.Tensor]:
    return {forward: _embed(pipe, speech_windows, forward) for forward in FORWARDS}


def test_slice_embeddings_match_the_transformers_layers(slice_embeddings, speech_windows):
    theirs = slice_embeddings["transformers layers"]
    assert theirs.shape == (len(speech_windows), 10, 512)
    assert (slice_embeddings["written out, oneDNN"] - theirs).abs().max() <= TOLERANCE
    # With MKL's products (what runs where oneDNN's kernel is missing) only the last layer's fewer rows differ.
    assert (slice_embeddings["written out, MKL"] - theirs).abs().max() <= TOLERANCE


@torch.inference_mode()
def test_with_mkls_products_every_position_is_what_the_transformers_layers_give(pipe, speech_windows, monkeypatch):
    """All positions (`keep` left out): the same computation, so with the same products (MKL's, `F.linear`) the same
    numbers (they come out bit-identical on this machine). oneDNN's only change the rounding (the test above)."""
    encoder, feature_extractor = pipe.audio_encoder, pipe.feature_extractor
    monkeypatch.setattr(whisper_inference, "ONEDNN_LINEAR", False)
    monkeypatch.setattr(encoder, "int8", False)
    mel = torch.cat([feature_extractor(w, sampling_rate=16000, padding="do_not_pad", return_tensors="pt")
                     .input_features[..., :120] for w in speech_windows[10:12]])
    torch.testing.assert_close(encoder.encode_window(mel), encode_window_with_transformers_layers(encoder, mel))


@pytest.mark.skipif(not whisper_inference.ONEDNN_LINEAR, reason="this torch build has no oneDNN linear kernel")
def test_the_products_go_to_onednn(pipe, speech_windows):
    """Were `linear` to fall back to `F.linear` (MKL) unnoticed, the embeddings would still match: this says so."""
    with torch.profiler.profile() as profile:
        _embed(pipe, speech_windows[:1], "written out, oneDNN")
    calls = {event.key: event.count for event in profile.key_averages()}
    assert calls.get("mkldnn::_linear_pointwise") == 6 * 6 and "aten::addmm" not in calls


def test_gradients_flow_through_linear_as_through_f_linear():
    """oneDNN's op has no backward (torch would silently give no gradient), so with autograd `linear` is F.linear."""
    layer = torch.nn.Linear(512, 64)
    x = torch.randn(60, 512, generator=torch.Generator().manual_seed(0), requires_grad=True)
    whisper_inference.linear(x, layer).square().sum().backward()
    ours = (x.grad, layer.weight.grad)
    x.grad, layer.weight.grad = None, None
    torch.nn.functional.linear(x, layer.weight, layer.bias).square().sum().backward()
    assert ours[1] is not None and torch.equal(ours[0], x.grad) and torch.equal(ours[1], layer.weight.grad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_generator_samples_the_same_codes_from_either_forward(pipe, source, slice_embeddings, seed):
    generator = pipe.motion_generator
    prior = torch.from_numpy(source.identity_prior)[None]
    codes = {}
    for forward in ("written out, oneDNN", "transformers layers"):
        with torch.inference_mode(), torch_threads():
            state, draws = generator.start(prior), torch.Generator().manual_seed(seed)
            codes[forward] = torch.stack([generator.generate_slice(state, audio, draws)
                                          for audio in slice_embeddings[forward]])
    assert torch.equal(*codes.values())


def test_the_stage_benchmark_times_every_forward_live_and_batched(capsys):
    from teller_recipe.benchmark import audio_encoder

    audio_encoder.main(["--repeats", "1"])
    out = capsys.readouterr().out
    assert "batch of 1 window(s)" in out and f"batch of {AUDIO_BATCH_SLICES} window(s)" in out
    for forward in FORWARDS:
        assert out.count(forward) == 2
    assert whisper_inference.ONEDNN_LINEAR == whisper_inference._onednn_linear_available()  # put back as it was


# int8 against float32 embeddings of the two recordings' 36 slices: measured mean cosine 0.998 (least slice 0.989),
# change 5 % of their size. With every product in int8, on three recordings (a probe): 0.966 and 21 %. `python -m
# teller_recipe.evaluation.audio_precision` prints the first on more speech, with what the motion does.
INT8_COSINE_MEAN, INT8_COSINE_LEAST, INT8_CHANGE = 0.995, 0.9, 0.08


@pytest.mark.skipif(not whisper_inference.INT8_LINEAR, reason="this torch build has no fbgemm int8 kernels")
def test_int8_products_keep_the_embeddings_close_to_float32(pipe, slice_embeddings, speech_windows):
    int8, float32 = slice_embeddings["written out, int8"], slice_embeddings["written out, oneDNN"]
    cosine = torch.nn.functional.cosine_similarity(int8, float32, dim=-1).mean(1)
    change = ((int8 - float32).norm(dim=-1) / float32.norm(dim=-1)).mean()
    assert cosine.mean() >= INT8_COSINE_MEAN and cosine.min() >= INT8_COSINE_LEAST and change <= INT8_CHANGE
    assert not torch.equal(int8, float32)  # int8 did run
    # a window of a batch gets exactly what it gets alone, as streaming computes it
    assert torch.equal(int8[:4], torch.cat([_embed(pipe, speech_windows[i : i + 1], "written out, int8")
                                            for i in range(4)]))


@pytest.mark.skipif(not whisper_inference.INT8_LINEAR, reason="this torch build has no fbgemm int8 kernels")
def test_int8_runs_the_query_key_and_first_mlp_products(pipe, speech_windows):
    with torch.profiler.profile() as profile:
        _embed(pipe, speech_windows[:1], "written out, int8")
    calls = {event.key: event.count for event in profile.key_averages()}
    assert calls.get("quantized::linear_dynamic") == 3 * 6


def test_int8_is_off_unless_asked_for(pipe):
    from teller_pipeline import TellerPipeline
    from teller_pipeline.models.audio_encoder import TellerAudioEncoder

    assert not pipe.config.audio_encoder_int8 and not pipe.audio_encoder.int8
    assert not TellerAudioEncoder.from_pretrained(CHECKPOINT / "audio_encoder").int8  # as training loads it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert TellerPipeline.from_pretrained(CHECKPOINT, audio_encoder_int8=True).audio_encoder.int8


def test_int8_weights_follow_a_changed_weight():
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = whisper_inference.linear(x, layer, int8=True)
        layer.weight.mul_(2.0)  # in place: the packed copy must be made again
        after = whisper_inference.linear(x, layer, int8=True)
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), atol=0.05, rtol=0.05)


def test_the_precision_evaluation_compares_int8_with_float32(capsys):
    from teller_recipe.evaluation import audio_precision

    audio_precision.main(["--corpus", "none", "--seeds", "1"])
    out = capsys.readouterr().out
    assert "embeddings, " in out and "cosine mean 0.99" in out
    assert out.count("float32  real") == 1 and out.count("int8     real") == 1
