"""The report's policy figures: constraint lines, per-layer heatmaps of the Pareto policies,
and the interactive Pareto page.

Everything here reads only a summary (:func:`compsearch.studies.summary.summarize`): the
stored policies of the Pareto points, the units in network order that run.json records, and
the spec's constraints -- never the model or a plugin.

* :func:`constraint_lines`: on a matplotlib Pareto plot, one line per constraint on a
  plotted metric (``max_size_kb <= 12`` at ``size_kb = 12``), the view widened to show it.
* :func:`plot_policy_heatmaps`: a PNG with one row per Pareto point (every strategy, seeds
  pooled, equivalent policies merged) and one column per searched unit in network order
  (execution order of the traced forward): weight bits, input bits and kept fraction.
* :func:`pareto_page`: ``pareto.html``, a self-contained plotly page (plotly.js inline from
  the installed package, no network): every feasible point, each strategy's front, the
  constraint and reference lines; hovering a Pareto point shows its policy unit by unit.
  ``pareto.html#hover=<strategy>/<trial>`` opens with that point's hover label shown.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FLOAT = 32


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes (tight layout); the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def constraint_lines(ax: Any, constraints: Mapping[str, float], xm: str, ym: str) -> list[str]:
    """Draw every constraint on ``xm`` (vertical) or ``ym`` (horizontal) as a red dash-dot line
    labelled ``<key><=|>=<bound>``, widening the view to include it; returns the labels."""
    labels = []
    for key, bound in constraints.items():
        kind, _, metric = key.partition("_")
        if metric not in (xm, ym):
            continue
        label = f"{key}{'<=' if kind == 'max' else '>='}{bound:g}"
        lo, hi = ax.get_xlim() if metric == xm else ax.get_ylim()
        lo, hi = min(lo, bound), max(hi, bound)
        pad = 0.03 * (hi - lo)
        if metric == xm:
            ax.set_xlim(lo - pad if bound == lo else lo, hi + pad if bound == hi else hi)
            ax.axvline(bound, ls="-.", lw=1.1, color="tab:red", label=label)
        else:
            ax.set_ylim(lo - pad if bound == lo else lo, hi + pad if bound == hi else hi)
            ax.axhline(bound, ls="-.", lw=1.1, color="tab:red", label=label)
        labels.append(label)
    return labels


def unit_order(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Searched units in network order (run.json's ``units``), then any other unit a policy
    names (sorted): the heatmap columns."""
    recorded = [u["name"] for u in summary.get("units", []) if u.get("searched", True)]
    named = sorted({n for r in rows for n in ((r.get("policy") or {}).get("units") or {})} - set(recorded))
    return recorded + named


def pareto_points(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(strategy, row)`` of every Pareto row, strategy by strategy."""
    return [(name, r) for name, s in summary["strategies"].items() for r in s["pareto"]]


def _unit(policy: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    fields = {"w_bits": FLOAT, "a_bits": FLOAT, "keep": 1.0, "scheme": "symmetric", "granularity": "channel",
              "structure": "channel"}
    return {**fields, **(((policy or {}).get("units") or {}).get(name) or {})}


def heatmap_arrays(summary: Mapping[str, Any]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Row labels (``strategy s<seed> #<trial>``), unit columns, and ``w_bits`` / ``a_bits`` /
    ``keep`` arrays of shape ``points x units``."""
    points = pareto_points(summary)
    units = unit_order(summary, [r for _, r in points])
    labels = [f"{name} s{r['seed']} #{r['trial']}" for name, r in points]
    arrays = {f: np.array([[float(_unit(r.get("policy"), u)[f]) for u in units] for _, r in points]).reshape(len(points), len(units))
              for f in ("w_bits", "a_bits", "keep")}
    return labels, units, arrays


def plot_policy_heatmaps(summary: Mapping[str, Any]) -> bytes | None:
    """PNG of the Pareto policies, one row per point, one column per unit in network order:
    weight bits, input bits (only when some point quantizes an input) and kept fraction,
    each cell annotated. None when there is no Pareto point."""
    labels, units, arrays = heatmap_arrays(summary)
    if not labels or not units:
        return None
    fields = ["w_bits", *(["a_bits"] if (arrays["a_bits"] < 16).any() else []), "keep"]
    plt = pyplot()
    width = min(22.0, 3.0 + 0.45 * len(units) * len(fields))
    fig, axes = plt.subplots(1, len(fields), figsize=(width, 1.6 + 0.32 * len(labels)), dpi=110, squeeze=False)
    for ax, field in zip(axes[0], fields, strict=True):
        values = arrays[field]
        cmap = "viridis" if field == "keep" else "magma"
        shown = np.minimum(values, 16) if field != "keep" else values  # 16..32 bits are float: one colour
        ax.imshow(shown, aspect="auto", cmap=cmap, vmin=0 if field == "keep" else 1, vmax=1 if field == "keep" else 16)
        ax.set_title({"w_bits": "weight bits", "a_bits": "input bits", "keep": "kept fraction"}[field])
        ax.set_xticks(range(len(units)), units, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [""] * len(labels), fontsize=7)
        for (i, j), v in np.ndenumerate(values):
            text = f"{v:.2g}" if field == "keep" else ("f" if v >= 16 else f"{int(v)}")
            dark = (shown[i, j] > 0.6) if field == "keep" else (shown[i, j] > 10)
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color="black" if dark else "white")
    fig.suptitle(f"{summary['name']}: Pareto policies per unit (network order; f = float, 16/32 bits)", fontsize=9)
    return png_bytes(fig)


# ---- the interactive page ---------------------------------------------------------------


