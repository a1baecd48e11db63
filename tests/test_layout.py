"""The repository's top-level folders must not shadow anything the installed environment imports.

`python -m vidpost...` and `python -m pytest` from the repo root put the root on `sys.path` ahead of
site-packages, so a top-level package folder named like a standard-library module or like a module some
dependency ships (transformers >= 5.25 imports Hugging Face's `kernels`, for example) is imported in its place.
"""

import importlib.machinery
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _top_level_packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def _outside_repo_path() -> list[str]:
    out = []
    for entry in sys.path:
        # the repo root and tests/ (pytest inserts it); the virtual environment may itself live in the repo
        if Path(entry or ".").resolve() in (ROOT, ROOT / "tests"):
            continue
        out.append(entry)
    return out


def test_the_layout_check_finds_the_repo_packages():
    names = _top_level_packages()
    assert {"vidpost", "models", "pipelines", "rl"} <= set(names)
    assert "kernels" not in names  # lives in vidpost/kernels: transformers depends on the `kernels` package


def test_no_top_level_folder_shadows_an_installed_or_standard_module():
    path = _outside_repo_path()
    shadowing = []
    for name in _top_level_packages():
        if name == "vidpost":
            continue
        if name in sys.stdlib_module_names or importlib.machinery.PathFinder.find_spec(name, path) is not None:
            shadowing.append(name)
    assert not shadowing, f"top-level folders shadow installed modules: {shadowing}"


def test_a_planted_collision_is_detected():
    # The check must be able to fail: `yaml` is installed, so a folder of that name would be reported.
    assert importlib.machinery.PathFinder.find_spec("yaml", _outside_repo_path()) is not None
