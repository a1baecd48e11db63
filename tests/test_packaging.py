"""The wheel installs only the `vidpost` namespace (nothing generic such as `kernels` or `rl` at top level)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=build,
    )
    (whl,) = out.glob("vidpost-*.whl")
    return whl


def test_wheel_has_only_vidpost_at_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"vidpost"}, top


def test_wheel_maps_every_part_under_vidpost(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in (
        "models",
        "pipelines",
        "rl",
        "rewards",
        "enhance",
        "kernels",
        "shapes",
        "training",
        "evaluation",
        "media",
    ):
        assert f"vidpost/{part}/__init__.py" in names, part
    assert "vidpost/models/sampling.py" in names and "vidpost/cli.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "vidpost = vidpost.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "vidpost.cli", "--help"], capture_output=True, text=True, check=True)
    assert "generate" in out.stdout and "shapes" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "vidpost.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
