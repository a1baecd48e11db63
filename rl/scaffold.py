"""The update scaffold every RL algorithm (and the rewriter's GRPO) shares: how an iteration's update turns loss terms
into optimizer steps. An algorithm (`vidpost.rl.algorithms.*`) supplies only its loss term.

- `accumulate(terms, loss_fn, ...)`: one optimizer step's gradient. For each term t of `terms`, in order (a
  micro-batch, or a (micro-batch, trained step) pair): `loss_fn(t)` inside autocast, then backward(loss / #terms);
  with several processes every backward but the last runs inside `no_sync` (one all-reduce per optimizer step).
  → the step's loss, the mean over its terms. With `accelerator=None`: plain `backward()`, no autocast.
- `reference(model, reference_model, fn)`: `fn(net)` evaluated by the reference policy without gradients — the
  frozen `reference_model` (a full fine-tune's copy) or else `model` with its LoRA adapters disabled; the KL terms
  of every algorithm read it.
- `optimizer_steps(trainer, params, parts, accumulate_part, stats, what, after_step)`: one optimizer step per part
  of the iteration's micro-batches: its gradient (`accumulate_part(part)` → its loss; a non-finite loss stops the
  run), the clipped gradient norm (logged in `stats.grad_norms`), AdamW and the schedule, `after_step()` (the EMA,
  the old policy), then the non-finite checks of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def accumulate(
    terms: Sequence[T],
    loss_fn: Callable[[T], torch.Tensor],
    *,
    model: torch.nn.Module | None,
    accelerator: Any | None,
    weight: Callable[[Any, T], Any] | None = None,
) -> float:
    """Accumulate the gradient of the mean of `loss_fn` over `terms` (module docstring) → that mean. `weight(x, t)`
    weighs term t's loss x (a tensor, then its float) instead of x / #terms (e.g. by its share of the samples)."""
    weight = weight or (lambda x, t: x / len(terms))
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    sync_every = accelerator is None or accelerator.num_processes == 1
    loss_sum = 0.0
    for j, term in enumerate(terms):
        last = j == len(terms) - 1
        ctx = accelerator.no_sync(model) if not (sync_every or last) else contextlib.nullcontext()
        with ctx, autocast():
            loss = loss_fn(term)
            backward(weight(loss, term))
        loss_sum += weight(float(loss.detach()), term)
    return loss_sum


@contextlib.contextmanager
def lora_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The (possibly DDP-wrapped) model with its LoRA adapters off: the reference policy of a LoRA run."""
    unwrapped = model.module if hasattr(model, "module") else model
    unwrapped.disable_adapters()
    try:
        yield
    finally:
        unwrapped.enable_adapters()


def reference(
    model: torch.nn.Module, reference_model: torch.nn.Module | None, fn: Callable[[torch.nn.Module], T]
) -> T:
    """`fn(net)` under the reference policy, without gradients (module docstring)."""
    with torch.no_grad():
        if reference_model is not None:
            return fn(reference_model)
        with lora_disabled(model):
            return fn(model)


def optimizer_steps(
    trainer: Any,
    params: list[torch.nn.Parameter],
    parts: list[Any],
    accumulate_part: Callable[[Any], float],
    stats: Any,
    what: str,
    after_step: Callable[[], None] | None = None,
    always_norm: bool = False,
) -> None:
    """One optimizer step per part (module docstring); `stats.loss` gets the mean of the parts' losses;
    `always_norm`: measure the gradient norm even when clipping is off."""
    for part in parts:
        loss = accumulate_part(part)
        trainer.check_finite(f"{what} loss", loss)
        stats.loss += loss / len(parts)
        grad_norm = trainer.clip(params, always=always_norm)
        if grad_norm is not None:
            stats.grad_norms.append(grad_norm)
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        trainer.ckpt.check_step(trainer.step + 1, grad_norm=grad_norm)
