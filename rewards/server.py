"""Rewards in separate worker processes behind a queue, so a training loop keeps sampling while rewards run.

    server = RewardServer({"hps": {"weight": 1.0, "path": ...}, "motion": 0.2}, workers=2, devices=["cuda:1"])
    pending = server.submit(videos, prompts)    # returns at once
    ...                                         # sample the next batch meanwhile
    out = pending.result()                      # RewardOutput, identical to WeightedReward(...)(videos, prompts)
    server.close()                              # or use it as a context manager

Each worker process builds its share of the rewards from the same spec `build_rewards` takes (so the spec
must be plain data: names, weights, paths, options); rewards are spread over the workers round-robin, or pinned
with `placement={"hps": 0, "motion": 1}`. Worker `i` runs on `devices[i % len(devices)]` (default: each reward's
own `device`). A job goes to every worker that holds one of its rewards; the parent combines the per-reward
outputs with the same weights as `WeightedReward.combine`, so results equal in-process scoring. A failure in a
worker is re-raised from `result()` with the worker's traceback. Videos travel through shared memory (torch
multiprocessing); the `spawn` start method is used so CUDA works in the workers.
"""

from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import torch
import torch.multiprocessing as mp

from .base import RewardOutput, WeightedReward, build_rewards

_STOP = "__stop__"


def _normalise_spec(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, cfg in spec.items():
        out[name] = {"weight": float(cfg)} if isinstance(cfg, (int, float)) else dict(cfg)
    return out


def _worker(index: int, spec: dict[str, dict[str, Any]], device: str | None, tasks, results) -> None:
    try:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        common = {"device": device} if device else {}
        rewards = build_rewards(spec, **common).rewards
        results.put(("ready", index, None))
    except Exception:  # noqa: BLE001 - reported to the parent
        results.put(("startup-error", index, traceback.format_exc()))
        return
    while True:
        item = tasks.get()
        if item == _STOP:
            break
        job, videos, prompts = item
        try:
            outs = {name: reward(videos, prompts) for name, reward in rewards.items()}
            payload = {name: (o.score, o.components) for name, o in outs.items()}
            results.put(("done", job, payload))
        except Exception:  # noqa: BLE001 - reported to the parent
            results.put(("error", job, f"reward worker {index}:\n{traceback.format_exc()}"))


class RewardServer:
    def __init__(
        self,
        spec: dict[str, Any],
        *,
        workers: int = 1,
        devices: Sequence[str] | None = None,
        placement: dict[str, int] | None = None,
        start_timeout: float = 600.0,
    ) -> None:
        spec = _normalise_spec(spec)
        if not spec:
            raise ValueError("RewardServer: no rewards given")
        workers = max(1, min(workers, len(spec)))
        placement = dict(placement or {})
        for i, name in enumerate(spec):
            placement.setdefault(name, i % workers)
        unknown = set(placement) - set(spec)
        if unknown:
            raise ValueError(f"RewardServer: placement names unknown rewards {sorted(unknown)}")
        self.weights = {name: float(cfg.get("weight", 1.0)) for name, cfg in spec.items()}
        self._names = list(spec)
        self._shares = [{n: spec[n] for n in spec if placement[n] == w} for w in range(workers)]
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(workers)]
        self._procs = []
        for w, share in enumerate(self._shares):
            if not share:
                self._procs.append(None)
                continue
            device = devices[w % len(devices)] if devices else None
            proc = ctx.Process(target=_worker, args=(w, share, device, self._tasks[w], self._results), daemon=True)
            proc.start()
            self._procs.append(proc)
        self._pending: dict[int, tuple[Future, dict[str, tuple], int]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._wait_ready(start_timeout)
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _wait_ready(self, timeout: float) -> None:
        expected = sum(p is not None for p in self._procs)
        ready = 0
        while ready < expected:
            try:
                kind, index, info = self._results.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise TimeoutError(f"RewardServer: workers did not start within {timeout:.0f} s") from None
            if kind == "startup-error":
                self.close()
                raise RuntimeError(f"RewardServer: worker {index} failed to build its rewards:\n{info}")
            ready += 1

    def _collect(self) -> None:
        while True:
            try:
                kind, job, payload = self._results.get()
            except (EOFError, OSError):
                return
            if kind == _STOP:
                return
            with self._lock:
                entry = self._pending.get(job)
                if entry is None:
                    continue
                future, parts, expected = entry
                if kind == "error":
                    del self._pending[job]
                    future.set_exception(RuntimeError(payload))
                    continue
                parts.update(payload)
                if len(parts) == expected:
                    del self._pending[job]
                    outs = {n: RewardOutput(*parts[n]) for n in self._names}
                    future.set_result(WeightedReward.combine_outputs(outs, self.weights))

    def submit(self, videos: torch.Tensor, prompts: Sequence[str]) -> Future:
        """Queue a batch; returns a `concurrent.futures.Future` whose `result()` is the `RewardOutput`."""
        if self._closed:
            raise RuntimeError("RewardServer is closed")
        videos = videos.detach().to("cpu", torch.float32).contiguous()
        job = next(self._ids)
        future: Future = Future()
        with self._lock:
            self._pending[job] = (future, {}, len(self._names))
        for w, share in enumerate(self._shares):
            if share:
                self._tasks[w].put((job, videos, list(prompts)))
        return future

    def __call__(self, videos: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        return self.submit(videos, prompts).result()

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                self._tasks[w].put(_STOP)
        for proc in self._procs:
            if proc is not None:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.terminate()
        self._results.put((_STOP, None, None))

    def __enter__(self) -> RewardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
