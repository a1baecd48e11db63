"""Tests for vidpost.media.video_io: sampling maths, decode / encode round trips, corrupt inputs, contact sheets.

Every read test runs on each backend: "pyav", "auto" (decord when importable, else PyAV) and "decord" (skipped when
decord is not installed).
"""

from __future__ import annotations

import pickle
import struct

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vidpost.media import video_io
from vidpost.media.video_io import (
    VideoInfo,
    VideoReadError,
    VideoTooShortError,
    contact_sheet,
    frame_indices,
    probe_video,
    read_video,
    to_uint8_frames,
    write_video,
)

HAS_DECORD = video_io._import_decord() is not None
BACKENDS = [
    "pyav",
    "auto",
    pytest.param("decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")),
]

# Round-trip PSNR floor for the synthetic clip below at crf=12. Measured: 35.6 dB (crf=0 gives 36.0 dB, so the loss
# is 4:2:0 chroma subsampling of the red square's edges plus 8-bit YUV rounding, not the codec). The same clip with
# typical pipeline bugs, measured against the original: one frame off 19.9 dB, one-pixel shift 27.7 dB, full/limited
# range mix-up 27.4 dB, RGB/BGR swap 10.3 dB. 33 dB sits 2.6 dB under the measurement and 5 dB over every bug.
ROUND_TRIP_MIN_PSNR = 33.0


def synthetic_video(T: int = 16, H: int = 48, W: int = 64) -> torch.Tensor:
    """float [3, T, H, W]: moving smooth colour waves plus a red square moving right 2 px per frame."""
    t = torch.arange(T).float()[:, None, None]
    y = torch.arange(H).float()[None, :, None]
    x = torch.arange(W).float()[None, None, :]
    r = 0.5 + 0.4 * torch.sin(2 * torch.pi * (x / W + t / T))
    g = 0.5 + 0.4 * torch.cos(2 * torch.pi * (y / H - t / T))
    b = (x + y) / (H + W)
    video = torch.stack([c.expand(T, H, W) for c in (r, g, b)]).clone()
    for k in range(T):
        video[:, k, 10:22, 4 + 2 * k : 16 + 2 * k] = torch.tensor([0.9, 0.1, 0.2])[:, None, None]
    return video.clamp(0, 1)


def level_video(T: int, H: int = 32, W: int = 32) -> torch.Tensor:
    """float [3, T, H, W]: frame k is flat grey (8 + 12k) / 255, so a decoded frame tells its source index."""
    levels = (8 + 12 * torch.arange(T).float()) / 255
    return levels[None, :, None, None].expand(3, T, H, W).contiguous()


def level_ids(video: torch.Tensor) -> list[int]:
    return [round((float(video[:, k].mean()) * 255 - 8) / 12) for k in range(video.shape[1])]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[torch.Tensor, object]:
    """The synthetic clip and its mp4 (16 frames, 8 fps, crf 12)."""
    video = synthetic_video()
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", video, fps=8, crf=12)
    return video, path


@pytest.fixture(scope="module")
def levels_24fps(tmp_path_factory):
    """20 frames at 24 fps, frame k at grey level (8 + 12k) / 255, lossless (crf 0)."""
    return write_video(tmp_path_factory.mktemp("levels") / "levels.mp4", level_video(20), fps=24, crf=0)


# ------------------------------------------------------------------------------------------------ frame_indices


