"""Sequence parallelism: the `parallel:` config section, the device mesh, and diffusers' context parallelism on our
models (with what diffusers lacks: CPU processes, our checks and the gradient scale).

Layout: `world = dp × ring × ulysses` processes on one mesh with dimensions ("dp", "ring", "ulysses"). The ranks of
one sequence-parallel (SP) group (ring × ulysses ranks with the same dp coordinate) hold the same sample; the
transformer splits its video tokens across them (diffusers' `_cp_plan`: split at the first block, gathered at the
output projection). Ulysses: each rank projects Q/K/V for its tokens, an all-to-all gives every rank all tokens of
1/ulysses of the heads, attention runs exactly, and a second all-to-all brings the tokens back; the result equals
the unsplit model's to rounding. Ring attention (`ring_degree`) needs an attention kernel that returns the
log-sum-exp; diffusers has none on the CPU, so it is refused there with a one-line error.

Data and randomness follow the dp coordinate, not the process index: `Layout.dp_rank` / `dp_size` are what a trainer
slices its global batch by, so the ranks of one SP group draw and see the same clips, noise and timesteps. The
output is gathered on every rank, so every rank computes the same loss; the gradient of the parameters is a sum of
per-rank parts over the SP group, and data-parallel wrappers (DDP, FSDP) average over all `world` ranks: a trainer
multiplies its loss by `Layout.grad_scale` (= ring × ulysses) so the update equals the unsplit one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vidpost.config import PositiveInt


@dataclass
class ParallelConfig:
    sp_degree: PositiveInt = 1
    """Ulysses sequence-parallel degree: processes that split one sample's video tokens (all-to-all over heads)"""
    ring_degree: PositiveInt = 1
    """ring-attention degree (needs a GPU attention backend that returns the log-sum-exp, e.g. flash)"""

    def __post_init__(self) -> None:
        if self.sp_degree < 1 or self.ring_degree < 1:
            raise ValueError("parallel.sp_degree and parallel.ring_degree must be >= 1")

    @property
    def degree(self) -> int:
        return self.sp_degree * self.ring_degree


@dataclass
class Layout:
    """Where this process sits: its data-parallel coordinate and its SP group."""

    world: int
    rank: int
    sp: int
    ring: int
    mesh: Any = None
    """a DeviceMesh ("dp", "ring", "ulysses"), or None for a single process / no SP"""

    @property
    def degree(self) -> int:
        return self.sp * self.ring

    @property
    def dp_size(self) -> int:
        return self.world // self.degree

    @property
    def dp_rank(self) -> int:
        return self.rank // self.degree

    @property
    def grad_scale(self) -> float:
        """What a trainer multiplies its loss by when a data-parallel wrapper averages gradients over all ranks."""
        return float(self.degree)


