"""Exporting Shapes-world splits to mp4 + JSONL, resuming, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest

from vidpost.media.video_io import read_video
from vidpost.pipelines.shapes import main
from vidpost.shapes.export import export, write_clip
from vidpost.shapes.verifier import verify
from vidpost.shapes.world import SceneSpec

KEYS = {
    "id",
    "video",
    "caption",
    "prompt_user",
    "caption_noisy",
    "spec",
    "seed",
    "num_frames",
    "height",
    "width",
    "fps",
}


def _rows(manifest):
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_export_writes_readable_mp4s_and_manifest(tmp_path):
    manifest = export(tmp_path, split="train", n=6, num_frames=9, height=48, width=64, progress=False)
    assert manifest == tmp_path / "manifest.jsonl"
    rows = _rows(manifest)
    assert len(rows) == 6
    for row in rows:
        assert set(row) == KEYS
        path = tmp_path / row["video"]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == 9 and frames[0].shape == (48, 64, 3)
        video = read_video(path)
        assert verify(video, SceneSpec.from_dict(row["spec"]))["success"], row["caption"]
        assert path.stat().st_size < 20_000


def test_export_resumes(tmp_path):
    manifest = export(tmp_path, n=5, progress=False)
    first = manifest.read_text(encoding="utf-8")
    paths = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(paths) == 5
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    paths[1].unlink()
    paths[3].write_bytes(paths[3].read_bytes()[:200])  # a truncated, unreadable file
    export(tmp_path, n=5, progress=False)
    assert manifest.read_text(encoding="utf-8") == first
    for p in paths:
        if p in (paths[1], paths[3]):
            assert read_video(p).shape == (3, 17, 64, 64)
        else:
            assert p.stat().st_mtime_ns == stamps[p]  # complete clips are not rewritten
    export(tmp_path, n=7, progress=False)  # growing the export adds only the new clips
    assert len(_rows(manifest)) == 7 and _rows(manifest)[:5] == [json.loads(x) for x in first.splitlines()]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in paths if p not in (paths[1], paths[3]))


def test_export_heldout_and_errors(tmp_path):
    rows = _rows(export(tmp_path, split="heldout", n=3, progress=False))
    assert [r["id"] for r in rows] == ["heldout-v1-000", "heldout-v1-001", "heldout-v1-002"]
    with pytest.raises(ValueError, match="pass n"):
        export(tmp_path, split="train")
    with pytest.raises(ValueError, match="unknown split"):
        export(tmp_path, split="val", n=2)
    with pytest.raises(ValueError, match="even height and width"):
        write_clip(tmp_path / "x.mp4", np.zeros((3, 2, 33, 32), dtype=np.float32))


def test_cli_export_and_stats(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path), "--n", "2", "--frames", "5"]) == 0
    assert len(_rows(tmp_path / "manifest.jsonl")) == 2
    assert main(["verifier-stats", "--n", "12", "--degrade"]) == 0
    out = capsys.readouterr().out
    assert "ground-truth success" in out and "false success" in out and "degraded" in out
    gt_line = next(line for line in out.splitlines() if line.startswith("ground-truth success"))
    assert [float(x) for x in gt_line.split()[-2:]] == [1.0, 1.0]
    with pytest.raises(SystemExit):
        main(["export"])  # --out is required


def test_the_vidpost_shapes_command_in_a_fresh_process(tmp_path):
    out = tmp_path / "clip.mp4"
    cmd = [
        sys.executable,
        "-m",
        "vidpost.cli",
        "shapes",
        "render",
        "--caption",
        "a red circle moves up",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    assert verify(read_video(out), "a red circle moves up")["success"]
