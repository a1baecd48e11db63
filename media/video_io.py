"""Video files in and out: decode + frame sampling + resize for training, H.264 / GIF writing, contact sheets.

Tensor conventions. A video in memory is float32 [C=3, T, H, W] in [0, 1] (what the reward contract and the
model adapters take, one item of a [B, C, T, H, W] batch), or uint8 [T, H, W, C] (what codecs and PIL take);
`to_uint8_frames` converts the first into the second (clamp to [0, 1], ×255, round half up).

Reading (`read_video`).
1. `probe_video` opens the file with PyAV and reads the container header: frame count (the stream's declared
   count; when the container declares none, the video packets are counted by demuxing, without decoding),
   frame rate (the stream's average rate), size and duration. Every failure here — missing file, empty file,
   not a media file, truncated header, no video stream — raises `VideoReadError`. A declared count larger than
   the file's size in bytes (each frame is at least a one-byte packet) is a corrupt header and rejected: nothing
   downstream ever sizes a buffer from such a count (decord 0.6 aborts the process with std::bad_alloc on one).
2. `frame_indices` turns the sampling request into source frame indices, treating the stream as constant
   frame rate F at its average rate (frame i shown at i / F):
   - `stride=s`: i_k = start + k·s;
   - `fps=f`: output frame k is at time start / F + k / f and takes the nearest source frame,
     i_k = ⌊start + k·F / f + ½⌋ (ties go to the later frame; f > F repeats frames);
   - neither: every frame from `start` (stride 1);
   for k = 0 … num_frames − 1, or, with `num_frames=None`, for every k whose index exists. If the last index is
   past the end of the video the read fails with `VideoTooShortError` (a `VideoReadError`) stating how many frames
   the video has and how many the request needs.
3. The chosen backend decodes frames 0 … max(i_k) — nothing after the last needed frame, so a file truncated
   after the requested frames still reads; with `num_frames=None` it decodes to the end and a file holding fewer
   frames than its header declares is an error — converts them to RGB and, with `size=(H, W)`, resizes each
   frame with antialiasing (bilinear, `torch.nn.functional.interpolate(antialias=True)`):
   - `crop="center"`: scale by max(H / h, W / w) so the frame covers H×W (the short side relative to the target
     aspect), then take the centred H×W window;
   - `crop="none"`: resize straight to H×W (aspect not kept).
   A decode error, or fewer decodable frames than the request needs (a truncated file whose header promises
   more), raises `VideoReadError`. Frames are resized as they are decoded (decord: in chunks of 16), so memory holds
   the output plus at most a chunk of full-size frames.
Backends: `"pyav"` decodes sequentially with PyAV (frame-accurate; cost grows with the last needed index);
`"decord"` uses decord's random access (`pip install "vidpost[video]"`); `"auto"` uses decord when it is
importable and retries with PyAV when decord fails (decord 0.6 cannot open GIFs and fails on some frame widths,
e.g. 16, 24, 48 and 72 px), so under "auto" the error for a bad file is PyAV's. Both index frames in
presentation order and decode with FFmpeg (each wheel bundles its own build); on the test videos they return
identical pixels.

Writing (`write_video`): `.mp4` is H.264 (libx264, yuv420p, constant quality `crf`, `+faststart`), frames with
an odd height or width padded to even by repeating the last row / column. x264 runs single-threaded so that the
same video always gives the same bytes: with its default threading the bundled libx264 produced different streams
for identical input from run to run. (Cost measured on two cores, 81 noisy 832×480 frames at crf 12: 6.8 s against
3.8 s threaded.) `.gif` goes through PIL (adaptive palette per frame, looping; GIF delays are whole centiseconds,
at least 2, so the stored rate is approximate, and PIL merges consecutive identical frames into one longer frame).
Files are written to a temporary name in the target folder and renamed into place (`os.replace`), so a reader
never sees a half-written file, and a write that raises leaves the previous file (if any) untouched and no
temporary file behind.

`contact_sheet` lays videos out as a PNG grid: one row per video, `frames` evenly spaced frames per row
(indices round(linspace(0, T − 1, n))), each frame upscaled `scale`× by nearest neighbour, 2-pixel white
gutters, and an optional caption strip above each row (PIL's default font, word-wrapped to the row width).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from vidpost.outputs import atomic_file

__all__ = [
    "BACKENDS",
    "CROPS",
    "VideoInfo",
    "VideoReadError",
    "VideoTooShortError",
    "contact_sheet",
    "frame_indices",
    "probe_video",
    "read_video",
    "to_uint8_frames",
    "write_video",
]

BACKENDS = ("auto", "pyav", "decord")
CROPS = ("center", "none")
VIDEO_SUFFIXES = (".mp4", ".gif")

_SHEET_GUTTER = 2  # pixels between frames, between rows and around caption text
_SHEET_BACKGROUND = 255
_DECORD_CHUNK = 16  # frames fetched per decord batch: bounds the full-resolution frames held at once

VideoLike = torch.Tensor | np.ndarray


class VideoReadError(Exception):
    """A video file could not be read. `path` is the file, `reason` says why.

    The SFT data loader catches this to count and skip bad files, so every failure that is the file's fault
    (missing, empty, not a video, truncated, undecodable, too short) surfaces as this type. Mistakes in the call
    itself (e.g. `stride=0`) are `ValueError`s instead, so they are not silently skipped as "bad files".
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(path, reason)

    def __str__(self) -> str:
        return f"cannot read video {self.path}: {self.reason}"