def make_layout(cfg: ParallelConfig, world: int = 1, rank: int = 0, device: torch.device | str = "cpu") -> Layout:
    """The layout of `world` processes for `cfg` (a one-line ValueError when they do not divide)."""
    if world % cfg.degree:
        raise ValueError(
            f"parallel: sp_degree × ring_degree = {cfg.degree} must divide the number of processes ({world})"
        )
    if cfg.degree == 1:
        return Layout(world, rank, 1, 1)
    device = torch.device(device)
    if cfg.ring_degree > 1 and device.type != "cuda":
        raise ValueError(
            "parallel.ring_degree > 1 needs a GPU: ring attention merges partial results by their log-sum-exp, "
            "which no CPU attention backend of diffusers returns; use sp_degree (Ulysses) on the CPU"
        )
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(
        device.type, (world // cfg.degree, cfg.ring_degree, cfg.sp_degree), mesh_dim_names=("dp", "ring", "ulysses")
    )
    return Layout(world, rank, cfg.sp_degree, cfg.ring_degree, mesh)


def _transformers(adapter: Any) -> list[torch.nn.Module]:
    return [t for t in (adapter.transformer, getattr(adapter, "transformer_2", None)) if t is not None]


def check_supported(adapter: Any, layout: Layout) -> None:
    """One-line errors for what does not run under SP: a model without a context-parallel plan, attention
    implementations other than diffusers' own processors, head counts the Ulysses degree does not divide."""
    for t in _transformers(adapter):
        name = type(t).__name__
        if getattr(t, "_cp_plan", None) is None:
            raise ValueError(
                f"sequence parallelism: {name} has no context-parallel plan in diffusers (Wan has one); "
                "run it with parallel.sp_degree=1"
            )
        heads = getattr(t.config, "num_attention_heads", None)
        if heads and heads % layout.sp:
            raise ValueError(
                f"sequence parallelism: {heads} attention heads are not divisible by sp_degree={layout.sp}"
            )
        for module_name, m in t.named_modules():
            proc = getattr(m, "processor", None)
            if proc is not None and not type(proc).__module__.startswith("diffusers."):
                impl = getattr(proc, "implementation", None) or type(proc).__name__
                raise ValueError(
                    f"sequence parallelism runs with diffusers' own attention processors; {module_name} uses "
                    f"{impl!r} (attention implementations, Enhance-A-Video and caches: run them with sp_degree=1)"
                )


def enable_sequence_parallel(adapter: Any, layout: Layout, extra: tuple[torch.nn.Module | None, ...] = ()) -> None:
    """Install diffusers' context parallelism on the adapter's transformer(s) (and `extra` transformers of the same
    class, e.g. a frozen KL reference) over `layout`'s SP group (a no-op for a layout without SP).
    `ModelMixin.enable_parallelism` does the same but asks for an accelerator device; here the mesh is ours, so CPU
    processes (gloo) run it too."""
    if layout.degree == 1:
        return
    from diffusers import ContextParallelConfig
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig as DiffusersParallelConfig

    check_supported(adapter, layout)
    mesh = layout.mesh
    device = torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" else "cpu"
    for t in [*_transformers(adapter), *[m for m in extra if m is not None]]:
        if getattr(t, "_parallel_config", None) is not None:
            raise RuntimeError(f"{type(t).__name__} already runs in parallel")
        cp = ContextParallelConfig(ulysses_degree=layout.sp, ring_degree=layout.ring, mesh=mesh["ring", "ulysses"])
        config = DiffusersParallelConfig(context_parallel_config=cp)
        config.setup(layout.rank, layout.world, torch.device(device), mesh=mesh["ring", "ulysses"])
        t._parallel_config = config
        for m in t.modules():
            proc = getattr(m, "processor", None)
            if proc is not None and hasattr(proc, "_parallel_config"):
                proc._parallel_config = config
        apply_context_parallel(t, cp, t._cp_plan)
    adapter.sequence_parallel = layout


def check_tokens(adapter: Any, latents_shape: tuple[int, ...], layout: Layout) -> None:
    """A one-line error when a video's tokens do not split evenly over the SP group."""
    if layout.degree == 1:
        return
    p = adapter.transformer.config.patch_size
    t, h, w = latents_shape[-3] // p[0], latents_shape[-2] // p[1], latents_shape[-1] // p[2]
    if (t * h * w) % layout.degree:
        raise ValueError(
            f"sequence parallelism: {t}×{h}×{w} = {t * h * w} video tokens do not split over {layout.degree} ranks; "
            "pick a size whose token count they divide"
        )


def scale_gradients(params: list[torch.nn.Parameter], layout: Layout) -> list[Any]:
    """Multiply each parameter's gradient by `layout.grad_scale` as it is computed (before DDP / FSDP average it over
    all ranks), for trainers whose losses are not scaled at the source; → the hook handles."""
    if layout.degree == 1:
        return []
    scale = layout.grad_scale
    return [p.register_hook(lambda g: g * scale) for p in params if p.requires_grad]


def sp_leaders(layout: Layout, rows_per_rank: int) -> torch.Tensor:
    """Indices of the rows of an all-ranks gather (`rows_per_rank` per rank, in rank order) that come from the first
    rank of each SP group: one copy of every sample."""
    ranks = torch.arange(0, layout.world, layout.degree)
    return (ranks[:, None] * rows_per_rank + torch.arange(rows_per_rank)[None, :]).reshape(-1)


def all_reduce_grads(params: list[torch.nn.Parameter], accelerator, dp_size: int | None = None) -> None:
    """Sum the gradients over processes and divide by the data-parallel size `dp_size` (default: every process drew
    its own batch; under sequence parallelism the ranks of one SP group hold parts of one batch's gradient)."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= dp_size or accelerator.num_processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def check_replicas(nets: torch.nn.Module, accelerator) -> None:
    """With several processes: every process must hold the same weights (each drew its own batch; the averaged
    gradients keep them equal); a difference is an error, not a silent divergence."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        total = torch.stack([p.detach().double().sum() for p in nets.parameters()]).sum().view(1)
    hi, lo = total.clone(), total.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    if float(hi - lo) > 1e-6 * max(1.0, abs(float(total))):
        raise RuntimeError(f"the processes' weights differ (checksums {float(lo)} … {float(hi)})")
