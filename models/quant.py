"""Low-precision linear layers: recipes, the fake-quantised `QuantLinear` (the reference path), torchao's kernels
(the real path), calibration of static activation scales across denoising steps, and the model folder a recipe
writes.

A recipe (`QuantRecipe`, YAML in configs/quant/) names the weight and activation formats and scale granularities
(`vidpost.kernels.quant_formats`), which linear layers it applies to (fnmatch patterns over module names inside the
transformer; `keep` lists layers left in full precision), and options:
- `smoothquant_alpha` α: per input channel j, s_j = max|X_j|^α / max|W_j|^(1−α) from calibration; the layer computes
  (X / s)·(W·s)ᵀ, moving activation outliers into the weights before both are quantised (SmoothQuant);
- `rotate`: an orthonormal rotation R over the input features: (X·R)·(W·R)ᵀ = X·Wᵀ exactly, with outliers spread
  over every channel (QuaRot-style). `hadamard`: R = H, block-diagonal Hadamard (blocks of the largest power of two
  dividing the features, at most 256); `randomized`: R = D·H with D a fixed diagonal of random signs. The plain
  Hadamard's first row is all ones, so it gathers an input's mean into one channel per block: after the FFN's GELU
  (inputs with mean ≈ 0.3 × their RMS on the Shapes model) that channel becomes the outlier and W4A4 gets worse;
  the random signs spread the mean too (`rotation`, measured in results/shapes-quant);
- static activation scales (`activation.scale: tensor`): amax / max(format) measured on calibration prompts, one per
  layer, or one per group of `per_step` denoising steps (activation ranges move with the timestep); an input beyond
  the calibrated range saturates.
`QuantLinear` quantises its weight once (x̂ = s·Q(x·(1/s)), stored dequantised in float32) and its input on every
call, then runs the float matmul: the exact numerics of the format, not its speed. With `backend: torchao` the
layers torchao has kernels for are converted by `torchao.quantization.quantize_` instead (int8 dynamic activation ×
int8 weight, per token × per channel, which matches the `int8_full` reference; on a GPU also float8 dynamic and int4
weight-only); everything else stays on the reference path, and `QuantReport.backend_used` says which path each
layer took.

A quantised model folder = the model's own diffusers folder (full-precision weights, so stock diffusers still loads
it) + `quant.json` (the recipe, the layers and the packed weight bytes) + `quant.safetensors` (calibrated scales);
`vidpost.models.load` re-applies the recipe, so the folder samples exactly as it was measured.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from vidpost.config import NonNegativeInt, PositiveInt
from vidpost.kernels.quant_formats import (
    FORMATS,
    absmax_scale,
    clipped_fake_quant,
    fake_quant,
    fake_quant_groups,
    fake_quant_mx,
    fake_quant_nvfp4,
    hadamard,
    quantize_elements,
)
from vidpost.sections import VideoSize

QUANT_CONFIG = "quant.json"
QUANT_WEIGHTS = "quant.safetensors"

WEIGHT_SCALES = ("tensor", "channel", "group", "mx", "nvfp4")
ACTIVATION_SCALES = ("tensor", "token", "mx", "nvfp4")


@dataclass
class TensorQuant:
    format: str = "none"
    """element format: e4m3, e5m2, int8 (±127), int8_full (torchao's [−128, 127]), int4, e2m1; none = full precision"""
    scale: str | None = None
    """weights: tensor | channel | group | mx | nvfp4 (null: channel); activations: tensor (static, calibrated) |
    token (dynamic) | mx | nvfp4 (null: token)"""
    block: int = 32
    """elements per scale for group / mx (group: e.g. 128; MX: 32; NVFP4 uses 16)"""
    clip_search: bool = False
    """weights with channel or group scales: per group, the clipping of the absmax scale (1.0 … 0.5) that minimises
    the weight's quantisation error (`clipped_fake_quant`)"""


@dataclass
class CalibrationConfig(VideoSize):
    prompts: list[str] | str = "shapes-train"
    """prompts run through the sampler to measure activation ranges"""
    count: int = 8
    steps: PositiveInt | None = None
    """sampler steps (null: the model's default)"""
    seed: int = 0


@dataclass
class QuantRecipe:
    name: str = "recipe"
    weight: TensorQuant = field(default_factory=lambda: TensorQuant("int8", "channel"))
    activation: TensorQuant = field(default_factory=lambda: TensorQuant("none", "token"))
    include: list[str] = field(default_factory=lambda: ["blocks.*"])
    """linear layers (fnmatch over module names in the transformer) the recipe applies to"""
    exclude: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    """layers left in full precision (mixed precision, e.g. the most sensitive ones)"""
    keep_worst: int = 0
    """mixed precision by sensitivity: also keep the N layers whose quantisation alone moves the model's velocity
    most (`layer_sensitivity` on the calibration prompts; `vidpost quantize` writes their names into `keep`)"""
    smoothquant_alpha: float | None = None
    rotate: Literal["none", "hadamard", "randomized"] = "none"
    """rotation of inputs and weights over the input features (see the module docstring)"""
    per_step: NonNegativeInt = 0
    """static activation scales: 0 = one per layer; N = one per group of N denoising steps"""
    backend: Literal["reference", "torchao"] = "reference"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        for what, tq, scales in (
            ("weight", self.weight, WEIGHT_SCALES),
            ("activation", self.activation, ACTIVATION_SCALES),
        ):
            if tq.scale is None:
                tq.scale = scales[1]  # channel for weights, token for activations
            if tq.format != "none" and tq.format not in FORMATS:
                raise ValueError(f"{what}.format must be none or one of {sorted(FORMATS)}, got {tq.format!r}")
            if tq.format != "none" and tq.scale not in scales:
                raise ValueError(f"{what}.scale must be one of {scales}, got {tq.scale!r}")
            if tq.scale == "nvfp4" and tq.format not in ("e2m1", "none"):
                raise ValueError(f"{what}: nvfp4 scales go with format e2m1, got {tq.format!r}")
            if tq.block < 1:
                raise ValueError(f"{what}.block must be >= 1")
            if tq.clip_search and (what != "weight" or tq.scale not in ("channel", "group")):
                raise ValueError(f"{what}.clip_search applies to weights with channel or group scales")
        if self.weight.format == "none":
            raise ValueError("weight.format none quantises nothing; use the model itself")
        if self.smoothquant_alpha is not None and not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ValueError(f"smoothquant_alpha must be in [0, 1], got {self.smoothquant_alpha}")
        if self.per_step < 0:
            raise ValueError("per_step must be >= 0")
        if self.keep_worst < 0:
            raise ValueError("keep_worst must be >= 0")

    @property
    def static(self) -> bool:
        return self.activation.format != "none" and self.activation.scale == "tensor"

    def needs_calibration(self) -> bool:
        return self.static or self.smoothquant_alpha is not None


def quantize_tensor(x: torch.Tensor, tq: TensorQuant, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantise `x` as `tq` says (the last axis is the reduction axis of the matmul)."""
    if tq.format == "none":
        return x
    if tq.clip_search:
        return clipped_fake_quant(x, tq.format, tq.block if tq.scale == "group" else None)
    if tq.scale in ("channel", "token"):
        return fake_quant(x, tq.format, "token")
    if tq.scale == "tensor":
        return fake_quant(x, tq.format, "tensor", scale=scale)
    if tq.scale == "group":
        return fake_quant_groups(x, tq.format, tq.block)
    if tq.scale == "mx":
        return fake_quant_mx(x, tq.format, tq.block)
    return fake_quant_nvfp4(x)


def bits_per_weight(tq: TensorQuant, in_features: int) -> float:
    """Packed storage per weight element: the element bits plus the scales' share (fp32 per channel / group / tensor,
    8-bit E8M0 per MX block, 8-bit E4M3 per NVFP4 block of 16)."""
    bits = FORMATS[tq.format].bits
    if tq.scale == "channel":
        return bits + 32 / in_features
    if tq.scale == "group":
        return bits + 32 / tq.block
    if tq.scale == "mx":
        return bits + 8 / tq.block
    if tq.scale == "nvfp4":
        return bits + 8 / 16
    return bits


def rotation(n: int, kind: str = "hadamard") -> torch.Tensor:
    """An orthonormal n × n rotation: the block-diagonal Hadamard H (blocks of the largest power of two dividing n,
    ≤ 256), or for `randomized` D·H with D = diag(±1) drawn from a generator seeded with n (the same on every load)."""
    b = math.gcd(n, 256)
    h = torch.block_diag(*[hadamard(b)] * (n // b))
    if kind == "randomized":
        signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(n)).float() * 2 - 1
        h = signs[:, None] * h
    return h


class QuantLinear(torch.nn.Module):
    """A linear layer computing ŷ = Q_a(x̃)·Q_w(W̃)ᵀ + b with x̃ = (x / s)·H and W̃ = (W·s)·H (s: SmoothQuant scales,
    H: the rotation; both optional). Static activation scales are indexed by the current denoising step's group."""

    def __init__(self, linear: torch.nn.Linear, recipe: QuantRecipe, state: Any = None) -> None:
        super().__init__()
        self.recipe, self.state = recipe, state
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_fp", linear.weight.detach().float().clone(), persistent=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float().clone(), False)
        self.register_buffer("smooth", torch.ones(self.in_features))
        self.register_buffer("act_scale", torch.zeros(0))
        self.rot = rotation(self.in_features, recipe.rotate) if recipe.rotate != "none" else None
        self.observe: dict[str, Any] | None = None
        self.lora_A: torch.nn.Parameter | None = None
        self.lora_B: torch.nn.Parameter | None = None
        self.lora_scale = 0.0
        self.refresh_weight()

    # ---- quantisation-aware training: a LoRA on the weight, trained through the fake quantisation ----

    def enable_qat(self, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        """Add a trainable LoRA (A: rank × in, Kaiming-uniform; B: out × rank, zeros) to the weight. While it is
        present the forward computes Q_a(x̃)·Q_w(W̃ + ΔW)ᵀ with ΔW = (alpha / rank)·B·A, values exactly as the frozen
        layer with its weight replaced, gradients straight through both quantisers (`_straight_through`)."""
        a = torch.empty(rank, self.in_features)
        bound = 1.0 / math.sqrt(self.in_features)
        a.uniform_(-bound, bound, generator=generator)
        device = self.weight_fp.device
        self.lora_A = torch.nn.Parameter(a.to(device))
        self.lora_B = torch.nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        self.lora_scale = alpha / rank

    def lora_delta(self) -> torch.Tensor:
        return self.lora_scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge_qat(self) -> None:
        """Fold the LoRA into the full-precision weight and re-quantise it (the layer is then what it trained as)."""
        if self.lora_A is None:
            return
        self.weight_fp = self.weight_fp + self.lora_delta().detach()
        self.lora_A = self.lora_B = None
        self.refresh_weight()

    def refresh_weight(self) -> None:
        with torch.no_grad():
            w = self._prepared_weight()
        self.register_buffer("weight_q", quantize_tensor(w, self.recipe.weight), persistent=False)

    def _raw_step_group(self) -> int:
        """The current denoising step's group (0 without per-step scales or outside the sampler)."""
        per = self.recipe.per_step
        step = getattr(self.state, "step", None)
        return int(step) // per if per and step is not None else 0

    def _step_group(self) -> int:
        """The index of the static scale to use: the step's group, capped at the last calibrated one."""
        if self.act_scale.numel() <= 1:
            return 0
        return min(self._raw_step_group(), self.act_scale.numel() - 1)

    def to_linear(self) -> torch.nn.Linear:
        """A frozen plain `nn.Linear` with this layer's full-precision weight and bias."""
        lin = torch.nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.weight_fp.device
        )
        with torch.no_grad():
            lin.weight.copy_(self.weight_fp)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.requires_grad_(False)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / self.smooth
        return x @ self.rot if self.rot is not None else x

    def _prepared_weight(self) -> torch.Tensor:
        w = self.weight_fp + self.lora_delta() if self.lora_A is not None else self.weight_fp
        w = w * self.smooth[None, :]
        return w @ self.rot if self.rot is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.observe is not None:  # calibration: record ranges of the raw input (smoothing) or prepared input
            self._record(x)
        xq = self.prepare_input(x)
        if self.recipe.activation.format != "none":
            scale = None
            if self.recipe.static and self.act_scale.numel():
                scale = self.act_scale[self._step_group()]
            q = quantize_tensor(xq.detach(), self.recipe.activation, scale)
            xq = _straight_through(q, xq) if xq.requires_grad else q
        weight = self.weight_q
        if self.lora_A is not None:
            w = self._prepared_weight()
            weight = _straight_through(quantize_tensor(w.detach(), self.recipe.weight), w)
        return F.linear(xq, weight, self.bias).to(dtype)

    def _record(self, x: torch.Tensor) -> None:
        obs = self.observe
        flat = x.detach().float().reshape(-1, x.shape[-1])
        if obs["what"] == "channels":
            cur = flat.abs().amax(0)
            obs["amax"] = cur if obs.get("amax") is None else torch.maximum(obs["amax"], cur)
        else:
            g = self._raw_step_group()
            amax = self.prepare_input(flat).abs().amax()
            obs.setdefault("groups", {})
            obs["groups"][g] = max(obs["groups"].get(g, 0.0), float(amax))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, recipe={self.recipe.name}"


def _straight_through(quantised: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The value of `quantised` (exactly: q + 0), the gradient of the identity with respect to `x`."""
    return quantised + (x - x.detach())


def _parent(root: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    parts = name.split(".")
    mod = root
    for p in parts[:-1]:
        mod = getattr(mod, p)
    return mod, parts[-1]


def selected_linears(transformer: torch.nn.Module, recipe: QuantRecipe) -> list[str]:
    """Names of the nn.Linear modules the recipe quantises (include − exclude − keep), in module order."""

    def match(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return [
        n
        for n, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear)
        and match(n, recipe.include)
        and not match(n, recipe.exclude)
        and not match(n, recipe.keep)
    ]


@dataclass
class QuantReport:
    recipe: str
    layers: list[str]
    backend_used: dict[str, str]
    """layer → "reference" or "torchao" """
    weight_bytes: float
    """the transformer's weights packed (computed): quantised layers at their format's bits plus their scales, every
    other parameter (biases included) at 16 bits"""
    bf16_bytes: float
    spec: QuantRecipe | None = field(default=None, repr=False, compare=False)
    """the recipe as installed (its `keep` resolved); not part of `to_dict`"""

    @property
    def ratio(self) -> float:
        return self.weight_bytes / self.bf16_bytes

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "spec"}
        return out | {"ratio_to_bf16": self.ratio}


def packed_bytes(
    transformer: torch.nn.Module, recipe: QuantRecipe, names: list[str] | None = None
) -> tuple[float, float]:
    """(packed, bf16) bytes of the transformer's parameters: the recipe's layers (`names`, default the ones it
    selects) at their format's bits plus scales, every other parameter at 16 bits. Works on meta tensors."""
    names = selected_linears(transformer, recipe) if names is None else names
    bf16 = 2.0 * sum(p.numel() for p in transformer.parameters())
    packed = bf16
    for name in names:
        w = transformer.get_submodule(name).weight
        packed += w.numel() * (bits_per_weight(recipe.weight, w.shape[1]) / 8 - 2)
    return packed, bf16


def install_quant(
    adapter: Any, recipe: QuantRecipe, scales: dict[str, torch.Tensor] | None = None, kernels: bool = True
) -> QuantReport:
    """Replace the recipe's linear layers of `adapter.transformer` in place (QuantLinear, or torchao's kernels with
    `backend: torchao`); `scales`: calibrated buffers (`<layer>.smooth`, `<layer>.act_scale`). `kernels=False` keeps
    the QuantLinear layers (which hold the full-precision weights a quantised folder saves) even with
    `backend: torchao`; `use_kernels` converts them afterwards."""
    transformer = adapter.transformer
    names = selected_linears(transformer, recipe)
    if not names:
        raise ValueError(f"recipe {recipe.name}: no linear layer matches include={recipe.include}")
    packed, bf16 = packed_bytes(transformer, recipe, names)
    state = adapter.attention_state
    used: dict[str, str] = {}
    for name in names:
        parent, attr = _parent(transformer, name)
        q = QuantLinear(getattr(parent, attr), recipe, state)
        if scales:
            for buf in ("smooth", "act_scale"):
                if f"{name}.{buf}" in scales:
                    setattr(q, buf, scales[f"{name}.{buf}"].float().clone())
            q.refresh_weight()
        setattr(parent, attr, q)
        used[name] = "reference"
    report = QuantReport(recipe.name, names, used, packed, bf16, spec=recipe)
    if kernels:
        use_kernels(adapter, recipe, report)
    return report


def use_kernels(adapter: Any, recipe: QuantRecipe, report: QuantReport) -> None:
    """With `backend: torchao`, convert the installed QuantLinear layers to torchao's kernels where it has them
    (`report.backend_used` records which). The converted layers no longer hold their full-precision weights: save a
    quantised folder before."""
    if recipe.backend == "torchao":
        report.backend_used |= _torchao(adapter.transformer, recipe, report.layers)


def torchao_kind(recipe: QuantRecipe, device: torch.device) -> str | None:
    """The torchao config that computes this recipe exactly, on this device, or None."""
    w, a = recipe.weight, recipe.activation
    plain = recipe.smoothquant_alpha is None and recipe.rotate == "none" and not w.clip_search
    if plain and (w.format, w.scale, a.format, a.scale) == ("int8_full", "channel", "int8_full", "token"):
        return "int8_dynamic"
    if (
        plain
        and device.type == "cuda"
        and (w.format, w.scale, a.format, a.scale) == ("e4m3", "channel", "e4m3", "token")
    ):
        return "float8_dynamic"
    if plain and device.type == "cuda" and (w.format, w.scale, a.format) == ("int4", "group", "none"):
        return "int4_weight_only"
    return None


def _torchao(transformer: torch.nn.Module, recipe: QuantRecipe, names: list[str]) -> dict[str, str]:
    """Swap the QuantLinear layers back to nn.Linear and convert them with torchao where it has the kernel."""
    device = next(transformer.parameters()).device
    kind = torchao_kind(recipe, device)
    if kind is None:
        return {}
    from torchao.quantization import quantize_

    if kind == "int8_dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        config = Int8DynamicActivationInt8WeightConfig()
    elif kind == "float8_dynamic":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    else:
        from torchao.quantization import Int4WeightOnlyConfig

        config = Int4WeightOnlyConfig(group_size=recipe.weight.block)
    for name in names:
        parent, attr = _parent(transformer, name)
        holder = torch.nn.Sequential(getattr(parent, attr).to_linear())
        quantize_(holder, config)
        setattr(parent, attr, holder[0])
    return {n: f"torchao:{kind}" for n in names}


def quant_modules(transformer: torch.nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in transformer.named_modules() if isinstance(m, QuantLinear)}


def scales_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n, m in quant_modules(transformer).items():
        out[f"{n}.smooth"] = m.smooth.detach().cpu().contiguous()
        out[f"{n}.act_scale"] = m.act_scale.detach().cpu().contiguous()
    return out


def read_recipe(path: str | Path) -> QuantRecipe:
    """A recipe YAML (configs/quant/*.yaml); unknown keys are errors that name them."""
    from vidpost.config import load_config

    return load_config(QuantRecipe, Path(path))


def recipe_from_dict(d: dict[str, Any]) -> QuantRecipe:
    from vidpost.config import from_dict

    return from_dict(QuantRecipe, dict(d), prefix="quant.json recipe.")


def install_quant_from_folder(adapter: Any, path: str | Path) -> QuantReport:
    """Re-apply the recipe recorded in `path/quant.json` with the calibrated scales of `path/quant.safetensors`."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / QUANT_CONFIG).read_text())
        recipe = recipe_from_dict(meta["recipe"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path / QUANT_CONFIG} is not a readable quantisation record ({e})") from None
    if not (path / QUANT_WEIGHTS).is_file():
        raise ValueError(
            f"{path} says it is quantised ({QUANT_CONFIG}) but has no {QUANT_WEIGHTS}: re-run vidpost quantize"
        )
    try:
        scales = load_file(str(path / QUANT_WEIGHTS))
    except Exception as e:  # safetensors' error for a truncated file
        raise ValueError(
            f"{path / QUANT_WEIGHTS} does not load ({str(e).splitlines()[0]}): re-run vidpost quantize"
        ) from None
    return install_quant(adapter, recipe, scales)


def save_quant_folder(adapter: Any, recipe: QuantRecipe, report: QuantReport, path: str | Path, source: str) -> Path:
    """The quantised model folder, complete or absent (`vidpost.outputs.atomic_dir`): the model's diffusers folder
    with its original weights (the recipe is applied on load), quant.json and quant.safetensors. The layers must
    still be QuantLinear (install with `kernels=False`, save, then `use_kernels`)."""
    from safetensors.torch import save_file

    from vidpost.outputs import atomic_dir

    path = Path(path)
    transformer = adapter.transformer
    converted = [n for n in report.layers if not isinstance(transformer.get_submodule(n), QuantLinear)]
    assert not converted, f"{converted[0]} was converted to a kernel: its full-precision weight is gone"
    scales = scales_state(transformer)
    with atomic_dir(path, what=f"the quantised model folder {path}") as tmp:
        swapped = _restore_linears(transformer)
        try:
            adapter.save_pretrained(tmp)
        finally:
            for name, module in swapped.items():
                parent, attr = _parent(transformer, name)
                setattr(parent, attr, module)
        save_file(scales, str(tmp / QUANT_WEIGHTS))
        meta = {"recipe": _recipe_dict(recipe), "source": source, "report": report.to_dict()}
        (tmp / QUANT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _recipe_dict(recipe: QuantRecipe) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(recipe)))


def _restore_linears(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Put plain nn.Linear layers (original weights) where QuantLinear layers are; → the swapped-out modules."""
    swapped = {}
    for name, q in quant_modules(transformer).items():
        parent, attr = _parent(transformer, name)
        setattr(parent, attr, q.to_linear())
        swapped[name] = q
    return swapped


@torch.no_grad()
def calibrate(adapter: Any, recipe: QuantRecipe, prompts: list[str], settings: Any) -> None:
    """Measure what the recipe needs on `prompts` sampled with `settings` (GenerationSettings): see `calibrate_with`."""
    from vidpost.models.sampling import sample

    kw = settings.sample_kwargs() | {"num_inference_steps": settings.steps}

    def run() -> None:
        for i in range(0, len(prompts), 8):
            sample(adapter, prompts[i : i + 8], **kw, seed=recipe.calibration.seed + i, return_latents=True)

    calibrate_with(quant_modules(adapter.transformer), recipe, run)


@torch.no_grad()
def calibrate_with(modules: dict[str, QuantLinear], recipe: QuantRecipe, run: Any) -> None:
    """Calibrate `modules` by calling `run()` (which drives the model): first the input channels' amax (SmoothQuant:
    then s and the weights are set), then the prepared inputs' amax per step group (static scales: amax / max)."""

    def observe(what: str) -> dict[str, dict[str, Any]]:
        for m in modules.values():
            m.observe = {"what": what}
        try:
            run()
        finally:
            seen = {}
            for n, m in modules.items():
                seen[n], m.observe = m.observe, None
        return seen

    if recipe.smoothquant_alpha is not None:
        seen = observe("channels")
        a = recipe.smoothquant_alpha
        for n, m in modules.items():
            x_max = seen[n]["amax"].clamp_min(1e-5)
            w_max = m.weight_fp.abs().amax(0).clamp_min(1e-5)
            m.smooth = (x_max**a / w_max ** (1 - a)).clamp_min(1e-5)
            m.refresh_weight()
    if recipe.static:
        seen = observe("ranges")
        fmt = FORMATS[recipe.activation.format]
        for n, m in modules.items():
            groups = seen[n].get("groups", {0: 0.0})
            n = max(groups) + 1
            amax = torch.tensor([groups.get(g, max(groups.values())) for g in range(n)], dtype=torch.float32)
            m.act_scale = torch.where(amax > 0, amax / (fmt.scale_divisor or fmt.max_value), torch.ones_like(amax))


__all__ = [
    "QUANT_CONFIG",
    "QuantLinear",
    "QuantRecipe",
    "QuantReport",
    "TensorQuant",
    "absmax_scale",
    "calibrate",
    "install_quant",
    "install_quant_from_folder",
    "quantize_elements",
    "read_recipe",
    "save_quant_folder",
    "selected_linears",
    "use_kernels",
]


LAYER_TYPES: tuple[tuple[str, str], ...] = (
    ("*attn1.to_q", "self-attn q/k/v"),
    ("*attn1.to_k", "self-attn q/k/v"),
    ("*attn1.to_v", "self-attn q/k/v"),
    ("*attn1.to_out.0", "self-attn out"),
    ("*attn2.to_q", "cross-attn q"),
    ("*attn2.to_k", "cross-attn k/v"),
    ("*attn2.to_v", "cross-attn k/v"),
    ("*attn2.to_out.0", "cross-attn out"),
    ("*ffn.net.0.proj", "FFN up"),
    ("*ffn.net.2", "FFN down"),
    ("condition_embedder.time*", "time embedding"),
    ("condition_embedder.text*", "text embedding"),
    ("proj_out", "output"),
)
"""Wan transformer linear layers by role (fnmatch over module names); others are "other"."""


def layer_type(name: str) -> str:
    for pattern, kind in LAYER_TYPES:
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return "other"


@torch.no_grad()
def layer_sensitivity(
    adapter: Any, recipe: QuantRecipe, prompts: list[str], settings: Any, every: int = 4, seed: int = 0
) -> dict[str, float]:
    """The output error of quantising each of the recipe's layers alone: ‖v_q − v‖ / ‖v‖ of the model's (CFG) velocity
    on the states of its own unquantised trajectories for `prompts` (every `every`-th step), one layer at a time
    (dynamic scales: static recipes are measured with their dynamic counterpart, no calibration)."""
    from dataclasses import replace

    from vidpost.models.sampling import flow_sigmas, initial_noise, sample

    transformer = adapter.transformer
    kw = settings.sample_kwargs()
    n = settings.steps
    sigmas = flow_sigmas(n, settings.shift, adapter.schedule)
    shape = adapter.latent_shape(len(prompts), settings.num_frames, settings.height, settings.width)
    noise = initial_noise(shape, seed=seed)
    states = {0: noise.clone()}

    def keep(i: int, sigma: torch.Tensor, x: torch.Tensor) -> None:
        if i + 1 < n:
            states[i + 1] = x.clone()

    sample(adapter, prompts, **kw, seed=seed, latents=noise, return_latents=True, callback=keep)
    steps = list(range(0, n, every))
    cond = adapter.encode_prompt(prompts)
    uncond = adapter.encode_prompt([""] * len(prompts)) if adapter.uses_cfg(settings.guidance) else None
    state = adapter.attention_state

    def velocities() -> list[torch.Tensor]:
        out = []
        for i in steps:
            state.set_step(i, n, float(sigmas[i]))
            out.append(adapter.predict_velocity(states[i], float(sigmas[i]), cond, uncond, settings.guidance).float())
        state.clear_step()
        return out

    reference = velocities()
    dynamic = recipe
    if recipe.static:
        dynamic = replace(recipe, activation=replace(recipe.activation, scale="token"))
    errors = {}
    for name in selected_linears(transformer, recipe):
        parent, attr = _parent(transformer, name)
        original = getattr(parent, attr)
        setattr(parent, attr, QuantLinear(original, dynamic, state))
        try:
            got = velocities()
        finally:
            setattr(parent, attr, original)
        num = sum(float((a - b).pow(2).sum()) for a, b in zip(got, reference, strict=True))
        den = sum(float(b.pow(2).sum()) for b in reference)
        errors[name] = math.sqrt(num / den)
    return errors
