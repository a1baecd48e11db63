"""Run by tests/test_sequence_parallel.py under `torch.distributed.run` (2 CPU processes, gloo): the transformer's
forward and parameter gradients with Ulysses sequence parallelism against the same model unsplit, on every rank.

    python -m torch.distributed.run --nproc_per_node 2 tests/sp_worker.py MODEL_DIR OUT_JSON
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
    layout = make_layout(ParallelConfig(sp_degree=2), dist.get_world_size(), dist.get_rank())
    enable_sequence_parallel(adapter, layout)
    seen = []
    hook = t.blocks[0].attn1.to_q.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    got, grads = run()
    hook.remove()
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
        "local_tokens": seen[0],
        "tokens": int(ref.shape[2] * ref.shape[3] * ref.shape[4] // 4),
    }
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
