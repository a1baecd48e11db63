"""The model-adapter contract every video model family implements.

An adapter wraps the stock diffusers / transformers components of one family (it never forks them) and exposes
the handful of operations the stages need:

- `encode_prompt(prompts)` → `PromptEmbeds` (whatever tensors the family's transformer conditions on);
- `encode_video(video_BCTHW in [0, 1])` → normalised latents, `decode(latents)` → video in [0, 1];
- `predict_velocity(latents, sigma, cond, uncond=None, guidance_scale=...)` → the flow-matching velocity
  (noise − x0) with classifier-free guidance handled the way the family's reference pipeline does it;
- `trainable_parameters()`, `from_pretrained(path)` for a local diffusers-format directory, `tiny()` for a
  randomly initialised miniature of the same classes, and `save_pretrained(path)` writing the diffusers layout.

Latents follow diffusers' layout [B, C, T', H', W'] with T' = (T − 1) / vae_scale_temporal + 1 and
H' = H / vae_scale_spatial. The flow-matching convention is x_σ = (1 − σ)·x0 + σ·noise, velocity = noise − x0,
σ ∈ [0, 1], and the transformer's timestep input is σ·1000.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from vidpost.outputs import atomic_dir

from .attention import AttentionState


@dataclass
class PromptEmbeds:
    """Text conditioning for a batch of prompts. Which fields are set depends on the family."""

    embeds: torch.Tensor
    """[B, L, D] token embeddings fed to the transformer's cross-attention."""
    mask: torch.Tensor | None = None
    """[B, L] attention mask over `embeds` (HunyuanVideo); None when the family zero-pads instead (Wan)."""
    pooled: torch.Tensor | None = None
    """[B, D'] pooled embedding (HunyuanVideo's CLIP vector)."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptEmbeds:
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is not None:
                t = t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
            out[f.name] = t
        return PromptEmbeds(**out)

    def repeat_interleave(self, n: int) -> PromptEmbeds:
        """Repeat every prompt `n` times along the batch (G samples per prompt)."""
        return PromptEmbeds(
            **{f.name: _maybe(getattr(self, f.name), lambda t: t.repeat_interleave(n, 0)) for f in fields(self)}
        )

    def index(self, idx: torch.Tensor | slice | list[int]) -> PromptEmbeds:
        return PromptEmbeds(**{f.name: _maybe(getattr(self, f.name), lambda t: t[idx]) for f in fields(self)})

    @staticmethod
    def cat(items: list[PromptEmbeds]) -> PromptEmbeds:
        first = items[0]
        return PromptEmbeds(
            **{
                f.name: (None if getattr(first, f.name) is None else torch.cat([getattr(i, f.name) for i in items]))
                for f in fields(first)
            }
        )

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]


def _maybe(t: torch.Tensor | None, fn) -> torch.Tensor | None:
    return None if t is None else fn(t)


class ModelPathError(ValueError):
    """A model directory is missing or incomplete; the message lists what is missing."""


VIDPOST_CONFIG = "vidpost.json"
"""Optional file next to model_index.json with adapter settings that diffusers' layout has no place for."""