def policy_text(policy: Mapping[str, Any] | None, units: Sequence[str]) -> str:
    """One line per compressed unit in ``units`` order, e.g. ``layer1.conv: w4 a8 keep 0.5
    channel (asymmetric/tensor)``; uncompressed units are summed up in a last line."""
    lines, plain = [], 0
    for name in units:
        up = _unit(policy, name)
        if up["w_bits"] >= FLOAT and up["a_bits"] >= FLOAT and up["keep"] >= 1.0:
            plain += 1
            continue
        w = "w-float" if up["w_bits"] >= 16 else f"w{up['w_bits']}"
        grid = f" ({up['scheme']}/{up['granularity']})" if up["w_bits"] < 16 else ""
        a = "" if up["a_bits"] >= 16 else f" a{up['a_bits']}"
        keep = "" if up["keep"] >= 1.0 else f" keep {up['keep']:.3g} {up['structure']}"
        lines.append(f"{html.escape(name)}: {w}{a}{keep}{grid}")
    if plain:
        lines.append(f"{plain} unit{'s' * (plain > 1)} uncompressed")
    return "<br>".join(lines) or "uncompressed"


def pareto_figure(summary: Mapping[str, Any]) -> Any:
    """The plotly figure of :func:`pareto_page` (first objective on y, second on x)."""
    import plotly.graph_objects as go

    objectives = list(summary["objectives"])
    (ym, yd), (xm, xd) = (objectives + [["trial", "minimize"]])[:2]
    units = unit_order(summary, [r for _, r in pareto_points(summary)])
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    for i, (name, s) in enumerate(summary["strategies"].items()):
        color = palette[i % len(palette)]
        pts = np.asarray(s["points"], dtype=float).reshape(-1, len(objectives))
        if len(pts) and pts.shape[1] > 1:
            fig.add_trace(go.Scatter(x=pts[:, 1], y=pts[:, 0], mode="markers", name=f"{name}: all feasible",
                                     marker={"color": color, "opacity": 0.3, "size": 6}, legendgroup=name,
                                     hovertemplate=f"{name}<br>{xm}=%{{x:.4g}}<br>{ym}=%{{y:.4g}}<extra></extra>"))
        rows = sorted(s["pareto"], key=lambda r: r["values"][1] if len(r["values"]) > 1 else 0.0)
        if not rows or len(objectives) < 2:
            continue
        texts = [f"<b>{html.escape(name)}</b> seed {r['seed']}, trial {r['trial']}<br>{xm} = {r['values'][1]:.4g}, "
                 f"{ym} = {r['values'][0]:.4g}" + (f"<br>+{len(r.get('equivalent', []))} equivalent" if r.get("equivalent") else "")
                 + "<br>" + policy_text(r.get("policy"), units) for r in rows]
        fig.add_trace(go.Scatter(
            x=[r["values"][1] for r in rows], y=[r["values"][0] for r in rows], mode="lines+markers",
            line={"shape": "hv" if yd == "maximize" else "vh", "color": color}, marker={"size": 10, "color": color},
            name=f"{name}: Pareto ({len(rows)})", legendgroup=name, text=texts, hovertemplate="%{text}<extra></extra>",
            customdata=[[name, r["trial"]] for r in rows],
        ))
    for key, bound in summary.get("constraints", {}).items():
        kind, _, metric = key.partition("_")
        label = f"{key}{'<=' if kind == 'max' else '>='}{bound:g}"
        if metric == xm:
            fig.add_vline(x=bound, line={"color": "red", "dash": "dashdot"}, annotation_text=label)
        elif metric == ym:
            fig.add_hline(y=bound, line={"color": "red", "dash": "dashdot"}, annotation_text=label)
    for metric, value in summary.get("reference_point", {}).items():
        if metric in (xm, ym):
            add = fig.add_vline if metric == xm else fig.add_hline
            add(value, line={"color": "grey", "dash": "dash", "width": 1}, annotation_text=f"reference {metric}")
    fig.update_layout(title=f"{summary['name']}: feasible evaluations and Pareto fronts (hover a Pareto point for its policy)",
                      xaxis_title=f"{xm} ({xd})", yaxis_title=f"{ym} ({yd})", hovermode="closest",
                      hoverlabel={"align": "left", "font": {"size": 11}}, template="plotly_white", height=650)
    return fig


_HOVER_SCRIPT = """<script>
(function () {
  var m = decodeURIComponent(location.hash || "").match(/^#hover=(.+)\\/(\\d+)$/);
  var div = document.getElementById("pareto");
  if (!m || !div) return;
  function show() {
    div.data.forEach(function (trace, c) {
      (trace.customdata || []).forEach(function (d, p) {
        if (d[0] === m[1] && String(d[1]) === m[2]) Plotly.Fx.hover(div, [{curveNumber: c, pointNumber: p}]);
      });
    });
  }
  if (div._fullLayout) show(); else div.on("plotly_afterplot", show);
})();
</script>"""


def pareto_page(summary: Mapping[str, Any]) -> str:
    """A self-contained HTML page of :func:`pareto_figure`: plotly.js inline (about 4.5 MB,
    from the installed plotly), no external resource; ``#hover=<strategy>/<trial>`` shows
    that point's hover label on load."""
    import plotly.io as pio

    page = pio.to_html(pareto_figure(summary), include_plotlyjs=True, full_html=True, div_id="pareto",
                       config={"displaylogo": False})
    title = f"<title>compsearch: {html.escape(str(summary['name']))} Pareto fronts</title>"
    return page.replace("<head>", f'<head><meta charset="utf-8">{title}', 1).replace("</body>", _HOVER_SCRIPT + "</body>", 1)


__all__ = ["png_bytes", "pyplot", "constraint_lines", "heatmap_arrays", "pareto_figure", "pareto_page", "plot_policy_heatmaps", "policy_text",
           "unit_order"]
