"""The self-contained HTML report of an evaluation folder (summary, plots, a GIF grid per prompt, failures)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from vidpost.evaluation.gifs import png_uri, thumb_uri
from vidpost.evaluation.report import (
    compare_rows,
    fmt,
    load_run,
    ranking_sentence,
    safe_name,
    summary_rows,
    summary_table_rows,
)
from vidpost.evaluation.stats import finite, reward_names
from vidpost.outputs import write_text

_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1em 2em;
color:#1d2430;background:#fafbfc}
h1{font-size:1.5em;margin:.3em 0}h2{border-bottom:1px solid #d6dbe2;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:.2em 0 .5em}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
nav a{margin-right:1em}.meta{color:#4a5567}.meta td{padding:1px 10px 1px 0;vertical-align:top}
table.stats{border-collapse:collapse;margin:.5em 0;background:#fff}
table.stats th,table.stats td{border:1px solid #d6dbe2;padding:3px 8px;text-align:right}
table.stats th{background:#eef1f5}table.stats td:first-child,table.stats th:first-child{text-align:left}
.pos{color:#1a7f37;font-weight:600}.neg{color:#c62828;font-weight:600}.note{color:#5c6778;font-size:.9em}
.plots img{margin:4px;border:1px solid #d6dbe2;background:#fff;max-width:100%}
.prompt{background:#fff;border:1px solid #d6dbe2;border-radius:6px;padding:.6em .8em;margin:.7em 0}
.prompt .text{font-weight:500}.cards{display:flex;flex-wrap:wrap;gap:10px;margin-top:.4em}
.card{border:1px solid #e3e7ec;border-radius:5px;padding:6px;background:#fcfcfd}
.card.failed{border-color:#e0a0a0;background:#fff6f6}.pair{display:flex;gap:6px}
.pair figure{margin:0;text-align:center}.pair figcaption{font-size:.8em;color:#5c6778}
img.thumb{display:block;image-rendering:pixelated;border:1px solid #ccd;max-width:256px}
.placeholder{width:128px;height:96px;display:flex;align-items:center;justify-content:center;
background:#eee;color:#a33;font-size:.85em;border:1px dashed #c99}
table.scores{border-collapse:collapse;font-size:.82em;margin-top:4px}
table.scores td,table.scores th{padding:0 6px 0 0;text-align:right}table.scores td:first-child{text-align:left}
.err{color:#b42318;font-size:.82em;max-width:420px;word-break:break-word}
details summary{cursor:pointer;color:#3b6fb6}
</style></head><body>
<h1>{{ title }}</h1>
<nav><a href="#summary">Summary</a>{% if comparison %}<a href="#compare">Comparison</a>{% endif %}<a href="#plots">Plots</a>
<a href="#videos">Videos</a><a href="#failures">Failures ({{ summary.n_failed }})</a></nav>
<table class="meta">{% for k, v in meta %}<tr><td>{{ k }}</td><td class="mono">{{ v }}</td></tr>{% endfor %}</table>

<h2 id="summary">Summary</h2>
<p>{{ summary.n_videos }} videos for {{ summary.n_prompts }} prompts: {{ summary.n_ok }} scored,
{{ summary.n_failed }} failed.</p>
<table class="stats"><tr><th>reward</th><th>weight</th><th>n</th><th>mean</th><th>95% CI (t)</th><th>std</th>
<th>median</th><th>min</th><th>max</th><th>Wilson 95%</th></tr>
{% for r in summary_rows %}<tr><td>{{ r.reward }}</td><td>{{ r.weight }}</td><td>{{ r.n }}</td><td><b>{{ r.mean }}</b></td>
<td>{{ r.ci95 }}</td><td>{{ r.std }}</td><td>{{ r.median }}</td><td>{{ r.min }}</td><td>{{ r.max }}</td>
<td>{{ r.wilson95 }}</td></tr>{% endfor %}</table>
<p class="note">{{ summary.ci_method }}.</p>
{% if component_rows %}<details><summary>Components ({{ component_rows|length }})</summary>
<table class="stats"><tr><th>component</th><th>n</th><th>mean</th><th>95% CI (t)</th><th>std</th><th>min</th><th>max</th>
<th>Wilson 95%</th></tr>{% for r in component_rows %}<tr><td>{{ r.reward }}</td><td>{{ r.n }}</td><td>{{ r.mean }}</td>
<td>{{ r.ci95 }}</td><td>{{ r.std }}</td><td>{{ r.min }}</td><td>{{ r.max }}</td><td>{{ r.wilson95 }}</td></tr>
{% endfor %}</table></details>{% endif %}

{% if comparison %}<h2 id="compare">Comparison: {{ labels[0] }} vs {{ labels[1] }}</h2>
{% if ranking %}<p><b>{{ ranking }}</b></p>{% endif %}
<p>Other run: <code>{{ other_dir }}</code>. {{ comparison.n_common }} videos in both runs
({{ comparison.only_this|length }} only in this run, {{ comparison.only_other|length }} only in the other).</p>
<table class="stats"><tr><th>reward</th><th>pairs</th><th>{{ labels[0] }}</th><th>{{ labels[1] }}</th>
<th>Δ ({{ labels[0] }} − {{ labels[1] }})</th><th>95% CI</th><th>win rate</th><th>W/T/L</th></tr>
{% for r in compare_rows %}{% if r.n == "0" %}<tr><td>{{ r.reward }}</td><td>0</td><td colspan="6">no pairs</td></tr>
{% else %}<tr><td>{{ r.reward }}</td><td>{{ r.n }}</td><td>{{ r.this }}</td><td>{{ r.other }}</td>
<td class="{{ r.sign }}">{{ r.delta }}</td><td>{{ r.ci95 }}</td><td>{{ r.win_rate }}</td><td>{{ r.wtl }}</td></tr>
{% endif %}{% endfor %}</table>
<p class="note">{{ comparison.method }}.</p>
{% if comparison.only_other %}<p class="note">Only in {{ labels[1] }}: {{ comparison.only_other|join(", ") }}</p>{% endif %}
{% if comparison.only_this %}<p class="note">Only in {{ labels[0] }}: {{ comparison.only_this|join(", ") }}</p>{% endif %}
{% if comparison.prompt_mismatch %}<p class="neg">Different prompts under the same id:
{{ comparison.prompt_mismatch|join(", ") }}</p>{% endif %}{% endif %}

<h2 id="plots">Plots</h2>
<div class="plots">{% for name, uri in plots %}<img alt="{{ name }}" title="{{ name }}" src="{{ uri }}">{% endfor %}</div>

<h2 id="videos">Videos</h2>
{% for g in groups %}<div class="prompt" id="p-{{ g.id }}"><h3><span class="mono">{{ g.id }}</span> —
<span class="text">{{ g.prompt }}</span></h3><div class="cards">
{% for v in g.videos %}<div class="card{% if v.status != 'ok' %} failed{% endif %}" id="v-{{ v.id }}"><div class="pair">
{% for side in v.sides %}<figure>{% if side.uri %}<img class="thumb" data-id="{{ v.id }}" alt="{{ v.id }}" src="{{ side.uri }}">
{% else %}<div class="placeholder">{{ side.status }}</div>{% endif %}
{% if v.sides|length > 1 %}<figcaption>{{ side.label }}</figcaption>{% endif %}</figure>{% endfor %}</div>
<div class="mono">{{ v.id }}{% if v.seed is not none %} · seed {{ v.seed }}{% endif %}</div>
{% if v.error %}<div class="err">{{ v.status }}: {{ v.error }}</div>{% endif %}
<table class="scores">{% if v.sides|length > 1 %}<tr><th></th><th>{{ labels[0] }}</th><th>{{ labels[1] }}</th><th>Δ</th></tr>{% endif %}
{% for s in v.scores %}<tr><td>{{ s.name }}</td><td>{{ s.this }}</td>{% if v.sides|length > 1 %}<td>{{ s.other }}</td>
<td class="{{ s.sign }}">{{ s.delta }}</td>{% endif %}</tr>{% endfor %}</table></div>
{% endfor %}</div></div>{% endfor %}

<h2 id="failures">Failures ({{ summary.n_failed }})</h2>
{% if summary.failures %}<table class="stats"><tr><th>id</th><th>prompt</th><th>status</th><th>error</th></tr>
{% for f in summary.failures %}<tr><td class="mono"><a href="#v-{{ f.id }}">{{ f.id }}</a></td>
<td style="text-align:left">{{ f.prompt }}</td><td>{{ f.status }}</td><td class="err" style="text-align:left">{{ f.error }}</td></tr>
{% endfor %}</table>{% else %}<p>None: every video was read and scored.</p>{% endif %}
<p class="note">Generated by <code>vidpost eval</code> on {{ created }}.</p>
</body></html>
"""