@pytest.mark.parametrize(
    ("n_src", "src_fps", "kwargs", "expected"),
    [
        (10, 30.0, dict(num_frames=3), [0, 1, 2]),
        (10, 30.0, dict(num_frames=3, start=2), [2, 3, 4]),
        (10, 30.0, dict(num_frames=4, stride=3), [0, 3, 6, 9]),
        (10, 30.0, dict(num_frames=None, stride=4), [0, 4, 8]),
        (10, 30.0, dict(num_frames=None, stride=4, start=3), [3, 7]),
        (10, 30.0, dict(num_frames=None), list(range(10))),
        # 30 -> 8 fps: step 3.75 -> 0, 3.75, 7.5 (tie: later frame), 11.25
        (12, 30.0, dict(num_frames=4, fps=8), [0, 4, 8, 11]),
        # 24 -> 10 fps: step 2.4 -> 0, 2.4, 4.8, 7.2, 9.6; from frame 3: 3, 5.4, 7.8, 10.2, 12.6
        (20, 24.0, dict(num_frames=5, fps=10), [0, 2, 5, 7, 10]),
        (20, 24.0, dict(num_frames=5, fps=10, start=3), [3, 5, 8, 10, 13]),
        # 10 -> 4 fps over the whole clip: 0, 2.5, 5, 7.5, (10 is past the end)
        (10, 10.0, dict(num_frames=None, fps=4), [0, 3, 5, 8]),
        # 8 -> 20 fps repeats frames: step 0.4 -> 0, 0.4, 0.8, 1.2, 1.6, 2.0
        (3, 8.0, dict(num_frames=6, fps=20), [0, 0, 1, 1, 2, 2]),
        # NTSC 30000/1001 -> 15 fps: step 1.998 -> 0, 1.998, 3.996, 5.994
        (8, 30000 / 1001, dict(num_frames=4, fps=15), [0, 2, 4, 6]),
        # same rate is the identity
        (5, 30000 / 1001, dict(num_frames=None, fps=30000 / 1001), [0, 1, 2, 3, 4]),
    ],
)
def test_frame_indices_hand_worked(n_src, src_fps, kwargs, expected):
    assert frame_indices(n_src, src_fps, **kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_frames=4, stride=3, start=1), "has 10 frames but 11 are needed"),
        (dict(num_frames=11), "has 10 frames but 11 are needed"),
        (dict(num_frames=5, fps=12), "has 10 frames but 11 are needed"),  # 30 -> 12 fps: 0, 2.5, 5, 7.5, 10
        (dict(num_frames=None, start=10), "has 10 frames but 11 are needed"),
        (dict(num_frames=2, fps=8, stride=2), "at most one of fps and stride"),
        (dict(num_frames=0), "num_frames must be >= 1"),
        (dict(num_frames=2, stride=0), "stride must be >= 1"),
        (dict(num_frames=2, start=-1), "start must be >= 0"),
        (dict(num_frames=2, fps=0.0), "fps must be a positive number"),
    ],
)
def test_frame_indices_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        frame_indices(10, 30.0, **kwargs)


# ---------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip(clip, backend):
    video, path = clip
    out = read_video(path, backend=backend)
    assert out.shape == (3, 16, 48, 64) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert psnr(out, video) > ROUND_TRIP_MIN_PSNR


def test_probe(clip):
    _, path = clip
    assert probe_video(path) == VideoInfo(num_frames=16, fps=8.0, height=48, width=64, duration=2.0)


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
@pytest.mark.parametrize("kwargs", [dict(), dict(num_frames=5, fps=3, start=2, size=(24, 40)), dict(stride=3)])
def test_decord_and_pyav_agree(clip, kwargs):
    _, path = clip
    torch.testing.assert_close(
        read_video(path, backend="decord", **kwargs), read_video(path, backend="pyav", **kwargs)
    )


