"""The comparison report of a run folder: plots, tables, ``report.html``.

:func:`build_report` writes into the run folder:

* ``summary.json``: every number (see :mod:`compsearch.studies.summary` for definitions);
* ``summary.md``: the same tables in Markdown;
* ``pareto.png``: the feasible evaluations and each strategy's Pareto front (first two
  objectives), with the uncompressed baseline and the reference point;
* ``hypervolume.png``: normalised hypervolume against evaluations (mean over seeds,
  min-max band);
* ``policies.png``: per-layer heatmaps of the Pareto policies (weight bits, input bits, kept
  fraction per unit in network order; :mod:`compsearch.studies.figures`);
* ``pareto.html``: the interactive Pareto page (plotly, self-contained): hovering a Pareto
  point shows its policy;
* ``report.html``: one self-contained page (PNGs inlined as base64 data URIs, no
  script, no external resource), so it opens offline.

Spreads over seeds are the mean and the half-width of its 95 % Student-t interval
(``t(0.975, n - 1) x std / sqrt(n)``); with one seed the report says "one seed: no
interval". Equivalent policies (one canonical form) are one Pareto row.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compsearch.studies.figures import (
    constraint_lines,
    pareto_page,
    plot_policy_heatmaps,
    png_bytes,
    pyplot,
)
from compsearch.studies.summary import add_test_accuracy, summarize

REPORT_FILES = ("report.html", "pareto.png", "hypervolume.png", "policies.png", "pareto.html", "summary.json", "summary.md")


# ---- formatting -----------------------------------------------------------------------


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def fmt_spread(s: dict[str, Any], digits: int = 4) -> str:
    """``mean ± h`` over seeds, ``h`` the half-width of the 95 % t-interval (``ci``, see
    :func:`~compsearch.studies.summary.spread`); just the value for one seed, ``-`` for none."""
    if not s or s.get("mean") is None:
        return "-"
    text = fmt(s["mean"], digits)
    return text + (f" ± {fmt(s.get('ci', s['std']), digits)}" if s.get("n", 0) > 1 else "")


def spread_wording(summary: dict[str, Any]) -> str:
    """What ``±`` means in the tables: the interval over the seeds, or that one seed has none."""
    n = len(summary.get("seeds", []))
    return f"mean ± 95% t-interval half-width over {n} seeds" if n > 1 else "one seed: no interval"


def _policy_text(policy: dict[str, Any] | None) -> str:
    units = (policy or {}).get("units", {})
    if not units:
        return "uncompressed"
    bits = sorted({int(u.get("w_bits", 32)) for u in units.values()})
    keep = [float(u.get("keep", 1.0)) for u in units.values()]
    a_bits = sorted({int(u.get("a_bits", 32)) for u in units.values()})
    return f"w_bits {bits}, a_bits {a_bits}, keep {min(keep):.3g}-{max(keep):.3g}"


def summary_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table, one row per strategy."""
    header = ["strategy", "HV @25%", "HV @50%", "HV @100%", f"evals to {int(summary['target_fraction'] * 100)}%",
              "complete", "feasible", "failed", "reused"]
    rows = []
    for name, s in summary["strategies"].items():
        reach = s["evals_to_target"]
        reached = f"{fmt(reach['mean'], 3)} ({reach['reached']}/{reach['seeds']})" if reach["reached"] else f"- (0/{reach['seeds']})"
        hv = s["hypervolume"]
        rows.append([name, fmt_spread(hv["25%"]), fmt_spread(hv["50%"]), fmt_spread(hv["100%"]), reached,
                     str(s["states"]["complete"]), str(s["states"]["feasible"]), str(s["states"]["failed"]),
                     str(s["states"].get("reused", 0))])
    return header, rows