def _labels(out: Path, other_dir: Path | None) -> tuple[str, str]:
    if other_dir is None:
        return ("this", "other")
    a, b = out.resolve().name or "this", other_dir.resolve().name or "other"
    return (a, b) if a != b else ("this", "other")


def write_report(
    out: str | os.PathLike,
    *,
    title: str | None = None,
    gif_size: int = 128,
    gif_frames: int = 16,
) -> Path:
    """Write `<out>/report.html` from the files of an eval output folder (`scores.json`, `summary.json`,
    `compare.json` and the other run's folder it names, `plots/`, `thumbs/`); every image is embedded."""
    import jinja2

    out = Path(out)
    run = load_run(out)
    records, summary = run["records"], run["summary"]
    comparison = json.loads((out / "compare.json").read_text()) if (out / "compare.json").is_file() else None
    other_dir = Path(comparison["other_dir"]) if comparison else None
    try:
        other = {r["id"]: r for r in load_run(other_dir)["records"]} if other_dir else {}
    except (ValueError, OSError):  # the other run has moved since: no side-by-side videos
        other = {}
    labels = _labels(out, other_dir)
    names = reward_names(records, run["weights"])
    rows_keys = names + (["total"] if run["weighted"] else [])

    def value(rec: dict | None, key: str) -> float | None:
        if rec is None:
            return None
        return finite(rec.get("total")) if key == "total" else finite(rec.get("scores", {}).get(key))

    groups: dict[str, dict] = {}
    for rec in records:
        g = groups.setdefault(rec["prompt_id"], {"id": rec["prompt_id"], "prompt": rec["prompt"], "videos": []})
        sides = [{"label": labels[0], "status": rec["status"], "uri": thumb_uri(out, rec, gif_size, gif_frames)}]
        theirs = other.get(rec["id"]) if comparison else None
        if comparison:
            sides.append(
                {
                    "label": labels[1],
                    "status": theirs["status"] if theirs else "not in other run",
                    "uri": thumb_uri(other_dir, theirs, gif_size, gif_frames) if theirs else None,
                }
            )
        scores = []
        for key in rows_keys:
            a, b = value(rec, key), value(theirs, key)
            d = None if a is None or b is None else a - b
            sign = "" if d is None or abs(d) <= 1e-12 else ("pos" if d > 0 else "neg")
            scores.append(
                {
                    "name": "weighted total" if key == "total" else key,
                    "this": fmt(a),
                    "other": fmt(b),
                    "delta": "–" if d is None else f"{d:+.3g}",
                    "sign": sign,
                }
            )
        g["videos"].append({**rec, "sides": sides, "scores": scores})

    run_info = summary.get("run", {})
    meta = [(k, v) for k, v in run_info.items() if v not in (None, "", [], {})]
    component_rows = summary_rows(summary.get("components", {}))
    order = [f"hist_{safe_name(n)}" for n in names] + ["box", "paired"]
    files = sorted(
        (out / "plots").glob("*.png"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem)
    )
    plots = [(p.stem, png_uri(p)) for p in files]
    html = (
        jinja2.Environment(autoescape=True, trim_blocks=False)
        .from_string(_TEMPLATE)
        .render(
            title=title or summary.get("title") or f"vidpost eval — {out.resolve().name}",
            meta=meta,
            summary=summary,
            summary_rows=summary_table_rows(summary),
            component_rows=component_rows,
            comparison=comparison,
            compare_rows=compare_rows(comparison) if comparison else [],
            ranking=ranking_sentence(comparison["ranking"], labels)
            if comparison and comparison.get("ranking")
            else "",
            other_dir=str(other_dir) if other_dir else "",
            labels=labels,
            plots=plots,
            groups=list(groups.values()),
            created=_dt.datetime.now().isoformat(timespec="seconds"),
        )
    )
    path = out / "report.html"
    return write_text(path, html)