class VideoModelAdapter(abc.ABC):
    """Base class of the per-family adapters (see module docstring for the contract)."""

    family: ClassVar[str]
    pipeline_class_names: ClassVar[tuple[str, ...]]
    """`_class_name` values in model_index.json that select this family."""
    required_components: ClassVar[tuple[str, ...]]
    schedule: ClassVar[str]
    """Which sigma schedule the family's reference diffusers pipeline uses (see `sampling.flow_sigmas`)."""

    lora_target_modules: ClassVar[tuple[str, ...]]
    """Module-name suffixes LoRA adapts by default (peft `target_modules`)."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    default_shift: float = 1.0
    default_guidance_scale: float = 5.0
    generation: dict[str, Any] | None = None
    """Generation defaults from the folder's vidpost.json (num_frames, height, width, steps, fps); kept on save."""
    quant_report: Any = None
    """For a quantised model folder (`quant.json`): the `QuantReport` of the recipe `load` re-applied."""

    @property
    def attention_state(self) -> AttentionState:
        """Video context (grid, step, sigma, CFG branch) shared with the installed attention processors."""
        state = self.__dict__.get("_attention_state")
        if state is None:
            state = self.__dict__["_attention_state"] = AttentionState()
        return state

    # ---- geometry ----------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def vae_scale_temporal(self) -> int: ...

    @property
    @abc.abstractmethod
    def vae_scale_spatial(self) -> int: ...

    @property
    @abc.abstractmethod
    def patch_size(self) -> tuple[int, int, int]:
        """(pt, ph, pw) of the transformer's patch embedding."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int: ...

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer (diffusers skips its keep-in-fp32 modules when reporting it)."""
        return self.transformer.dtype

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        self.validate_size(num_frames, height, width)
        return (
            batch,
            self.latent_channels,
            (num_frames - 1) // self.vae_scale_temporal + 1,
            height // self.vae_scale_spatial,
            width // self.vae_scale_spatial,
        )

    def latent_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(T, H, W) token grid the transformer sees for latents of this shape (after patching)."""
        pt, ph, pw = self.patch_size
        return latent_shape[-3] // pt, latent_shape[-2] // ph, latent_shape[-1] // pw

    def validate_size(self, num_frames: int, height: int, width: int) -> None:
        """Raise ValueError naming the nearest valid values when a size cannot be generated exactly."""
        problems = []
        st = self.vae_scale_temporal
        if num_frames < 1 or (num_frames - 1) % st != 0:
            lo = (num_frames - 1) // st * st + 1
            near = f"{st + 1}" if lo < 1 else f"{lo} or {lo + st}"
            problems.append(f"num_frames={num_frames} must be {st}k+1 (nearest valid: {near})")
        mult = self.vae_scale_spatial * self.patch_size[1]
        for name, v in (("height", height), ("width", width)):
            if v < mult or v % mult != 0:
                lo = v // mult * mult
                near = f"{mult}" if lo < mult else f"{lo} or {lo + mult}"
                problems.append(f"{name}={v} must be a multiple of {mult} (patch × VAE factor; nearest valid: {near})")
        if not problems:
            problems = self._position_problems(num_frames, height, width)
        if problems:
            raise ValueError(f"invalid video size for {self.family}: " + "; ".join(problems))

    max_positions: int | None = None
    """the most token positions per axis (frames, height, width of the token grid) the transformer's position
    encoding covers (Wan: `rope_max_seq_len`), or None for no limit"""

    def _position_problems(self, num_frames: int, height: int, width: int) -> list[str]:
        """A size whose token grid runs past `max_positions` on an axis, with the largest valid value."""
        limit = self.max_positions
        if limit is None:
            return []
        pt, ph, pw = self.patch_size
        st, ss = self.vae_scale_temporal, self.vae_scale_spatial
        grid = {
            "num_frames": ((num_frames - 1) // st + 1) // pt,
            "height": height // (ss * ph),
            "width": width // (ss * pw),
        }
        largest = {"num_frames": (limit * pt - 1) * st + 1, "height": limit * ph * ss, "width": limit * pw * ss}
        return [
            f"{name}={value} needs {grid[name]} positions but the model's position encoding covers {limit} (largest "
            f"valid {name}: {largest[name]})"
            for name, value in (("num_frames", num_frames), ("height", height), ("width", width))
            if grid[name] > limit
        ]

    def memory_estimate(self, batch: int, num_frames: int, height: int, width: int, guidance: bool = True) -> int:
        """A lower bound on the memory (bytes) sampling `batch` videos of this size needs at once: the decoded videos
        in float32, the latents, and one transformer block's widest activations over all tokens (hidden states, q,
        k, v, the attention output and the feed-forward's inner layer, for both CFG branches)."""
        shape = self.latent_shape(batch, num_frames, height, width)
        t, h, w = self.latent_grid(shape)
        cfg = self.transformer.config
        inner = int(cfg.get("num_attention_heads", 1) * cfg.get("attention_head_dim", 1))
        ffn = int(cfg.get("ffn_dim", 4 * inner))
        element = torch.finfo(self.dtype).bits // 8
        tokens = batch * (2 if guidance else 1) * t * h * w
        videos = batch * 3 * num_frames * height * width * 4
        latents = 4 * batch * shape[1] * shape[2] * shape[3] * shape[4] * 4  # noise, sample, velocity, CFG pair
        return videos + latents + tokens * (5 * inner + ffn) * element

    def check_memory(self, batch: int, num_frames: int, height: int, width: int, guidance: bool = True) -> None:
        """A one-line ValueError before sampling starts when `memory_estimate` exceeds the memory available on the
        model's device."""
        need = self.memory_estimate(batch, num_frames, height, width, guidance)
        have = available_memory(self.device)
        if have is not None and need > have:
            raise ValueError(
                f"{batch} video(s) of {num_frames}×{height}×{width} need at least {need / 1e9:.1f} GB (the decoded "
                f"frames, latents and one transformer block's activations) but {have / 1e9:.1f} GB is available on "
                f"{self.device}: lower --num-frames, --height/--width or --batch-size"
            )

    # ---- the contract ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_prompt(self, prompts: list[str]) -> PromptEmbeds: ...

    @abc.abstractmethod
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """video [B, 3, T, H, W] in [0, 1] → normalised latents. `generator` samples the posterior; None → mode."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents → video [B, 3, T, H, W] float32 in [0, 1]."""

    @abc.abstractmethod
    def forward_transformer(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        cond: PromptEmbeds,
        guidance_scale: float,
        model: torch.nn.Module | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One transformer pass (no CFG) on `latents` at noise level `sigma` ([B]).

        `model` replaces the adapter's transformer for the call (e.g. its DDP/FSDP-wrapped training copy);
        `given` as in `predict_velocity`."""

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Whether `guidance_scale` means a second, unconditional pass (true CFG) for this family."""
        return guidance_scale > 1.0

    def predict_velocity(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor | float,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None = None,
        guidance_scale: float = 1.0,
        *,
        model: torch.nn.Module | None = None,
        given: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity at (latents, σ); with `uncond` and true CFG: v_u + g·(v_c − v_u). Output in the model's dtype.

        `given` (bool, [T] or [B, T] over latent frames): those frames are given, clean, at timestep 0 (frame-
        conditioned generation; Wan2.2 TI2V gives the first); only families with per-token timesteps."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(latents.shape[0])
        from .inference import branch_context

        extra = {} if given is None else {"given": given}
        state = self.attention_state
        with state.branch("cond"), branch_context(self, "cond"):
            v = self.forward_transformer(latents, sigma, cond, guidance_scale, model, **extra)
        if uncond is not None and self.uses_cfg(guidance_scale):
            with state.branch("uncond"), branch_context(self, "uncond"):
                v_u = self.forward_transformer(latents, sigma, uncond, guidance_scale, model, **extra)
            v = v_u + self.cfg_scale(guidance_scale) * (v - v_u)
        return v

    def cfg_scale(self, guidance_scale: float) -> float:
        return guidance_scale

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    # ---- I/O ---------------------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> VideoModelAdapter: ...

    @classmethod
    @abc.abstractmethod
    def tiny(cls, seed: int = 0, **overrides: Any) -> VideoModelAdapter: ...

    @abc.abstractmethod
    def pipeline(self) -> Any:
        """The stock diffusers pipeline over these very component objects (no copies)."""

    def save_lora(self, path: str | Path, lora_state_dict: dict[str, torch.Tensor]) -> Path:
        """Write a LoRA in diffusers format (`pytorch_lora_weights.safetensors`) that the family's stock pipeline
        loads with `load_lora_weights(path)`; `lora_state_dict` is peft's `get_peft_model_state_dict(transformer)`."""
        path = Path(path)
        with atomic_dir(path, what=f"the LoRA folder {path}") as tmp:
            pipe = type(self.pipeline())
            pipe.save_lora_weights(tmp, transformer_lora_layers=lora_state_dict, safe_serialization=True)
        return path

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the diffusers layout (model_index.json + one folder per component) and vidpost.json, complete or
        absent (`vidpost.outputs.atomic_dir`)."""
        path = Path(path)
        with atomic_dir(path, what=f"the model folder {path}") as tmp:
            self.pipeline().save_pretrained(tmp, safe_serialization=True)
            (tmp / VIDPOST_CONFIG).write_text(json.dumps(self.vidpost_config(), indent=2) + "\n")
        return path

    def vidpost_config(self) -> dict[str, Any]:
        cfg = {
            "family": self.family,
            "default_shift": self.default_shift,
            "default_guidance_scale": self.default_guidance_scale,
        }
        if self.generation:
            cfg["generation"] = dict(self.generation)
        if self.schedule != type(self).schedule:  # a model sampled on another schedule (a few-step student)
            cfg["schedule"] = self.schedule
        return cfg

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VideoModelAdapter:
        """Move every module; `dtype` applies to the transformer (the VAE and text encoders keep theirs)."""
        for m in self.modules().values():
            m.to(device=device)
        if dtype is not None:
            self.transformer.to(dtype=dtype)
        return self

    @abc.abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]: ...

    def eval(self) -> VideoModelAdapter:
        for m in self.modules().values():
            m.eval()
        return self

    def requires_grad_(self, flag: bool) -> VideoModelAdapter:
        for m in self.modules().values():
            m.requires_grad_(flag)
        return self


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free on `device`: a GPU's free memory, or the host's available memory (Linux /proc/meminfo); None when
    it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""the dtypes a config or flag may name (`model.dtype`, `--dtype`)"""


def upcast_trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Store `module`'s trainable weights in float32 (mixed precision autocasts the compute; the frozen weights keep
    their storage dtype) → the trainable parameters, in `module.parameters()` order."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def check_model_dir(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """Validate a diffusers-format directory; return its model_index.json. Raise ModelPathError listing gaps."""
    if not path.exists():
        raise ModelPathError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelPathError(f"model path {path} is not a directory (expected a diffusers-format folder)")
    index_file = path / "model_index.json"
    if not index_file.exists():
        raise ModelPathError(f"{path} is not a diffusers-format model folder: missing model_index.json")
    index = json.loads(index_file.read_text())
    missing = []
    for comp in required:
        entry = index.get(comp)
        if entry is None or entry == [None, None]:
            missing.append(f"model_index.json entry '{comp}'")
            continue
        sub = path / comp
        if not sub.is_dir():
            missing.append(f"{comp}/")
            continue
        names = {p.name for p in sub.iterdir()}
        if comp.startswith("tokenizer"):
            if not names & {
                "tokenizer.json",
                "spiece.model",
                "vocab.json",
                "tokenizer.model",
                "tokenizer_config.json",
            }:
                missing.append(f"{comp}/tokenizer files")
        elif comp == "scheduler":
            if "scheduler_config.json" not in names:
                missing.append(f"{comp}/scheduler_config.json")
        else:
            if "config.json" not in names:
                missing.append(f"{comp}/config.json")
            if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
                missing.append(f"{comp}/*.safetensors weights")
    if missing:
        raise ModelPathError(f"model directory {path} is incomplete; missing: " + ", ".join(missing))
    return index


def read_vidpost_config(path: Path) -> dict[str, Any]:
    f = Path(path) / VIDPOST_CONFIG
    return json.loads(f.read_text()) if f.exists() else {}
