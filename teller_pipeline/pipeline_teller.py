"""TellerPipeline: one portrait photo + speech → a talking-head video, offline or streaming."""

from __future__ import annotations

import json
import numbers
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from huggingface_hub import create_repo, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from PIL import Image, ImageOps, UnidentifiedImageError

from . import rig
from .audio import SAMPLE_RATE, load_audio
from .controls import GenerationControls
from .face_analysis import (
    FACE_LANDMARKER_FILENAME,
    FaceAnalyzer,
    find_face_landmarker_model,
    select_largest_face,
)
from .hub import checkpoint_folder

# diffusers loads a component only from a module already imported (model_index.json names each component's module).
from .models.audio_encoder import TellerAudioEncoder  # noqa: F401
from .models.motion_encoder import MotionEncoder, SourceFace  # noqa: F401
from .models.motion_generator import MotionGenerator  # noqa: F401
from .models.motion_tokenizer import MotionTokenizer  # noqa: F401
from .models.renderer import GeometricRenderer  # noqa: F401
from .models.temporal_refiner import TemporalRefiner  # noqa: F401
from .streaming import (
    AUDIO_BATCH_SLICES,
    FPS,
    FRAMES_PER_SLICE,
    SLICE_SAMPLES,
    TellerSession,
    check_num_threads,
    made_ahead,
    num_video_frames,
    torch_threads,
)
from .video import write_mp4

FACE_LANDMARKER_FOLDER = "face_landmarker"
MIN_IMAGE_SIDE = 32
# Photos up to 40 megapixels are read (decoded, 120 MB); larger ones are refused from their header, before decoding
# (a 519 KB PNG can declare 13000x13000 pixels, 500 MB decoded).
MAX_IMAGE_PIXELS = 40_000_000
# `max_size` (longest side of the video): below 128 pixels a face is too small to find and animate; above 4096 every
# frame takes 50 MB and a CPU seconds.
MIN_OUTPUT_SIZE, MAX_OUTPUT_SIZE = 128, 4096
# An in-memory call (no `output_path`) keeps every frame: beyond 2 GiB of frames it is refused before any frame is
# generated (60 s at 512x600 is 1.4 GB); `output_path` writes the video while generating, in constant memory.
MAX_IN_MEMORY_FRAME_BYTES = 2 * 1024**3
PACKAGE = __name__.split(".")[0]
# How to install the package a checkpoint runs on, in the project's source (it is not on PyPI; README: "Install it
# elsewhere").
INSTALL_COMMAND = "pip wheel . --no-deps -w dist && pip install dist/teller_pipeline-*.whl"
# What a Hub repository stores with Git LFS (Xet): the weights, the face landmarker, the model card's pictures.
GITATTRIBUTES = "".join(
    f"*.{extension} filter=lfs diff=lfs merge=lfs -text\n" for extension in ("safetensors", "task", "png", "jpg")
)


class ImageError(ValueError):
    """The portrait could not be read."""


@dataclass
class PreparedSource:
    """Everything derived once from the source photo (per session)."""

    image: np.ndarray  # (H, W, 3) uint8, after downscaling to the size limit
    face: SourceFace  # the rest pose motion is decoded onto: the photo's face with its lips closed
    identity_prior: np.ndarray  # (21, 3)
    eyelid_gaps: np.ndarray  # (2, 3) lower minus upper eyelid keypoint, canonical frame
    render_state: object
    num_faces: int


@dataclass
class TellerPipelineOutput(BaseOutput):
    """Frames (T, H, W, 3) uint8 at `fps`, and the speech as 16 kHz mono float32.

    `frames` is None when the video was written straight to `video_path` (`output_path=` in the call).
    """

    frames: np.ndarray | None
    fps: int
    audio: np.ndarray
    sample_rate: int
    video_path: str | None = None

    def save(self, path: str | os.PathLike) -> Path:
        """Write an H.264 + AAC MP4 with the speech."""
        if self.frames is None:
            if self.video_path is None:
                raise ValueError("this output holds no frames")
            return Path(shutil.copyfile(self.video_path, path))
        return write_mp4(path, iter(self.frames), self.fps, self.audio, self.sample_rate)