def constraint_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Best value under each constraint: one row per strategy, one column per constraint."""
    labels: list[str] = []
    for s in summary["strategies"].values():
        labels += [k for k in s["best_under_constraints"] if k not in labels]
    first: dict[str, Any] = next(iter(summary["strategies"].values()), {"best_under_constraints": {}})["best_under_constraints"]
    header = ["strategy"] + [f"best {first.get(k, {}).get('metric', '')} with {k}" for k in labels]
    rows = [[name] + [fmt_spread(s["best_under_constraints"].get(k, {})) for k in labels]
            for name, s in summary["strategies"].items()]
    return header, rows


def pareto_rows(summary: dict[str, Any], *, policy: bool = True) -> tuple[list[str], list[list[str]]]:
    """Every strategy's Pareto points with validation and test quality (``test_accuracy`` or
    ``test_return``), plus the baseline (``policy``: add a column summarising each policy)."""
    metrics = [m for m, _ in summary["objectives"]]
    quality = summary.get("quality", "accuracy")
    extra = [m for m in ("compression_ratio", "bops") if m not in metrics]
    header = ["strategy", "seed", "trial", *metrics, f"test_{quality}", *extra, *(["policy"] if policy else [])]
    rows = []
    for seed, m in summary["baseline"].items():
        if isinstance(m, dict) and quality in m:
            rows.append(["uncompressed", seed, "-", *[fmt(m.get(k)) for k in metrics],
                         fmt(m.get(f"test_{quality}")), *[fmt(m.get(k)) for k in extra], *(["uncompressed"] if policy else [])])
    for name, s in summary["strategies"].items():
        for r in s["pareto"]:
            rows.append([name, str(r["seed"]), str(r["trial"]), *[fmt(r["metrics"].get(k)) for k in metrics],
                         fmt(r.get(f"test_{quality}")), *[fmt(r["metrics"].get(k)) for k in extra],
                         *([_policy_text(r["policy"])] if policy else [])])
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(table_id: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr data-strategy="{html.escape(row[0])}">' + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---- plots ----------------------------------------------------------------------------


_figure = pyplot  # matplotlib's pyplot on the Agg backend (compsearch.studies.figures)


def plot_pareto(summary: dict[str, Any]) -> bytes:
    """PNG of feasible evaluations (faint) and Pareto fronts (lines) on the first two objectives."""
    plt = _figure()
    (ym, yd), (xm, xd) = (summary["objectives"] + [["trial", "minimize"]])[:2]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    colors = plt.get_cmap("tab10")
    for i, (name, s) in enumerate(summary["strategies"].items()):
        pts = np.asarray(s["points"], dtype=float).reshape(-1, len(summary["objectives"]))
        if len(pts) and pts.shape[1] > 1:
            ax.scatter(pts[:, 1], pts[:, 0], s=12, alpha=0.25, color=colors(i % 10))
        front = np.asarray([r["values"][:2] for r in s["pareto"]], dtype=float).reshape(-1, 2)
        if len(front) and len(summary["objectives"]) > 1:
            front = front[np.argsort(front[:, 1])]
            ax.step(front[:, 1], front[:, 0], where="post", color=colors(i % 10), lw=1.5)
            ax.scatter(front[:, 1], front[:, 0], s=28, color=colors(i % 10), label=f"{name} ({len(front)})")
        else:
            ax.plot([], [], color=colors(i % 10), label=f"{name} (no feasible point)")
    for seed, m in summary["baseline"].items():
        if isinstance(m, dict) and ym in m and xm in m:
            ax.scatter([m[xm]], [m[ym]], marker="*", s=160, color="black", label="uncompressed" if seed == next(iter(summary["baseline"])) else None)
    constraint_lines(ax, summary.get("constraints", {}), xm, ym)
    _reference_lines(ax, summary["reference_point"], xm, ym)
    ax.set_xlabel(f"{xm} ({xd})")
    ax.set_ylabel(f"{ym} ({yd})")
    ax.set_title(f"{summary['name']}: feasible evaluations and Pareto fronts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _reference_lines(ax: Any, ref: dict[str, float], xm: str, ym: str) -> None:
    """Dashed reference-point lines, without widening the data's view; log x for wide ranges."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if x0 > 0 and x1 / x0 > 20:
        ax.set_xscale("log")
        (x0, x1) = ax.get_xlim()
    if xm in ref:
        ax.axvline(ref[xm], ls="--", lw=0.8, color="grey", label=f"reference {xm}")
    if ym in ref:
        ax.axhline(ref[ym], ls="--", lw=0.8, color="grey")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def plot_hypervolume(summary: dict[str, Any]) -> bytes:
    """PNG of normalised hypervolume against counted evaluations: mean over seeds, min-max band."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    colors = plt.get_cmap("tab10")
    for i, (name, s) in enumerate(summary["strategies"].items()):
        curves = [c for c in s["curves"].values() if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        arr = np.asarray([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        ax.plot(x, arr.mean(axis=0), drawstyle="steps-post", color=colors(i % 10), lw=1.6, label=f"{name} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        if len(curves) > 1:
            ax.fill_between(x, arr.min(axis=0), arr.max(axis=0), step="post", color=colors(i % 10), alpha=0.15)
    if summary["hv_target"] > 0:
        ax.axhline(summary["hv_target"], ls=":", lw=0.8, color="grey", label=f"{int(summary['target_fraction'] * 100)}% of best final")
    ax.set_xlabel("full evaluations (counted trials)")
    ax.set_ylabel("normalised hypervolume")
    ax.set_title(f"{summary['name']}: hypervolume vs budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


_png = png_bytes  # a figure as PNG bytes, closed


# ---- documents ------------------------------------------------------------------------


def _tables(summary: dict[str, Any]) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    out = [("summary", f"Hypervolume and budget ({spread_wording(summary)})", summary_rows(summary))]
    if summary["constraints"]:
        out.append(("constraints", "Best under each constraint", constraint_rows(summary)))
    out.append(("pareto-points", f"Pareto points (selected on validation; test {summary.get('quality', 'accuracy')} reported only)",
                pareto_rows(summary)))
    return out


def _notes(summary: dict[str, Any]) -> list[str]:
    ref = ", ".join(f"{k} = {fmt(v)}" for k, v in summary["reference_point"].items())
    base = summary.get("base", {})
    return [
        f"Budget: {summary['budget']} full evaluations per strategy and seed; seeds {summary['seeds']}.",
        f"Spread over seeds: {spread_wording(summary)}"
        + (" (Student-t, n - 1 degrees of freedom)." if len(summary.get("seeds", [])) > 1 else "."),
        "Equivalent policies (the same canonical form: same compressed model and costs) are one Pareto row; "
        "'reused' counts trials that reused an equivalent policy's evaluation (they use budget, not compute).",
        f"Reference point (fixed before the run): {ref}; normalisation scales {[fmt(s) for s in summary['scales']]}.",
        f"Budget rule: {summary.get('budget_rule')}.",
        f"Uncompressed base model: val {summary.get('quality', 'accuracy')} "
        f"{fmt(base.get('val_' + summary.get('quality', 'accuracy')))} (hash {str(base.get('hash', ''))[:12]}).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in summary.get('versions', {}).items())}.",
    ]


def render_markdown(summary: dict[str, Any]) -> str:
    parts = [f"# {summary['name']}", summary.get("description") or ""]
    for _, title, (header, rows) in _tables(summary):
        parts += [f"## {title}", markdown_table(header, rows)]
    parts += ["## Notes", "\n".join(f"- {n}" for n in _notes(summary))]
    return "\n\n".join(p for p in parts if p) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd}
h1{margin-bottom:0.2em}.notes li{margin:0.2em 0}"""