@pytest.mark.skipif(not HAS_DECORD, reason="decord not installed")
def test_auto_falls_back_to_pyav_when_decord_fails(tmp_path):
    """decord 0.6 fails on some frame widths (8, 16, 24, 48, 72 px: a row-size check in its array copy) and on GIFs;
    "auto" then decodes with PyAV, while an explicit "decord" reports the failure as a VideoReadError."""
    path = write_video(tmp_path / "w48.mp4", synthetic_video(T=4, H=32, W=48))
    with pytest.raises(VideoReadError, match="decord failed"):
        read_video(path, backend="decord")
    torch.testing.assert_close(read_video(path, backend="auto"), read_video(path, backend="pyav"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(num_frames=5, fps=10), [0, 2, 5, 7, 10]),
        (dict(num_frames=5, fps=10, start=3), [3, 5, 8, 10, 13]),
        (dict(num_frames=4, fps=48), [0, 1, 1, 2]),  # step 0.5: 0, 0.5, 1, 1.5 (ties to the later frame)
        (dict(stride=4), [0, 4, 8, 12, 16]),
        (dict(num_frames=3, start=17), [17, 18, 19]),
        (dict(fps=6, start=1), [1, 5, 9, 13, 17]),  # num_frames=None: to the end, step 4
    ],
)
def test_read_sampling(levels_24fps, backend, kwargs, expected):
    out = read_video(levels_24fps, backend=backend, **kwargs)
    assert level_ids(out) == expected
    assert out.shape == (3, len(expected), 32, 32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("kwargs", "needed"), [(dict(num_frames=17), 17), (dict(num_frames=9, stride=2), 17), (dict(start=16), 17)]
)
def test_too_short(clip, backend, kwargs, needed):
    _, path = clip
    with pytest.raises(VideoTooShortError, match=f"video has 16 frames but {needed} are needed") as info:
        read_video(path, backend=backend, **kwargs)
    assert isinstance(info.value, VideoReadError)
    assert (info.value.num_available, info.value.num_needed) == (16, needed)


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _huge_frame_count(data: bytes) -> bytes:
    """Set the first stts entry's sample count to 2^31 - 1: the header then declares ~2 billion frames."""
    data = bytearray(data)
    at = data.find(b"stts")
    assert at > 0 and struct.unpack(">I", data[at + 8 : at + 12])[0] == 1  # one (count, delta) entry
    data[at + 12 : at + 16] = struct.pack(">I", 2**31 - 1)
    return bytes(data)