class VideoTooShortError(VideoReadError):
    """The video has fewer frames than the request needs: a short clip, or a truncated file whose frames run out
    before the count its header declares (the message then says so)."""

    def __init__(self, path: str | os.PathLike, num_available: int, num_needed: int, request: str = ""):
        self.num_available = num_available
        self.num_needed = num_needed
        self.request = request
        reason = f"video has {num_available} frames but {num_needed} are needed"
        super().__init__(path, f"{reason} ({request})" if request else reason)
        self.args = (path, num_available, num_needed, request)  # so that pickling re-creates the same error


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` reads from a container header."""

    num_frames: int
    """Frames in the video stream (declared by the container, else counted packets)."""
    fps: float
    """Average frame rate of the video stream."""
    height: int
    """Frame height in pixels."""
    width: int
    """Frame width in pixels."""
    duration: float
    """Seconds: the stream's duration when the container records one, else num_frames / fps."""


# --------------------------------------------------------------------------------------------------- sampling


def _check_sampling_args(num_frames: int | None, fps: float | None, stride: int | None, start: int) -> None:
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 (or None for all frames), got {num_frames}")
    if fps is not None and stride is not None:
        raise ValueError(f"give at most one of fps and stride, got fps={fps} and stride={stride}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")


def _iter_positions(source_fps: float, fps: float | None, stride: int | None, start: int) -> Iterator[int]:
    """The endless, non-decreasing sequence i_0, i_1, ... of the module docstring."""
    for k in itertools.count():
        if fps is None:
            yield start + k * (stride or 1)
        else:
            # k·F first, then / f: exact for integer rates; the 1e-9 keeps exact ties (k·F/f = n + ½) rounding up.
            yield math.floor(start + k * source_fps / fps + 0.5 + 1e-9)


def _sample_positions(
    num_source_frames: int,
    source_fps: float,
    num_frames: int | None,
    fps: float | None,
    stride: int | None,
    start: int,
) -> list[int]:
    """The first `num_frames` positions (*not* bounded by the video length), or with `num_frames=None` every
    position below `num_source_frames`."""
    positions = _iter_positions(source_fps, fps, stride, start)
    if num_frames is not None:
        return list(itertools.islice(positions, num_frames))
    return list(itertools.takewhile(lambda i: i < num_source_frames, positions))


def _describe_request(num_frames: int | None, fps: float | None, stride: int | None, start: int) -> str:
    return f"num_frames={num_frames}, fps={fps}, stride={stride}, start={start}"


def frame_indices(
    num_source_frames: int,
    source_fps: float,
    *,
    num_frames: int | None,
    fps: float | None = None,
    stride: int | None = None,
    start: int = 0,
) -> list[int]:
    """Source frame indices for a sampling request (the rule is in the module docstring).

    Args:
        num_source_frames: frames in the video.
        source_fps: the video's frame rate (only used with `fps`).
        num_frames: frames to take; `None` takes every frame the rule reaches before the end.
        fps: target frame rate; the source timeline is resampled by nearest frame. Exclusive with `stride`.
        stride: take every `stride`-th frame. Exclusive with `fps`. Neither: stride 1.
        start: first source frame.

    Raises:
        ValueError: invalid arguments, or the video is too short for the request (the message gives both counts).
    """
    _check_sampling_args(num_frames, fps, stride, start)
    if fps is not None and not (math.isfinite(source_fps) and source_fps > 0):
        raise ValueError(f"source_fps must be a positive number to resample to fps={fps}, got {source_fps}")
    positions = _sample_positions(num_source_frames, source_fps, num_frames, fps, stride, start)
    needed = (positions[-1] if positions else start) + 1
    if needed > num_source_frames:
        raise ValueError(
            f"video has {num_source_frames} frames but {needed} are needed "
            f"({_describe_request(num_frames, fps, stride, start)})"
        )
    return positions


# ---------------------------------------------------------------------------------------------------- probing


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    return path


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open `path` with PyAV and yield (container, first video stream); FFmpeg failures become VideoReadError."""
    try:
        container = av.open(str(path), metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as e:
        raise VideoReadError(path, f"not a readable media file ({e})") from e
    try:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoReadError(path, f"no video stream (streams: {kinds})")
        yield container, container.streams.video[0]
    finally:
        container.close()


def _stream_fps(path: Path, stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise VideoReadError(path, "the video stream has no frame rate")
    return float(rate)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read frame count, frame rate, size and duration from the container header (no decoding).

    When the container does not declare a frame count (e.g. Matroska), the video packets are counted by demuxing.

    Raises:
        VideoReadError: missing / empty / unreadable file, or no video stream.
    """
    path = _check_file(path)
    with _open_video(path) as (container, stream):
        if stream.codec_context is None:  # e.g. a header truncated before the codec parameters
            raise VideoReadError(path, "no decoder for the video stream (codec parameters missing or unsupported)")
        fps = _stream_fps(path, stream)
        height, width = stream.codec_context.height, stream.codec_context.width
        if height <= 0 or width <= 0:
            raise VideoReadError(path, f"the video stream has no frame size ({width}x{height})")
        num_frames = stream.frames
        if num_frames <= 0:
            try:
                num_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            except (av.error.FFmpegError, OSError) as e:
                raise VideoReadError(path, f"demuxing failed while counting frames ({e})") from e
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = num_frames / fps
    if num_frames <= 0:
        raise VideoReadError(path, "the video stream has no frames")
    if num_frames > (file_size := path.stat().st_size):  # every frame is a packet of at least one byte
        raise VideoReadError(path, f"corrupt header: it declares {num_frames} frames in a {file_size}-byte file")
    return VideoInfo(num_frames=num_frames, fps=fps, height=height, width=width, duration=duration)


# ---------------------------------------------------------------------------------------------------- reading


def _resize_frame(frame_HWC: np.ndarray, size: tuple[int, int] | None, crop: str) -> torch.Tensor:
    """uint8 [H, W, 3] → float32 [3, H', W'] in [0, 1], resized / cropped as the module docstring says."""
    x = torch.from_numpy(np.ascontiguousarray(frame_HWC)).permute(2, 0, 1).float().div_(255.0)
    if size is None:
        return x
    out_h, out_w = size
    h, w = x.shape[-2:]
    if crop == "none":
        new_h, new_w = out_h, out_w
    else:
        scale = max(out_h / h, out_w / w)
        new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.clamp_(0.0, 1.0)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return x[:, top : top + out_h, left : left + out_w].contiguous()


def _decode_pyav(
    path: Path, positions: Iterator[int], size: tuple[int, int] | None, crop: str
) -> tuple[list[torch.Tensor], int]:
    """Decode in order, keeping the frames at `positions` (non-decreasing; a repeated position repeats the frame),
    until the positions run out or the stream ends. Returns the kept frames and the number of frames decoded."""
    kept: list[torch.Tensor] = []
    target = next(positions, None)
    decoded = 0
    with _open_video(path) as (container, stream):
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if target == decoded:
                    x = _resize_frame(frame.to_ndarray(format="rgb24"), size, crop)
                    while target == decoded:
                        kept.append(x)
                        target = next(positions, None)
                decoded += 1
                if target is None:
                    break
        except (av.error.FFmpegError, OSError) as e:
            raise VideoReadError(path, f"decoding failed after {decoded} frames ({e})") from e
    return kept, decoded


@cache
def _import_decord() -> ModuleType | None:
    """decord, or None when it is not installed. Its FFmpeg logging is silenced (PyAV's is off by default), so
    that a data loader skipping bad files does not flood stderr; errors still arrive as exceptions."""
    try:
        import decord
    except ImportError:
        return None
    decord.logging.set_level(decord.logging.QUIET)
    return decord


class _DecordFailure(Exception):
    """decord could not open or decode the file (auto mode then falls back to PyAV)."""


def _decord_message(error: Exception) -> str:
    """First line of a decord error without its "[hh:mm:ss] /src/file.cc:123: " prefixes."""
    text = str(error).strip()
    return re.sub(r"^(?:\[[\d:]+\] \S+:\d+: )+", "", text.splitlines()[0]) if text else type(error).__name__


def _decode_decord(
    path: Path, positions_for: Callable[[int], list[int]], size: tuple[int, int] | None, crop: str
) -> tuple[list[torch.Tensor], int]:
    """Fetch frames with decord's random access: `positions_for(n)` maps decord's frame count n to the indices.
    Returns the frames (an empty list when an index is out of range) and n."""
    decord = _import_decord()
    assert decord is not None
    # decord raises DECORDError for decode failures and RuntimeError for files it cannot open.
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        available = len(reader)
        indices = positions_for(available)
        if not indices or max(indices) >= available:
            return [], available
        unique = sorted(set(indices))
        frames: dict[int, torch.Tensor] = {}
        for lo in range(0, len(unique), _DECORD_CHUNK):
            chunk = unique[lo : lo + _DECORD_CHUNK]
            for i, frame_HWC in zip(chunk, reader.get_batch(chunk).asnumpy()):
                frames[i] = _resize_frame(frame_HWC, size, crop)
    except (decord.DECORDError, RuntimeError) as e:
        raise _DecordFailure(_decord_message(e)) from e
    return [frames[i] for i in indices], available


def read_video(
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    stride: int | None = None,
    start: int = 0,
    size: tuple[int, int] | None = None,
    crop: str = "center",
    backend: str = "auto",
) -> torch.Tensor:
    """Decode a video file into float32 [3, T, H, W] in [0, 1].

    Args:
        path: the video file (anything FFmpeg reads: mp4, mkv, webm, gif, ...).
        num_frames: frames to return; `None` returns every sampled frame to the end of the video.
        fps: resample the source timeline to this rate (nearest frame). Exclusive with `stride`.
        stride: take every `stride`-th source frame. Exclusive with `fps`; neither means stride 1.
        start: first source frame.
        size: `(H, W)` of the output; `None` keeps the source size.
        crop: `"center"` (cover H×W keeping aspect, then centre-crop) or `"none"` (stretch to H×W).
        backend: `"auto"`, `"pyav"` or `"decord"` (see the module docstring).

    Raises:
        VideoReadError: the file is missing, empty, not a video, truncated or undecodable.
        VideoTooShortError: (a VideoReadError) the video has fewer frames than the request needs.
        ValueError: invalid arguments.
        ImportError: `backend="decord"` without decord installed.
    """
    _check_sampling_args(num_frames, fps, stride, start)
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (height, width) with positive entries, got {size}")
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {CROPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "decord" and _import_decord() is None:
        raise ImportError('backend="decord" needs decord: pip install "vidpost[video]" (or use backend="pyav")')
    size = None if size is None else (int(size[0]), int(size[1]))

    path = Path(path)
    info = probe_video(path)
    request = _describe_request(num_frames, fps, stride, start)
    indices: list[int] = []
    if num_frames is not None:  # fail before decoding when the header already says the video is too short
        indices = _sample_positions(info.num_frames, info.fps, num_frames, fps, stride, start)
        if indices[-1] >= info.num_frames:
            raise VideoTooShortError(path, info.num_frames, indices[-1] + 1, request)
    elif start >= info.num_frames:
        raise VideoTooShortError(path, info.num_frames, start + 1, request)

    frames: list[torch.Tensor] | None = None
    if backend in ("auto", "decord") and _import_decord() is not None:

        def positions_for(available: int) -> list[int]:
            if num_frames is not None:
                return indices
            return _sample_positions(available, info.fps, None, fps, stride, start)

        try:
            frames, available = _decode_decord(path, positions_for, size, crop)
        except _DecordFailure as e:
            if backend == "decord":
                raise VideoReadError(path, f"decord failed: {e}") from e
    if frames is None:
        positions = iter(indices) if num_frames is not None else _iter_positions(info.fps, fps, stride, start)
        frames, available = _decode_pyav(path, positions, size, crop)

    # `available` is what the backend could actually read: fewer frames than the header declares means truncation.
    truncated = f"; the container declares {info.num_frames}, so the file is probably truncated"
    note = truncated if available < info.num_frames else ""
    if num_frames is not None and len(frames) < num_frames:
        raise VideoTooShortError(path, available, indices[-1] + 1, request + note)
    if num_frames is None and (note or not frames):
        raise VideoTooShortError(path, available, max(info.num_frames, start + 1), request + note)
    if len({tuple(f.shape) for f in frames}) > 1:
        raise VideoReadError(path, "the frame size changes within the stream; pass size=(H, W) to resize")
    return torch.stack(frames, dim=1)


# ---------------------------------------------------------------------------------------------------- writing


def to_uint8_frames(video: VideoLike) -> np.ndarray:
    """Convert a video to uint8 [T, H, W, 3] (a new array).

    Accepts float [C, T, H, W] in [0, 1] (torch or numpy, any float dtype; values are clamped to [0, 1], scaled by
    255 and rounded half up) or uint8 [T, H, W, C]; C may be 1 (grey, repeated to RGB) or 3. The layout is decided by
    the dtype: floating point means channels-first, uint8 means channels-last.

    Raises:
        ValueError: wrong rank, channel count or dtype, or non-finite values.
    """
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu()
        video = video.numpy() if video.dtype == torch.uint8 else video.float().numpy()
    array = np.asarray(video)
    if array.ndim != 4:
        raise ValueError(f"expected a 4-D video (float [C, T, H, W] or uint8 [T, H, W, C]), got shape {array.shape}")
    if array.dtype == np.uint8:
        frames = array.copy()
    elif np.issubdtype(array.dtype, np.floating):
        if array.shape[0] not in (1, 3):
            raise ValueError(f"float video must be [C, T, H, W] with C in (1, 3), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("video contains NaN or infinite values")
        frames = np.floor(np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 3, 0)
    else:
        raise ValueError(
            f"video dtype must be floating point ([C, T, H, W]) or uint8 ([T, H, W, C]), got {array.dtype}"
        )
    if frames.shape[-1] not in (1, 3):
        raise ValueError(f"uint8 video must be [T, H, W, C] with C in (1, 3), got shape {array.shape}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"video has an empty dimension: [T, H, W] = {list(frames.shape[:3])}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames)


def _write_mp4(target: Path, frames_THWC: np.ndarray, fps: float, crf: int, preset: str | None = None) -> None:
    _, h, w, _ = frames_THWC.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes: repeat the last row / column
        frames_THWC = np.pad(frames_THWC, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(str(target), "w", format="mp4", container_options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames_THWC.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)} if preset is None else {"crf": str(crf), "preset": preset}
        stream.codec_context.thread_count = 1  # threaded libx264 output varies from run to run on identical input
        for frame_HWC in frames_THWC:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_HWC, format="rgb24")))
        container.mux(stream.encode(None))


def _write_gif(target: Path, frames_THWC: np.ndarray, fps: float) -> None:
    delay_ms = 10 * max(2, round(100.0 / fps))  # GIF delays are centiseconds; browsers slow delays < 2 cs down
    images = [Image.fromarray(frame_HWC) for frame_HWC in frames_THWC]
    images[0].save(target, format="GIF", save_all=True, append_images=images[1:], duration=delay_ms, loop=0)


def write_video(
    path: str | os.PathLike, video: VideoLike, *, fps: float = 8.0, crf: int = 12, preset: str | None = None
) -> Path:
    """Write a video atomically as H.264 `.mp4` or animated `.gif` (chosen by the extension); returns the path.

    Args:
        path: output file; parent folders are created.
        video: float [C, T, H, W] in [0, 1] or uint8 [T, H, W, C], torch or numpy (see `to_uint8_frames`).
        fps: frame rate.
        crf: x264 constant rate factor, 0 (best) … 51 (worst); ignored for GIF.
        preset: x264 speed / compression preset ("ultrafast" … "placebo"); None leaves x264's default ("medium").
            Ignored for GIF.

    Raises:
        ValueError: unsupported extension, bad fps / crf, or a malformed video.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unsupported video extension {path.suffix!r} for {path}; expected one of {VIDEO_SUFFIXES}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51], got {crf}")
    frames_THWC = to_uint8_frames(video)
    with atomic_file(path) as tmp:
        if suffix == ".gif":
            _write_gif(tmp, frames_THWC, fps)
        else:
            _write_mp4(tmp, frames_THWC, fps, crf, preset)
    return path


# ------------------------------------------------------------------------------------------------ contact sheet


def _as_video_list(videos: VideoLike | Sequence[VideoLike]) -> list[np.ndarray]:
    if isinstance(videos, (torch.Tensor, np.ndarray)):
        if videos.ndim == 5:
            return [to_uint8_frames(v) for v in videos]
        return [to_uint8_frames(videos)]
    videos = list(videos)
    if not videos:
        raise ValueError("contact_sheet needs at least one video")
    return [to_uint8_frames(v) for v in videos]


def _evenly_spaced(num_source: int, num: int) -> list[int]:
    """min(num, num_source) indices from 0 to num_source − 1, evenly spaced, rounded half up."""
    n = min(num, num_source)
    if n == 1:
        return [0]
    return [math.floor(k * (num_source - 1) / (n - 1) + 0.5) for k in range(n)]


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """Greedy word wrap of `text` to `width` pixels (a word longer than the width gets a line of its own)."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if line and measure.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def _caption_strip(text: str, width: int) -> np.ndarray:
    """uint8 [h, width, 3]: black `text` on white, wrapped to the width."""
    font = ImageFont.load_default()
    wrapped = _wrap(text, font, max(1, width - 2 * _SHEET_GUTTER))
    # The height depends on the number of lines only, so captions of equal length give rows of equal height.
    ruler = "\n".join(["Ag"] * (wrapped.count("\n") + 1))
    _, _, _, text_bottom = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), ruler, font=font)
    strip = Image.new("RGB", (width, text_bottom + 2 * _SHEET_GUTTER), (_SHEET_BACKGROUND,) * 3)
    ImageDraw.Draw(strip).multiline_text((_SHEET_GUTTER, _SHEET_GUTTER), wrapped, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def contact_sheet(
    videos: VideoLike | Sequence[VideoLike],
    path: str | os.PathLike,
    *,
    frames: int = 8,
    labels: list[str] | None = None,
    scale: int = 2,
) -> Path:
    """Save a PNG grid with one row per video and `frames` evenly spaced frames per row; returns the path.

    Args:
        videos: one video, a list of videos (sizes and lengths may differ) or a batch [B, C, T, H, W]; each video
            float [C, T, H, W] in [0, 1] or uint8 [T, H, W, C].
        path: output `.png`; parent folders are created; written atomically.
        frames: frames per row (a video with fewer frames shows all of them).
        labels: optional caption per row, drawn above the row.
        scale: integer nearest-neighbour upscaling factor, so that 64×64 frames are visible.

    Layout: frame cells of scale·H × scale·W separated by 2-pixel white gutters; rows (each preceded by its
    caption strip when `labels` is given) separated by 2-pixel gutters; the sheet is as wide as the widest row.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"contact sheets are PNG files; got {path}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    clips = _as_video_list(videos)
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"got {len(labels)} labels for {len(clips)} videos")

    rows: list[np.ndarray] = []
    for clip_THWC in clips:
        picked = clip_THWC[_evenly_spaced(len(clip_THWC), frames)]
        picked = picked.repeat(scale, axis=1).repeat(scale, axis=2)
        n, cell_h, cell_w, _ = picked.shape
        row = np.full((cell_h, n * cell_w + (n - 1) * _SHEET_GUTTER, 3), _SHEET_BACKGROUND, np.uint8)
        for k, frame_HWC in enumerate(picked):
            left = k * (cell_w + _SHEET_GUTTER)
            row[:, left : left + cell_w] = frame_HWC
        rows.append(row)

    sheet_w = max(row.shape[1] for row in rows)
    blocks: list[np.ndarray] = []
    gutter = np.full((_SHEET_GUTTER, sheet_w, 3), _SHEET_BACKGROUND, np.uint8)
    for r, row in enumerate(rows):
        if r:
            blocks.append(gutter)
        if labels is not None:
            blocks.append(_caption_strip(labels[r], sheet_w))
        padded = np.full((row.shape[0], sheet_w, 3), _SHEET_BACKGROUND, np.uint8)
        padded[:, : row.shape[1]] = row
        blocks.append(padded)
    sheet = np.concatenate(blocks, axis=0)
    with atomic_file(path) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path
