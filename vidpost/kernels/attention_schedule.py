"""Denoising-step-aware (and optionally layer-aware) schedule for block-sparse FP8 attention.

Early denoising steps fix the global layout of a video and are sensitive to attention sparsity; middle steps
tolerate a small window plus a few far tiles; late steps refine detail. A schedule is an ordered list of rules;
the first rule matching the (step, layer) gives the plan, otherwise ``default`` does. Parsed from a plain dict
(YAML)::

    schedule:
      default: {dense: true}             # optional; dense is the default
      rules:
        - {steps: [0.0, 0.15], dense: true}                 # floats: fractions of num_steps, [start, end)
        - {steps: [0.15, 0.6], window: [1, 1, 1], topk: 4}  # window = tile half-widths (t, h, w)
        - {steps: [0.6, 1.0], window: [1, 2, 2], topk: 8, quant: fp8, granularity: tile}
        - {steps: [40, 50], layers: [0, 1], dense: true, quant: bf16}  # ints: step indices, [start, end)

Rule keys: ``steps`` (two floats in [0, 1] = fractions of ``num_steps``, or two ints = step indices; omitted =
every step), ``layers`` (list of layer indices; omitted = every layer), ``dense`` (bool), ``window`` (three
non-negative ints), ``topk`` (positive int), ``quant`` ("fp8" | "bf16"; default: the function's ``quant``
option), ``granularity`` ("tile" | "head": one Q/K scale per tile and head, or per head). A rule with neither
``window`` nor ``topk`` is dense. Unknown keys and bad values raise ``ValueError`` naming them. When the caller does not know the step or ``num_steps`` is None, ``default`` applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

QUANTS = ("fp8", "bf16")

STEP_AWARE_SCHEDULE: dict[str, Any] = {
    "rules": [
        {"steps": [0.0, 0.1], "dense": True},
        {"steps": [0.1, 0.5], "window": [1, 1, 1], "topk": 8},
        {"steps": [0.5, 0.9], "window": [1, 2, 2], "topk": 16},
        {"steps": [0.9, 1.0], "dense": True},
    ]
}
"""A starting point, not tuned on a model: dense while the layout forms (first 10%), sparsest in the early-middle
steps, a wider window later, dense for the last 10%. Window half-widths and top-k are in tiles."""
GRANULARITIES = ("tile", "head")
_RULE_KEYS = {"steps", "layers", "dense", "window", "topk", "quant", "granularity"}
_PLAN_KEYS = _RULE_KEYS - {"steps", "layers"}


@dataclass(frozen=True)
class AttentionPlan:
    """What one attention call does."""

    dense: bool = True
    """Attend to every block (then window/topk are None)."""
    window: tuple[int, int, int] | None = None
    """STA-like window of tile half-widths (t, h, w), or None."""
    topk: int | None = None
    """VSA-like pooled top-k key tiles per query tile, or None."""
    quant: str = "fp8"
    """"fp8" (quantised Q, K, V, P) or "bf16" (no quantisation; computes in the input dtype)."""
    granularity: str = "tile"
    """Q/K scale granularity for fp8: "tile" (per tile and head) or "head" (per head)."""


@dataclass(frozen=True)
class ScheduleRule:
    """A plan and the (step, layer) range where it applies."""

    plan: AttentionPlan
    steps: tuple[float, float] | tuple[int, int] | None = None
    """[start, end) as fractions of num_steps (floats) or step indices (ints); None = every step."""
    layers: frozenset[int] | None = None
    """Layer indices; None = every layer."""

    def matches(self, step: int, num_steps: int, layer: int | None) -> bool:
        if self.layers is not None and (layer is None or layer not in self.layers):
            return False
        if self.steps is None:
            return True
        start, end = self.steps
        if isinstance(start, float):
            frac = step / num_steps
            return start <= frac < end  # step < num_steps, so an end of 1.0 includes the last step
        return start <= step < end


def _parse_plan(entry: dict[str, Any], where: str, quant: str) -> AttentionPlan:
    window, topk = entry.get("window"), entry.get("topk")
    dense = entry.get("dense", window is None and topk is None)
    if not isinstance(dense, bool):
        raise ValueError(f"{where}.dense must be true or false, got {dense!r}")
    if dense and (window is not None or topk is not None):
        raise ValueError(f"{where}: dense: true cannot be combined with window/topk")
    if window is not None:
        if not isinstance(window, (list, tuple)) or len(window) != 3:
            raise ValueError(f"{where}.window must be three tile half-widths [t, h, w], got {window!r}")
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 0 for w in window):
            raise ValueError(f"{where}.window must hold non-negative integers, got {window!r}")
        window = tuple(window)
    if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or topk < 1):
        raise ValueError(f"{where}.topk must be a positive integer, got {topk!r}")
    plan_quant = entry.get("quant", quant)
    if plan_quant not in QUANTS:
        raise ValueError(f"{where}.quant must be one of {QUANTS}, got {plan_quant!r}")
    granularity = entry.get("granularity", "tile")
    if granularity not in GRANULARITIES:
        raise ValueError(f"{where}.granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return AttentionPlan(dense=dense, window=window, topk=topk, quant=plan_quant, granularity=granularity)


def _parse_steps(steps: Any, where: str) -> tuple[float, float] | tuple[int, int]:
    if not isinstance(steps, (list, tuple)) or len(steps) != 2:
        raise ValueError(f"{where}.steps must be [start, end], got {steps!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in steps):
        raise ValueError(f"{where}.steps must hold numbers, got {steps!r}")
    start, end = steps
    if isinstance(start, int) and isinstance(end, int):
        if not 0 <= start < end:
            raise ValueError(f"{where}.steps as indices needs 0 <= start < end, got {steps!r}")
        return (start, end)
    start, end = float(start), float(end)
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"{where}.steps as fractions needs 0 <= start < end <= 1, got {steps!r}")
    return (start, end)


@dataclass(frozen=True)
class AttentionSchedule:
    """Ordered rules; the first that matches wins, else ``default``."""

    rules: tuple[ScheduleRule, ...] = ()
    default: AttentionPlan = AttentionPlan()

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None, quant: str = "fp8") -> AttentionSchedule:
        """Parse the plain-dict form (module docstring); ``quant`` is the default quantisation of every plan."""
        if quant not in QUANTS:
            raise ValueError(f"quant must be one of {QUANTS}, got {quant!r}")
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise ValueError(f"schedule must be a mapping with 'rules' and/or 'default', got {type(config).__name__}")
        unknown = set(config) - {"rules", "default"}
        if unknown:
            raise ValueError(f"unknown schedule key(s) {sorted(unknown)}; expected 'rules' and/or 'default'")
        default_entry = config.get("default") or {}
        if not isinstance(default_entry, dict) or set(default_entry) - _PLAN_KEYS:
            bad = sorted(set(default_entry) - _PLAN_KEYS) if isinstance(default_entry, dict) else default_entry
            raise ValueError(f"schedule.default: unknown key(s) {bad}; allowed {sorted(_PLAN_KEYS)}")
        default = _parse_plan(default_entry, "schedule.default", quant)
        rules_cfg = config.get("rules") or []
        if not isinstance(rules_cfg, list):
            raise ValueError("schedule.rules must be a list of rules")
        rules = []
        for i, entry in enumerate(rules_cfg):
            where = f"schedule.rules[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be a mapping, got {entry!r}")
            unknown = set(entry) - _RULE_KEYS
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed {sorted(_RULE_KEYS)}")
            steps = _parse_steps(entry["steps"], where) if "steps" in entry else None
            layers = entry.get("layers")
            if layers is not None:
                if not isinstance(layers, (list, tuple)) or any(
                    isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in layers
                ):
                    raise ValueError(f"{where}.layers must be a list of non-negative layer indices, got {layers!r}")
                layers = frozenset(layers)
            rules.append(ScheduleRule(plan=_parse_plan(entry, where, quant), steps=steps, layers=layers))
        return cls(rules=tuple(rules), default=default)

    def plan(self, step: int | None, num_steps: int | None, layer: int | None = None) -> AttentionPlan:
        """The plan for denoising step ``step`` of ``num_steps`` at ``layer``."""
        if step is None or num_steps is None:
            return self.default
        if num_steps < 1 or not 0 <= step < num_steps:
            raise ValueError(f"step must be in [0, num_steps), got step={step}, num_steps={num_steps}")
        for rule in self.rules:
            if rule.matches(step, num_steps, layer):
                return rule.plan
        return self.default