def render_html(summary: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """A self-contained page: inline CSS, PNGs as base64 data URIs, no script."""
    imgs = {k: base64.b64encode(v).decode("ascii") for k, v in pngs.items()}
    parts = [f"<h1>compsearch report: {html.escape(summary['name'])}</h1>",
             f"<p>{html.escape(summary.get('description') or '')}</p>"]
    for table_id, title, (header, rows) in _tables(summary):
        parts.append(f"<h2>{html.escape(title)}</h2>{html_table(table_id, header, rows)}")
        if table_id == "summary":
            for key, alt in (("pareto", "Pareto fronts"), ("hypervolume", "Hypervolume vs budget"),
                             ("policies", "Pareto policies per unit")):
                if key in imgs:
                    parts.append(f'<h2>{alt}</h2><img id="{key}" alt="{alt}" src="data:image/png;base64,{imgs[key]}">')
            parts.append('<p><a id="interactive" href="pareto.html">Interactive Pareto page</a> '
                         "(hover a point for its policy)</p>")
    parts.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in _notes(summary)) + "</ul>")
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>compsearch: {html.escape(summary["name"])}'
            f"</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def build_report(out_dir: str | Path, *, test: bool = True, storage: str | None = None) -> dict[str, Any]:
    """Write ``report.html``, ``pareto.png``, ``hypervolume.png``, ``policies.png``,
    ``pareto.html``, ``summary.json`` and ``summary.md`` into the run folder ``out_dir``.
    It reads the storage and the run folder only: the test split of the final points was
    measured at the end of the run; a point without that measurement is evaluated now,
    which builds the model (importing the run's plugins) and says so.

    Args:
        out_dir: a folder written by ``run_study``.
        test: evaluate the Pareto points on the test split (cached in ``test_eval.json``);
            False only fills what the cache already holds.
        storage: the storage URL when run.json keeps it without its password (else
            ``COMPSEARCH_STORAGE``).

    Returns:
        The summary (as written to ``summary.json``), with ``files`` -> paths.
    """
    out = Path(out_dir)
    summary = summarize(out, storage=storage)
    add_test_accuracy(summary, out, compute=test, storage=storage)
    pngs = {"pareto": plot_pareto(summary), "hypervolume": plot_hypervolume(summary)}
    heatmaps = plot_policy_heatmaps(summary)
    if heatmaps is not None:
        pngs["policies"] = heatmaps
    for key, data in pngs.items():
        (out / f"{key}.png").write_bytes(data)
    (out / "pareto.html").write_text(pareto_page(summary), encoding="utf-8")
    (out / "summary.md").write_text(render_markdown(summary))
    (out / "report.html").write_text(render_html(summary, pngs))
    summary["files"] = {name: str(out / name) for name in REPORT_FILES if (out / name).is_file() or name == "summary.json"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["REPORT_FILES", "build_report", "markdown_table", "pareto_rows", "render_html", "render_markdown", "summary_rows"]