CORRUPT_CASES = {
    "missing": (None, "file not found"),
    "zero_bytes": (lambda good: b"", "file is empty"),
    "text_renamed": (lambda good: b"this is a caption file, not a video\n" * 20, "not a readable media file"),
    "random_bytes": (lambda good: np.random.default_rng(0).bytes(5000), "not a readable media file"),
    "truncated_header": (lambda good: good[:200], "no video stream|not a readable media file|no decoder"),
    "truncated_half": (lambda good: good[: len(good) // 2], "decoding failed|decord failed|probably truncated"),
    "huge_frame_count": (_huge_frame_count, "corrupt header: it declares 2147483647 frames"),
    "audio_only": ("audio", r"no video stream \(streams: audio\)"),
    "directory": ("dir", "not a regular file"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CORRUPT_CASES))
def test_corrupt_inputs_raise_video_read_error(clip, tmp_path, backend, case):
    _, good_path = clip
    make, match = CORRUPT_CASES[case]
    path = tmp_path / "bad.mp4"
    if make == "audio":
        _audio_only(path)
    elif make == "dir":
        path.mkdir()
    elif make is not None:
        path.write_bytes(make(good_path.read_bytes()))
    with pytest.raises(VideoReadError, match=match) as info:
        read_video(path, backend=backend)
    assert info.value.path == path and str(path) in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_truncation_raises(clip, tmp_path, backend):
    """Cutting the file anywhere loses frames (the moov atom is at the front), so a full read must always fail."""
    _, good_path = clip
    data = good_path.read_bytes()
    path = tmp_path / "cut.mp4"
    for cut in range(1, len(data), 173):
        path.write_bytes(data[:cut])
        with pytest.raises(VideoReadError):
            read_video(path, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_byte_corruption_never_escapes_as_another_type(clip, tmp_path, backend):
    _, good_path = clip
    data = np.frombuffer(good_path.read_bytes(), np.uint8)
    rng = np.random.default_rng(1)
    path = tmp_path / "fuzz.mp4"
    outcomes = {"ok": 0, "error": 0}
    for trial in range(60):
        bad = data.copy()
        where = rng.integers(0, len(bad), size=rng.integers(1, 20))
        bad[where] = rng.integers(0, 256, size=len(where), dtype=np.uint8)
        path.write_bytes(bad.tobytes())
        try:
            out = read_video(path, backend=backend, num_frames=None if trial % 2 else 4, size=(32, 32))
        except VideoReadError:
            outcomes["error"] += 1
        else:
            assert out.shape[0] == 3 and out.shape[2:] == (32, 32) and out.dtype == torch.float32
            outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0  # the corruption exercised both outcomes


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_center_crop_and_stretch(tmp_path, backend):
    """H=32, W=96 frames with red | green | blue thirds."""
    video = torch.zeros(3, 4, 32, 96)
    for c in range(3):
        video[c, :, :, 32 * c : 32 * (c + 1)] = 1.0
    path = write_video(tmp_path / "thirds.mp4", video, crf=0)

    for size in [(32, 32), (16, 16)]:  # no resize / 2x downscale; the centre window is the green third
        out = read_video(path, size=size, backend=backend)
        assert out.shape == (3, 4, *size)
        inner = out[:, :, 2:-2, 2:-2].mean((1, 2, 3))  # away from the colour edges (4:2:0 chroma bleeds a little)
        assert inner[1] > 0.9 and inner[0] < 0.1 and inner[2] < 0.1, inner

    out = read_video(path, size=(30, 30), crop="none", backend=backend)  # stretched: all three thirds, squeezed
    assert out.shape == (3, 4, 30, 30)
    left, middle, right = out[:, :, :, 2:8].mean((1, 2, 3)), out[:, :, :, 12:18].mean((1, 2, 3)), out[..., 22:28]
    assert left.argmax() == 0 and middle.argmax() == 1 and right.mean((1, 2, 3)).argmax() == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_is_antialiased(tmp_path, backend):
    """Grey 1-pixel stripes 1, 0, 0 shrunk 3x: a filtered resize gives ~1/3 everywhere; point sampling (no
    antialiasing) hits the same phase of every period and gives 0 or 1."""
    stripes = torch.tensor([1.0, 0.0, 0.0]).repeat(32)  # 96 columns
    video = stripes.expand(3, 2, 96, 96).contiguous()
    path = write_video(tmp_path / "stripes.mp4", video, crf=0)
    out = read_video(path, size=(32, 32), crop="none", backend=backend)
    inner = out[..., 1:-1]  # the border columns see half a filter window (measured 0.375 and 0.25)
    assert (inner - 1 / 3).abs().max() < 0.02


def test_invalid_arguments_are_value_errors_not_bad_files(clip):
    _, path = clip
    for kwargs in [
        dict(size=(0, 8)),
        dict(crop="left"),
        dict(backend="ffmpeg"),
        dict(fps=4, stride=2),
        dict(num_frames=0),
    ]:
        with pytest.raises(ValueError) as info:
            read_video(path, **kwargs)
        assert not isinstance(info.value, VideoReadError)
    with pytest.raises(ValueError, match="unknown crop"):  # checked before the file is touched
        read_video("/nonexistent.mp4", crop="left")


def test_without_decord(monkeypatch, clip):
    _, path = clip
    monkeypatch.setattr(video_io, "_import_decord", lambda: None)
    with pytest.raises(ImportError, match="decord"):
        read_video(path, backend="decord")
    torch.testing.assert_close(read_video(path, backend="auto"), read_video(path, backend="pyav"))


def test_errors_pickle():
    for error in [VideoReadError("/data/a.mp4", "file is empty"), VideoTooShortError("/data/b.mp4", 3, 9, "stride=4")]:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.path == error.path
    assert "video has 3 frames but 9 are needed (stride=4)" in str(VideoTooShortError("b.mp4", 3, 9, "stride=4"))


# ---------------------------------------------------------------------------------------------------- writing


def test_to_uint8_frames():
    values = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.25])
    video = values[None, None, None, :].expand(3, 1, 1, 6)  # [C, T, H, W]
    assert to_uint8_frames(video)[0, 0, :, 0].tolist() == [0, 128, 255, 255, 0, 64]  # clamp, x255, half up

    video = torch.zeros(3, 2, 4, 5)
    video[0], video[1], video[2] = 0.2, 0.4, 0.6
    out = to_uint8_frames(video)
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8 and out[1, 3, 4].tolist() == [51, 102, 153]
    np.testing.assert_array_equal(to_uint8_frames(video.numpy()), out)
    np.testing.assert_array_equal(to_uint8_frames(video.to(torch.bfloat16)), to_uint8_frames(video.bfloat16().float()))
    np.testing.assert_array_equal(to_uint8_frames(out), out)  # uint8 [T, H, W, C] passes through
    assert to_uint8_frames(out) is not out
    grey = to_uint8_frames(torch.full((1, 2, 4, 5), 0.5))
    assert grey.shape == (2, 4, 5, 3) and (grey == 128).all()

    for bad, match in [
        (torch.zeros(3, 4, 5), "4-D"),
        (torch.zeros(4, 2, 4, 5), "C in"),
        (np.zeros((2, 4, 5, 3), np.int64), "dtype"),
        (torch.full((3, 1, 2, 2), float("nan")), "NaN"),
        (np.zeros((2, 4, 5, 4), np.uint8), "C in"),
        (torch.zeros(3, 0, 4, 4), "empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            to_uint8_frames(bad)


def test_uint8_and_float_inputs_write_the_same_bytes(tmp_path):
    """float torch, float numpy and uint8 [T, H, W, C] of the same frames give byte-identical files (the writer is
    deterministic; with threaded x264 this fails only now and then, so it is no guard for that setting)."""
    video = synthetic_video(T=6)
    inputs = [video, video.numpy(), to_uint8_frames(video), torch.from_numpy(to_uint8_frames(video))]
    files = [write_video(tmp_path / f"{i}.mp4", v).read_bytes() for i, v in enumerate(inputs)]
    assert all(f == files[0] for f in files)
    out = read_video(tmp_path / "2.mp4", backend="pyav")
    assert out.shape == (3, 6, 48, 64) and psnr(out, video) > ROUND_TRIP_MIN_PSNR


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_sizes_are_padded_to_even(tmp_path, backend):
    video = synthetic_video(T=5, H=33, W=63)
    path = write_video(tmp_path / "odd.mp4", video)
    out = read_video(path, backend=backend)
    assert out.shape == (3, 5, 34, 64)
    assert psnr(out[:, :, :33, :63], video) > ROUND_TRIP_MIN_PSNR
    # the pad repeats the last row / column
    assert (out[:, :, 33] - out[:, :, 32]).abs().mean() < 0.02
    assert (out[..., 63] - out[..., 62]).abs().mean() < 0.02


def test_write_gif(tmp_path):
    colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.float32)
    video = colours.T[:, :, None, None].expand(3, 6, 20, 30).contiguous()  # 6 distinct flat frames, H=20, W=30
    path = write_video(tmp_path / "sub" / "anim.gif", video, fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.size == (30, 20) and gif.n_frames == 6
        assert gif.info["loop"] == 0 and gif.info["duration"] == 100
        for k in range(6):
            gif.seek(k)
            frame = np.asarray(gif.convert("RGB"))
            np.testing.assert_array_equal(frame, np.broadcast_to(to_uint8_frames(video)[k], frame.shape))
    out = read_video(path, backend="auto")  # decord cannot open GIFs; auto falls back to PyAV
    torch.testing.assert_close(out, read_video(path, backend="pyav"))
    torch.testing.assert_close(out, video, rtol=0, atol=1 / 255)


def test_write_creates_parents_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b" / "clip.mp4"
    write_video(target, synthetic_video(T=3, H=16, W=16))
    first = target.read_bytes()
    write_video(target, synthetic_video(T=5, H=16, W=16))  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]
    assert target.read_bytes() != first and probe_video(target).num_frames == 5


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = write_video(tmp_path / "clip.mp4", synthetic_video(T=3, H=16, W=16))
    before = target.read_bytes()

    def broken_encoder(tmp, frames, fps, crf, preset=None):
        tmp.write_bytes(b"half a video")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(video_io, "_write_mp4", broken_encoder)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(target, synthetic_video(T=5, H=16, W=16))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_write_rejects_bad_arguments(tmp_path):
    video = synthetic_video(T=2, H=8, W=8)
    for kwargs, match in [
        (dict(path=tmp_path / "x.avi"), "unsupported video extension"),
        (dict(path=tmp_path / "x.mp4", crf=60), "crf"),
        (dict(path=tmp_path / "x.mp4", fps=0), "fps"),
        (dict(path=tmp_path / "x.mp4", video=torch.full((3, 2, 8, 8), float("nan"))), "NaN"),
    ]:
        kwargs = dict(dict(video=video), **kwargs)
        with pytest.raises(ValueError, match=match):
            write_video(kwargs.pop("path"), kwargs.pop("video"), **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- contact sheet


def _sheet_videos() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, 12, 64, 64, generator=gen) for _ in range(3)]


def _cell(video: torch.Tensor, t: int, scale: int) -> np.ndarray:
    return to_uint8_frames(video)[t].repeat(scale, axis=0).repeat(scale, axis=1)


def test_contact_sheet_layout(tmp_path):
    videos = _sheet_videos()
    path = contact_sheet(videos, tmp_path / "sheets" / "grid.png", frames=8, scale=2)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    # 8 cells of 128 px + 7 gutters of 2 px; 3 rows of 128 px + 2 gutters
    assert sheet.shape == (3 * 128 + 2 * 2, 8 * 128 + 7 * 2, 3)
    # evenly spaced frames round(linspace(0, 11, 8)) = 0, 2, 3, 5, 6, 8, 9, 11; nearest-neighbour upscaled
    for row, video in enumerate(videos):
        for k, t in enumerate([0, 2, 3, 5, 6, 8, 9, 11]):
            top, left = row * 130, k * 130
            np.testing.assert_array_equal(sheet[top : top + 128, left : left + 128], _cell(video, t, 2))
    assert (sheet[128:130] == 255).all() and (sheet[:, 128:130] == 255).all()  # gutters

    batch = contact_sheet(torch.stack(videos), tmp_path / "batch.png", frames=8, scale=2)
    np.testing.assert_array_equal(np.asarray(Image.open(batch).convert("RGB")), sheet)


def test_contact_sheet_labels(tmp_path):
    videos = _sheet_videos()
    plain = np.asarray(Image.open(contact_sheet(videos, tmp_path / "plain.png")).convert("RGB"))
    labels = ["a red circle moves to the right", "a blue square moves up", "a green triangle moves left"]
    sheet = np.asarray(Image.open(contact_sheet(videos, tmp_path / "labelled.png", labels=labels)).convert("RGB"))
    strip = (sheet.shape[0] - plain.shape[0]) // 3
    assert strip > 8 and sheet.shape == (plain.shape[0] + 3 * strip, plain.shape[1], 3)
    for row in range(3):  # caption strip, then the same frames as the unlabelled sheet
        top = row * (strip + 128 + 2)
        caption = sheet[top : top + strip]
        assert (caption.min(axis=2) < 100).sum() > 30, f"no dark text pixels in caption {row}"
        np.testing.assert_array_equal(sheet[top + strip : top + strip + 128], plain[row * 130 : row * 130 + 128])
    assert not np.array_equal(sheet[:strip], sheet[strip + 130 : 2 * strip + 130])  # different text, different pixels

    blank = np.asarray(Image.open(contact_sheet(videos, tmp_path / "blank.png", labels=["", "", ""])).convert("RGB"))
    assert (blank[:strip] == 255).all()  # so the dark pixels above are the text


def test_contact_sheet_mixed_sizes_and_short_videos(tmp_path):
    short = torch.rand(3, 3, 16, 16)  # fewer frames than requested: all 3 shown
    wide = to_uint8_frames(torch.rand(3, 10, 8, 24))  # uint8 [T, H, W, C]
    sheet = np.asarray(Image.open(contact_sheet([short, wide], tmp_path / "mixed.png", frames=4, scale=1)))
    assert sheet.shape == (16 + 2 + 8, 4 * 24 + 3 * 2, 3)
    np.testing.assert_array_equal(sheet[:16, 36:52], to_uint8_frames(short)[2])  # third and last frame of row 0
    assert (sheet[:16, 52:] == 255).all()  # the short row is padded with background
    np.testing.assert_array_equal(sheet[18:, 78:], wide[9])  # last cell of row 1 is the last frame


def test_contact_sheet_rejects_bad_arguments(tmp_path):
    videos = _sheet_videos()
    with pytest.raises(ValueError, match="2 labels for 3 videos"):
        contact_sheet(videos, tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="PNG"):
        contact_sheet(videos, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="scale"):
        contact_sheet(videos, tmp_path / "x.png", scale=0)
    assert list(tmp_path.iterdir()) == []
