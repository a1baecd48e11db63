"""Generation settings, typed and resolved in one place.

`resolve_settings(model_dir, adapter, **user)` takes each setting from the user (a flag or a config value; None or
0 means "not given"), else from the model folder's defaults (`generation` in its `vidpost.json`; the Shapes world
models have them), else from `FALLBACK_DEFAULTS` (the Wan 480p recipe). Guidance and shift default to the
adapter's. The size is checked against what the model can generate exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vidpost.models.base import VideoModelAdapter, read_vidpost_config

FALLBACK_DEFAULTS = {"num_frames": 81, "height": 480, "width": 832, "steps": 50, "fps": 16}


@dataclass(frozen=True)
class GenerationSettings:
    num_frames: int
    height: int
    width: int
    steps: int
    guidance: float
    shift: float
    fps: float
    negative_prompt: str | None = None
    keyframe: int | None = None
    """a latent frame generated first, then the clip around it (`sample(keyframe=…)`)"""

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `vidpost.models.sampling.sample` (without seed, latents, prompts)."""
        kw = {
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "shift": self.shift,
        }
        return kw if self.keyframe is None else kw | {"keyframe": self.keyframe}

    def record(self) -> dict[str, Any]:
        """What output files record: the sampler's arguments (its names) and the fps."""
        return self.sample_kwargs() | {"fps": self.fps}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


USER_SETTINGS = ("num_frames", "height", "width", "steps", "guidance", "shift", "fps", "negative_prompt", "keyframe")


def user_settings(source: Any) -> dict[str, Any]:
    """The generation settings a command's parsed flags or a config section holds (the attributes named as
    `resolve_settings`' keywords; absent ones are None), for `resolve_settings(model_dir, adapter, **...)`."""
    return {k: getattr(source, k, None) for k in USER_SETTINGS}


def model_defaults(model_dir: str | Path, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model folder's generation defaults over `fallback` (FALLBACK_DEFAULTS when None)."""
    return {
        **(FALLBACK_DEFAULTS if fallback is None else fallback),
        **read_vidpost_config(Path(model_dir)).get("generation", {}),
    }


def resolve_settings(
    model_dir: str | Path,
    adapter: VideoModelAdapter,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    fps: float | None = None,
    negative_prompt: str | None = None,
    keyframe: int | str | None = None,
    fallback: dict[str, Any] | None = None,
    validate: bool = True,
) -> GenerationSettings:
    """User value, else the model folder's default, else the fallback table (see the module docstring)."""
    defaults = model_defaults(model_dir, fallback)
    given = {"num_frames": num_frames, "height": height, "width": width, "steps": steps, "fps": fps, "shift": shift}
    for name, value in given.items():
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
    s = GenerationSettings(
        num_frames=num_frames if num_frames is not None else defaults["num_frames"],
        height=height if height is not None else defaults["height"],
        width=width if width is not None else defaults["width"],
        steps=steps if steps is not None else defaults["steps"],
        guidance=guidance if guidance is not None else adapter.default_guidance_scale,
        shift=shift if shift is not None else adapter.default_shift,
        fps=fps if fps is not None else defaults["fps"],
        negative_prompt=negative_prompt,
        keyframe=_keyframe(keyframe if keyframe is not None else defaults.get("keyframe")),
    )
    if validate:
        adapter.validate_size(s.num_frames, s.height, s.width)
    return s


def _keyframe(value: int | str | None) -> int | None:
    """A keyframe setting: a latent frame index, or None / "off"."""
    if value is None or value == "off":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--keyframe takes a latent frame index or 'off', got {value!r}") from None