def load_image(image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """A path, PIL image or array → RGB uint8 array, EXIF orientation applied.

    A file's pixel count is checked from its header before it is decoded (`MAX_IMAGE_PIXELS`). Anything that is not
    a usable photo raises `ImageError` naming it and saying why.
    """
    if image is None:
        raise ImageError("no image was given (image=None): pass a portrait's path, a PIL image or an RGB array")
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    if isinstance(image, Image.Image):
        _check_pixel_count(image.size, "the photo")  # a lazily opened image is not decoded yet
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if not isinstance(image, str | os.PathLike):
        raise ImageError(f"image must be a file path, a PIL image or an array, not {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is an empty file (0 bytes), not an image")
    try:
        with Image.open(path) as opened:  # reads the header only
            _check_pixel_count(opened.size, str(path))
            return np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own, far higher limit, checked while opening
        raise ImageError(f"{path} is too large a photo ({error})") from error
    except UnidentifiedImageError as error:
        kind = _media_kind(path)
        if kind is not None:
            raise ImageError(f"{path} is {kind}, not a photo: use a still image (PNG, JPEG, WebP...)") from error
        raise ImageError(f"{path} is not an image file (PNG, JPEG, WebP...) or is corrupt") from error
    except (OSError, ValueError, SyntaxError) as error:  # truncated or malformed data found while decoding
        raise ImageError(f"{path}: not a readable image ({error})") from error


def _check_pixel_count(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
            f"{MAX_IMAGE_PIXELS / 1e6:g} MP: downscale it first"
        )


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, -1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.size == 0:
        raise ImageError(f"an image array must be (H, W, 3) or (H, W, 4), not {array.shape}")
    _check_pixel_count((array.shape[1], array.shape[0]), "the image array")
    if array.dtype.kind not in "biuf":
        raise ImageError(f"an image array must hold numbers, not {array.dtype}")
    if array.dtype != np.uint8:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ImageError("the image array holds NaN or infinite values")
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


def _media_kind(path: Path) -> str | None:
    """"a video" or "a sound file" when FFmpeg reads `path` as one (a file PIL could not open), else None."""
    try:
        with av.open(str(path)) as container:
            # FFmpeg reads still images too (its image2 and *_pipe demuxers): those are broken photos, not videos.
            if container.format.name == "image2" or container.format.name.endswith("_pipe"):
                return None
            if container.streams.video:
                return "a video"
            return "a sound file" if container.streams.audio else None
    except (av.error.FFmpegError, UnicodeDecodeError):
        return None


def _downscale(image: np.ndarray, max_size: int) -> np.ndarray:
    height, width = image.shape[:2]
    if max(height, width) <= max_size:
        return image
    ratio = max_size / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


class TellerPipeline(DiffusionPipeline):
    r"""Audio-driven portrait animation (Teller, CVPR 2025), streaming-first.

    Components, in the order data flows through them:
        audio_encoder ([`TellerAudioEncoder`]) and feature_extractor: whisper-base, 50 Hz speech embeddings.
        motion_encoder ([`MotionEncoder`]): face landmarks ↔ the 25×3 motion latent (fitted constants).
        motion_generator ([`MotionGenerator`]): audio slices → motion tokens, autoregressively.
        motion_tokenizer ([`MotionTokenizer`]): residual-VQ tokens ↔ motion windows.
        temporal_refiner ([`TemporalRefiner`]): Teller's ETM, temporal detail and coherence.
        renderer ([`GeometricRenderer`]): source photo + driven landmarks → frame.
    """

    model_cpu_offload_seq = "audio_encoder->motion_generator->motion_tokenizer->temporal_refiner"

    @register_to_config
    def __init__(
        self,
        audio_encoder,
        feature_extractor,
        motion_encoder,
        motion_tokenizer,
        motion_generator,
        temporal_refiner,
        renderer,
        max_audio_seconds: float = 600.0,
        min_video_seconds: float = 1.0,
        max_image_size: int = 1024,
        audio_encoder_int8: bool = False,
    ):
        super().__init__()
        self.register_modules(
            audio_encoder=audio_encoder,
            feature_extractor=feature_extractor,
            motion_encoder=motion_encoder,
            motion_tokenizer=motion_tokenizer,
            motion_generator=motion_generator,
            temporal_refiner=temporal_refiner,
            renderer=renderer,
        )
        if audio_encoder is not None:  # opt-in: a third of its products in int8 (`TellerAudioEncoder.int8`)
            audio_encoder.int8 = bool(audio_encoder_int8)
        self.face_landmarker_path: Path | None = None
        self._face_analyzer: FaceAnalyzer | None = None
        self._face_analyzer_pid = 0  # the process that made it
        self.set_progress_bar_config(disable=True)
        _own_aligned_memory(self)  # whichever loader built the components: this class's or DiffusionPipeline's

    # ------------------------------------------------------------------ loading and saving
    # A checkpoint loads two ways. `TellerPipeline.from_pretrained` (this package imported) runs no code from the
    # checkpoint. `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`, what a Hub page suggests, finds
    # a class outside diffusers only in a `.py` file of the repository that `model_index.json` names as
    # `[file, class]`, for the pipeline and for each component (`_write_loader_files`); each of those files only
    # imports the class from the installed package.
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> TellerPipeline:
        """Load from a local folder or a Hub repo id; a repo is fetched whole with `snapshot_download` first (diffusers'
        own download leaves out `face_landmarker/`, which is no component). A repo that is neither cached nor
        downloadable raises `CheckpointNotFoundError` saying how to get it. Takes diffusers' keyword arguments
        (`dtype=`, or the deprecated `torch_dtype=`; weights keep their stored precision by default, the audio
        encoder loads float32)."""
        hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        path = checkpoint_folder(pretrained_model_name_or_path, **hub_kwargs)
        pipe = super().from_pretrained(path, **kwargs)
        landmarker = path / FACE_LANDMARKER_FOLDER / FACE_LANDMARKER_FILENAME
        pipe.face_landmarker_path = landmarker if landmarker.is_file() else None
        return pipe

    @classmethod
    def load_config(cls, *args, **kwargs) -> dict | tuple:
        """diffusers' `load_config`, reading the repository's loader files as the package classes they import."""
        loaded = super().load_config(*args, **kwargs)
        _package_entries(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Save every component, a copy of the face landmarker, the loader files of `trust_remote_code=True` and a
        `.gitattributes`: a complete, self-contained folder. With `push_to_hub=True` (and diffusers' `repo_id`,
        `token`, `private`, `create_pr`, `commit_message`) that whole folder is then uploaded, with its model card
        `README.md` if it has one (diffusers' own push writes its card template over it)."""
        hub = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "create_pr", "commit_message") if k in kwargs}
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        target = folder / FACE_LANDMARKER_FOLDER
        target.mkdir(parents=True, exist_ok=True)
        source, destination = self._landmarker_file(), target / FACE_LANDMARKER_FILENAME
        if not (destination.exists() and destination.samefile(source)):  # saving over the folder it came from
            shutil.copyfile(source, destination)
        _write_loader_files(folder, type(self))
        (folder / ".gitattributes").write_text(GITATTRIBUTES)
        if push_to_hub:
            self._push_folder(folder, **hub)

    def _push_folder(
        self,
        folder: Path,
        repo_id: str | None = None,
        token: str | None = None,
        private: bool | None = None,
        create_pr: bool = False,
        commit_message: str | None = None,
    ) -> None:
        from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card

        repo_id = create_repo(repo_id or folder.name, exist_ok=True, private=private, token=token).repo_id
        if not (folder / "README.md").is_file():
            card = populate_model_card(load_or_create_model_card(repo_id, token=token, is_pipeline=True))
            card.save(folder / "README.md")
        self._upload_folder(folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    def _landmarker_file(self) -> Path:
        if self.face_landmarker_path is not None:
            return Path(self.face_landmarker_path)
        return find_face_landmarker_model(self._checkpoint_landmarker_folders())

    def _checkpoint_landmarker_folders(self) -> list[Path]:
        """The `face_landmarker/` of the checkpoint `DiffusionPipeline.from_pretrained` loaded this pipeline from:
        that loader neither records nor downloads the folder (it is no component)."""
        source = self.name_or_path
        if not source:
            return []
        if Path(source).is_dir():
            return [Path(source) / FACE_LANDMARKER_FOLDER]
        try:
            path = hf_hub_download(str(source), FACE_LANDMARKER_FILENAME, subfolder=FACE_LANDMARKER_FOLDER)
        except (HfHubHTTPError, LocalEntryNotFoundError, ValueError):  # offline and not cached, or not a repo id
            return []
        return [Path(path).parent]

    @property
    def face_analyzer(self) -> FaceAnalyzer:
        """MediaPipe's face landmarker, made on first use in each process: one made before a fork hangs in the
        child (its worker threads stay behind in the parent), and a ZeroGPU Space runs each GPU call in a forked
        worker, after the app's own process has analysed a Live tab portrait."""
        if self._face_analyzer is None or self._face_analyzer_pid != os.getpid():
            self._face_analyzer = FaceAnalyzer(self._landmarker_file())
            self._face_analyzer_pid = os.getpid()
        return self._face_analyzer

    @property
    def max_audio_seconds(self) -> float:
        return self.config.max_audio_seconds

    @property
    def min_video_seconds(self) -> float:
        return self.config.min_video_seconds

    # ------------------------------------------------------------------ the source photo
    def prepare_source(
        self, image: str | os.PathLike | Image.Image | np.ndarray, max_size: int | None = None
    ) -> PreparedSource:
        """Read the photo, find the face, and precompute everything the session reuses every frame."""
        name = str(image) if isinstance(image, str | os.PathLike) else "the photo"
        max_size = self._output_size(max_size)
        array = load_image(image)
        if min(array.shape[:2]) < MIN_IMAGE_SIDE:
            raise ImageError(
                f"{name} is {array.shape[1]}x{array.shape[0]} pixels; a portrait needs at least "
                f"{MIN_IMAGE_SIDE} pixels on each side"
            )
        array = _downscale(array, max_size)
        faces = self.face_analyzer.detect(array, small_faces=True)  # a group photo's faces can be small
        face = select_largest_face(faces, name)
        source = self.motion_encoder.close_lips(self.motion_encoder.encode_source(face.points, face.image_size))
        canonical_kp = source.canonical_keypoints
        gaps = np.stack([canonical_kp[lo] - canonical_kp[up] for up, lo in _EYELID_KEYPOINTS])
        return PreparedSource(
            image=array,
            face=source,
            identity_prior=self.motion_encoder.identity_prior(source),
            eyelid_gaps=gaps.astype(np.float32),
            render_state=self.renderer.prepare(array, face.points),
            num_faces=len(faces),
        )

    def _output_size(self, max_size: int | None) -> int:
        """`max_size` checked (None: the pipeline's `max_image_size`)."""
        if max_size is None:
            return self.config.max_image_size
        if isinstance(max_size, bool) or not isinstance(max_size, numbers.Integral):
            raise ValueError(f"max_size must be a whole number of pixels, got {max_size!r}")
        if not MIN_OUTPUT_SIZE <= max_size <= MAX_OUTPUT_SIZE:
            raise ValueError(
                f"max_size must be between {MIN_OUTPUT_SIZE} and {MAX_OUTPUT_SIZE} pixels, got {max_size}"
            )
        return int(max_size)

    # ------------------------------------------------------------------ streaming
    def start_session(
        self,
        image: str | os.PathLike | Image.Image | np.ndarray | PreparedSource,
        max_size: int | None = None,
        num_threads: int | None = None,
        audio_lookahead_heard_seconds: float | None = None,
        **controls,
    ) -> TellerSession:
        """A live session: `session.push(chunk, sample_rate)` returns frames as soon as they are ready,
        `session.finish()` the rest. Controls: see `GenerationControls`. Pass a `PreparedSource` to analyse
        the photo once for several sessions. `num_threads`: as in `__call__`, for every push and finish.
        `audio_lookahead_heard_seconds`: see `TellerSession` (None: the checkpoint's, 0.2 s; 0.1 s is 100 ms
        sooner)."""
        with torch_threads(num_threads):
            source = image if isinstance(image, PreparedSource) else self.prepare_source(image, max_size)
            return TellerSession(self, source, GenerationControls(**controls), num_threads,
                                 audio_lookahead_heard_seconds)

    def stream(
        self,
        image: str | os.PathLike | Image.Image | np.ndarray | PreparedSource,
        audio_chunks: Iterable[np.ndarray | tuple[int, np.ndarray]],
        sample_rate: int = SAMPLE_RATE,
        max_size: int | None = None,
        num_threads: int | None = None,
        **controls,
    ) -> Iterator[list[np.ndarray]]:
        """Yield lists of frames (25 fps) while audio chunks arrive; chunks are arrays at `sample_rate` or
        `(rate, array)` tuples as Gradio's microphone gives them. `num_threads`: as in `__call__`, set while the
        model works on a chunk and restored before each yield."""
        session = self.start_session(image, max_size, num_threads, **controls)
        for chunk in audio_chunks:
            rate, samples = chunk if isinstance(chunk, tuple) else (sample_rate, chunk)
            frames = session.push(np.asarray(samples), rate)
            if frames:
                yield frames
        frames = session.finish()
        if frames:
            yield frames

    # ------------------------------------------------------------------ offline
    @torch.inference_mode()
    def __call__(
        self,
        image: str | os.PathLike | Image.Image | np.ndarray,
        audio: str | os.PathLike | np.ndarray | tuple[int, np.ndarray],
        seed: int = GenerationControls.seed,
        head_motion_scale: float = GenerationControls.head_motion_scale,
        expression_scale: float = GenerationControls.expression_scale,
        blinks_per_minute: float = GenerationControls.blinks_per_minute,
        breathing: float = GenerationControls.breathing,
        top_k: int = GenerationControls.top_k,
        temperature: float = GenerationControls.temperature,
        silence_threshold_db: float | None = GenerationControls.silence_threshold_db,
        head_smoothing: float = GenerationControls.head_smoothing,
        max_size: int | None = None,
        output_path: str | os.PathLike | None = None,
        num_threads: int | None = None,
        return_dict: bool = True,
    ) -> TellerPipelineOutput | tuple:
        """Animate `image` with `audio`: the streaming session run to the end.

        Args:
            image: portrait path, PIL image or RGB array. Several faces: the largest is animated (a warning
                says so). Larger than `max_size` (default: the pipeline's `max_image_size`): downscaled.
            audio: speech file (wav, mp3, flac, ogg, webm, m4a, ...), `(sample_rate, array)`, or a 16 kHz
                mono float array. Longer than `max_audio_seconds`: an error before any work. Silent or
                empty: an idle video (closed mouth, blinks, breathing) of at least `min_video_seconds`.
            seed: makes sampling, blinks and breathing reproducible.
            head_motion_scale / expression_scale: 0 = still head / still face; 1 = as generated.
            blinks_per_minute, breathing: idle motion.
            top_k, temperature: sampling of motion tokens (temperature 0 = greedy).
            silence_threshold_db: below this level (dBFS) the head settles toward the photo's pose (the
                generator itself closes the mouth in pauses); None = always as generated.
            head_smoothing: time constant (s) of a causal, critically damped low-pass on head motion; 0 = as
                generated.
            output_path: write the MP4 there while generating instead of keeping frames in memory. Without it,
                a video whose frames would take more than `MAX_IN_MEMORY_FRAME_BYTES` (2 GiB) is refused before
                any frame is generated.
            num_threads: torch intra-op threads for the model calls, set while they run and restored after (the
                caller's setting is never changed). None: the package's default, `streaming.TORCH_THREADS` (1, or
                the environment's `TELLER_TORCH_THREADS`), fastest for these small models on a machine shared with
                other work; 0: torch's setting as the caller has it.

        Any setting that is not usable (NaN, infinite, negative, out of range) raises a `ValueError` naming it
        before any work; a seed may be any integer (reduced modulo 2**64).
        """
        controls = GenerationControls(
            seed=seed, head_motion_scale=head_motion_scale, expression_scale=expression_scale,
            blinks_per_minute=blinks_per_minute, breathing=breathing, top_k=top_k, temperature=temperature,
            silence_threshold_db=silence_threshold_db, head_smoothing=head_smoothing,
        )
        controls.validate()
        self._output_size(max_size)
        if num_threads is not None:
            check_num_threads(num_threads)
        samples = load_audio(audio, max_seconds=self.config.max_audio_seconds)
        session = self.start_session(self.prepare_source(image, max_size), num_threads=num_threads, **vars(controls))
        num_frames = num_video_frames(len(samples), self.config.min_video_seconds)
        if output_path is None:
            _check_in_memory_size(num_frames, session.source.image.shape)
        num_slices = -(-max(len(samples), 1) // SLICE_SAMPLES)

        def frames() -> Iterator[np.ndarray]:
            with self.progress_bar(total=num_slices) as progress:
                # several slices a push: their audio goes through the encoder as one batch (AUDIO_BATCH_SLICES)
                step = AUDIO_BATCH_SLICES * SLICE_SAMPLES
                for start in range(0, len(samples), step):
                    chunk = samples[start : start + step]
                    yield from session.push_16k(chunk)
                    progress.update(-(-len(chunk) // SLICE_SAMPLES))
                yield from session.finish()

        padded_audio = _pad_to(samples, session.total_frames)
        if output_path is not None:
            # On a CPU the model and renderer make frames on a thread of their own while x264 encodes; on a GPU
            # they are not what takes the time (and ZeroGPU's CUDA emulation holds only in the calling thread).
            ahead = made_ahead(frames(), FRAMES_AHEAD) if self.device.type == "cpu" else frames()
            path = write_mp4(output_path, ahead, FPS, padded_audio, SAMPLE_RATE)
            result = TellerPipelineOutput(None, FPS, padded_audio, SAMPLE_RATE, str(path))
        else:
            # Filled in place: a list of frames stacked at the end would need twice the memory.
            video = np.empty((num_frames, *session.source.image.shape), np.uint8)
            count = 0
            for count, frame in enumerate(frames(), 1):
                video[count - 1] = frame
            result = TellerPipelineOutput(video[:count], FPS, padded_audio, SAMPLE_RATE)
        self.maybe_free_model_hooks()
        return result if return_dict else (result.frames, result.fps, result.audio)


# Frames the model may make ahead of the video encoder: one batch of slices (a file's audio goes through the model
# AUDIO_BATCH_SLICES slices at a time), so the next batch is made while this one is encoded. Each frame of the
# queue is held in memory (50 frames at 512x600: 46 MB).
FRAMES_AHEAD = AUDIO_BATCH_SLICES * FRAMES_PER_SLICE


def _check_in_memory_size(num_frames: int, frame_shape: tuple[int, ...]) -> None:
    size = num_frames * int(np.prod(frame_shape))
    if size > MAX_IN_MEMORY_FRAME_BYTES:
        height, width = frame_shape[:2]
        raise ValueError(
            f"the video would keep {num_frames} frames of {width}x{height} in memory ({size / 1024**3:.1f} GiB), "
            f"more than the {MAX_IN_MEMORY_FRAME_BYTES / 1024**3:g} GiB an in-memory call may use: pass "
            "output_path= to write the MP4 while generating, or a smaller max_size"
        )


def _loader_file(module: str, class_name: str) -> str:
    missing = [f"this checkpoint runs on the {PACKAGE} package; in the project's source: ", INSTALL_COMMAND]
    return "\n".join([
        f'"""`{class_name}` for `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`: the class of the',
        f'installed `{PACKAGE}` package, which is all this file runs."""',
        "",
        "try:",
        f"    from {module} import {class_name}",
        "except ImportError as error:",
        "    raise ImportError(",
        *(f"        {json.dumps(part)}" for part in missing),
        "    ) from error",
        "",
        f'__all__ = ["{class_name}"]',
        "",
    ])


def _write_loader_files(folder: Path, pipeline_class: type) -> None:
    """Name a loader file in `model_index.json` for the pipeline and for each component of this package, and write
    those files (diffusers' layout of a custom pipeline with custom components)."""
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index.pop("_name_or_path", None)  # where the saved pipeline was loaded from: nothing the folder needs
    entries = {"": [pipeline_class.__module__, pipeline_class.__name__]}
    entries.update({name: value for name, value in index.items()
                    if isinstance(value, list) and str(value[0]).startswith(f"{PACKAGE}.")})
    for name, (module, class_name) in entries.items():
        file_stem = module.rsplit(".", 1)[-1]
        (folder / name / f"{file_stem}.py").write_text(_loader_file(module, class_name))
        index["_class_name" if not name else name] = [file_stem, class_name]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _package_entries(index: dict) -> None:
    """Undo `_write_loader_files` in a loaded `model_index.json`: a `[loader file, class]` entry whose class this
    package exports becomes `[its module, class]` again, so nothing from the folder is imported."""
    import teller_pipeline

    for name, value in index.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            continue
        exported = getattr(teller_pipeline, value[1], None)
        if isinstance(exported, type) and exported.__module__.rsplit(".", 1)[-1] == value[0]:
            index[name] = exported.__name__ if name == "_class_name" else [exported.__module__, value[1]]


def _own_aligned_memory(pipe: DiffusionPipeline) -> None:
    """Copy every weight that lives in borrowed memory into freshly allocated memory of its own.

    Weights loaded from safetensors can sit at addresses that are not 64-byte aligned; oneDNN/MKL then take
    other kernel paths whose float rounding differs in the last bit, and a saved-and-reloaded pipeline would
    not reproduce the original's video exactly. Such a weight is a view into the memory-mapped file, which stays
    mapped (and resident) as long as any view of it lives, so a buffer that is a view is replaced by a new tensor:
    `.data =` would keep the view's base, and with it the whole file. A weight that already owns all of its
    storage (the audio encoder's, converted from float16 on loading) is left where it is, not copied again.
    """
    copies: dict[int, torch.Tensor] = {}  # a buffer shared by several modules stays shared

    def own(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in copies:
            copies[id(tensor)] = tensor.detach().clone() if _borrowed(tensor) else tensor
        return copies[id(tensor)]

    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            with torch.no_grad():
                for parameter in module.parameters():
                    if _borrowed(parameter):
                        parameter.data = parameter.data.clone()
                for submodule in module.modules():
                    for name, buffer in submodule._buffers.items():
                        if buffer is not None:
                            submodule._buffers[name] = own(buffer)


def _borrowed(tensor: torch.Tensor) -> bool:
    """True unless `tensor` alone owns its storage (not a view, the storage's full size, 64-byte aligned)."""
    storage = tensor.untyped_storage()
    return (tensor._is_view() or tensor.storage_offset() != 0 or storage.nbytes() != tensor.nbytes
            or storage.data_ptr() % 64 != 0)


def _pad_to(samples: np.ndarray, num_frames: int) -> np.ndarray:
    """Pad the speech with silence to the video's length (only matters for very short/empty speech)."""
    needed = int(round(num_frames / FPS * SAMPLE_RATE))
    return np.pad(samples, (0, max(0, needed - len(samples)))).astype(np.float32)


_EYELID_KEYPOINTS = [
    (rig.KEYPOINT_NAMES.index(f"upper_eyelid_{side}"), rig.KEYPOINT_NAMES.index(f"lower_eyelid_{side}"))
    for side in ("right", "left")
]
