"""Run by tests/test_sequence_parallel.py under `torch.distributed.run` (2 CPU processes, gloo): the transformer's
forward and parameter gradients on a 2-sample batch, in a parallel layout, against the same model unsplit.

    python -m torch.distributed.run --nproc_per_node 2 tests/sp_worker.py MODEL_DIR OUT_JSON [MODE]

MODE: `sp` (SP 2, the per-rank gradient parts summed), `sp_fsdp` (SP 2 with the model sharded over the same 2
ranks by FSDP2's `fully_shard`, the loss scaled by the SP degree as the trainers do) or `fsdp_dp` (FSDP 2 × SP 1:
each rank one sample, FSDP averages).
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist


def main() -> None:
    model_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    from vidpost.models import load
    from vidpost.training.parallel import ParallelConfig, enable_sequence_parallel, make_layout

    adapter = load(model_dir)
    t = adapter.transformer.requires_grad_(True)
    g = torch.Generator().manual_seed(0)  # the same inputs on every rank
    x = torch.randn(adapter.latent_shape(2, 9, 32, 32), generator=g)
    sigma = torch.tensor([0.3, 0.8])
    cond = adapter.encode_prompt(["a red circle moves right", "a blue square"])

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t.zero_grad(set_to_none=True)
        v = adapter.predict_velocity(x, sigma, cond)
        (v.double() ** 2).mean().backward()
        return v.detach(), {n: p.grad.detach().clone() for n, p in t.named_parameters() if p.grad is not None}

    ref, ref_grads = run()
    mode = sys.argv[3] if len(sys.argv) > 3 else "sp"
    rank = dist.get_rank()
    seen = []
    hook = t.blocks[0].attn1.to_q.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    if mode in ("sp", "sp_fsdp"):
        layout = make_layout(ParallelConfig(sp_degree=2), dist.get_world_size(), rank)
        enable_sequence_parallel(adapter, layout)
    if mode in ("sp_fsdp", "fsdp_dp"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (2,))
        for block in t.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(t, mesh=mesh)
    if mode == "fsdp_dp":  # each rank its own sample; FSDP averages the two ranks' gradients
        t.zero_grad(set_to_none=True)
        v = adapter.predict_velocity(x[rank : rank + 1], sigma[rank : rank + 1], cond.index([rank]))
        (v.double() ** 2).mean().backward()
        parts = [torch.empty_like(v) for _ in range(2)]
        dist.all_gather(parts, v.detach().contiguous())
        got = torch.cat(parts)
        grads = {n: p.grad for n, p in t.named_parameters() if p.grad is not None}
    else:
        t.zero_grad(set_to_none=True)
        got = adapter.predict_velocity(x, sigma, cond)
        scale = 2.0 if mode == "sp_fsdp" else 1.0  # FSDP averages over the 2 ranks: the trainers' loss scale
        ((got.double() ** 2).mean() * scale).backward()
        got = got.detach()
        grads = {n: p.grad for n, p in t.named_parameters() if p.grad is not None}
    hook.remove()
    grads = {n: (g.full_tensor() if hasattr(g, "full_tensor") else g).clone() for n, g in grads.items()}
    if mode == "sp":
        for v in grads.values():  # each rank holds the gradient of its tokens' part: their sum is the whole
            dist.all_reduce(v)
    grad_diff = max(
        float((grads[n] - ref_grads[n]).abs().max() / ref_grads[n].abs().max().clamp_min(1e-12)) for n in ref_grads
    )
    result = {
        "rank": dist.get_rank(),
        "forward_max_abs_diff": float((got - ref).abs().max()),
        "forward_scale": float(ref.abs().max()),
        "grad_max_rel_diff": grad_diff,
        "grads": [len(grads), len(ref_grads)],
        "mode": mode,
        "local_tokens": seen[0],
        "tokens": int(ref.shape[2] * ref.shape[3] * ref.shape[4] // 4),
    }
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
