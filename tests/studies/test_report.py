"""The comparison report: hand-checked summary numbers, test-split caching, and the page in Chromium."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from compsearch.evaluators.evaluator import CompressionEvaluator
from compsearch.studies.report import build_report, render_markdown
from compsearch.studies.results import counted_trials, load_studies
from compsearch.studies.spec import load_spec
from compsearch.studies.storage import default_storage, open_storage
from compsearch.studies.summary import TEST_CACHE, add_test_accuracy, summarize

# ---- a synthetic run with hand-computable numbers --------------------------------------
# Objectives (accuracy max, size_kb min), reference (0.5, 10), scales (1, 10), constraint
# max_size_kb = 9: gain of a feasible point (a, s) = (a - 0.5, (10 - s) / 10).


def _policy(tag: int) -> dict[str, Any]:
    return {"units": {"features.3": {"w_bits": tag}}, "version": 1}


def _add(study: optuna.Study, state: TrialState, point: tuple[float, float] | None = None,
         tag: int = 8, reason: str | None = None) -> None:
    attrs: dict[str, Any] = {"policy": _policy(tag)}
    system: dict[str, Any] = {}
    if point is not None:
        attrs["metrics"] = {"accuracy": point[0], "size_kb": point[1]}
        system["constraints:max_size_kb"] = point[1] - 9.0
    if reason is not None:
        attrs["fail_reason"] = reason
    study.add_trial(create_trial(
        state=state, values=list(point) if state == TrialState.COMPLETE and point else None,
        params={"w": tag}, distributions={"w": CategoricalDistribution([2, 3, 4, 5, 6, 7, 8, 9])},
        user_attrs=attrs, system_attrs=system,
    ))


@pytest.fixture
def synthetic_run(tmp_path: Path, make_spec) -> Path:
    spec = load_spec(make_spec(strategies=["random", "tpe"], trials=4, seeds=[0, 1], constraints={"max_size_kb": 9.0},
                               reference_point={"accuracy": 0.5, "size_kb": 10.0}))
    storage = open_storage(default_storage(tmp_path))
    studies = {k: optuna.create_study(study_name=k, storage=storage, directions=["maximize", "minimize"])
               for k in ("random-s0", "random-s1", "tpe-s0", "tpe-s1")}
    C, F, P = TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED
    s = studies["random-s0"]
    _add(s, C, (0.8, 4.0), 2)                              # HV 0.3 * 0.6             = 0.18
    _add(s, F, reason="interrupted (process ended)")       # not counted
    _add(s, F, reason="diverged: FineTuneDiverged: nan")   # counted, no point         0.18
    _add(s, C, (0.9, 8.0), 3)                              # + 0.4*0.2 - 0.3*0.2      = 0.20
    _add(s, C, (0.6, 2.0), 4)                              # + 0.1*0.8 - 0.1*0.6      = 0.22
    _add(s, C, (0.95, 1.0), 5)                             # 5th counted: over budget, ignored
    s = studies["random-s1"]
    _add(s, C, (0.9, 8.0), 3)                              # 0.08 (same policy as s0's -> one Pareto row)
    _add(s, C, (0.8, 4.0), 2)                              # + 0.18 - 0.06            = 0.20
    _add(s, F, reason="diverged: x")
    _add(s, F, reason="diverged: x")
    s = studies["tpe-s0"]
    _add(s, C, (0.7, 9.5), 7)                              # infeasible (9.5 > 9)     = 0
    _add(s, C, (0.7, 5.0), 8)                              # 0.2 * 0.5                = 0.10
    _add(s, P)                                             #                           0.10
    _add(s, C, (0.85, 8.0), 9)                             # + 0.35*0.2 - 0.2*0.2     = 0.13
    for _ in range(4):
        _add(studies["tpe-s1"], F, reason="diverged: x")   # 0 throughout
    run = {"spec": spec.model_dump(mode="json"), "storage": default_storage(tmp_path),
           "objectives": [["accuracy", "maximize"], ["size_kb", "minimize"]],
           "reference_point": {"accuracy": 0.5, "size_kb": 10.0}, "scales": [1.0, 10.0]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    return tmp_path


def test_summary_matches_hand_computation(synthetic_run: Path) -> None:
    summary = summarize(synthetic_run)
    r, t = summary["strategies"]["random"], summary["strategies"]["tpe"]
    assert r["curves"]["0"] == pytest.approx([0.18, 0.18, 0.20, 0.22])
    assert r["curves"]["1"] == pytest.approx([0.08, 0.20, 0.20, 0.20])
    assert t["curves"]["0"] == pytest.approx([0.0, 0.10, 0.10, 0.13])
    assert t["curves"]["1"] == [0.0] * 4
    # 25% of 4 = 1 evaluation, 50% = 2, 100% = 4; mean and sample std over the 2 seeds
    assert r["hypervolume"]["25%"]["mean"] == pytest.approx(0.13)
    assert r["hypervolume"]["25%"]["std"] == pytest.approx(np.std([0.18, 0.08], ddof=1))
    assert r["hypervolume"]["50%"]["mean"] == pytest.approx(0.19)
    assert r["hypervolume"]["100%"]["mean"] == pytest.approx(0.21)
    assert t["hypervolume"]["100%"]["mean"] == pytest.approx(0.065)
    # target = 0.9 x best final (0.22) = 0.198: random s0 at 3, s1 at 2; tpe never
    assert summary["hv_target"] == pytest.approx(0.198)
    assert (r["evals_to_target"]["mean"], r["evals_to_target"]["reached"]) == (2.5, 2)
    assert (t["evals_to_target"]["mean"], t["evals_to_target"]["reached"]) == (None, 0)
    best = t["best_under_constraints"]["max_size_kb<=9"]
    assert (best["metric"], best["mean"], best["n"]) == ("accuracy", 0.85, 1)
    assert r["best_under_constraints"]["max_size_kb<=9"]["mean"] == pytest.approx(0.9)
    assert r["states"] == {"complete": 5, "feasible": 5, "pruned": 0, "failed": 3, "reused": 0}
    # Pareto rows: seeds pooled, one per policy, sorted by accuracy
    assert [(p["seed"], p["trial"], p["values"]) for p in r["pareto"]] == [
        (0, 4, [0.6, 2.0]), (0, 0, [0.8, 4.0]), (0, 3, [0.9, 8.0])]
    # seed 1's trials 1 (tag 2) and 0 (tag 3) hold the policies of seed 0's trials 0 and 3: merged
    assert [p["equivalent"] for p in r["pareto"]] == [[], [[1, 1]], [[1, 0]]]
    assert [p["values"] for p in t["pareto"]] == [[0.7, 5.0], [0.85, 8.0]]


def test_cached_test_accuracy_is_reported_not_recomputed(synthetic_run: Path) -> None:
    key = f"{json.dumps(_policy(9), sort_keys=True)}|s0"
    (synthetic_run / TEST_CACHE).write_text(json.dumps({key: {"test_accuracy": 0.81}}))
    summary = summarize(synthetic_run)
    assert add_test_accuracy(summary, synthetic_run, compute=False) == 0
    assert [p["test_accuracy"] for p in summary["strategies"]["tpe"]["pareto"]] == [None, 0.81]
    md = render_markdown(summary)
    # two seeds: mean ± 95% t half-width = t(0.975, 1) * s / sqrt(2) = 12.706 * |a - b| / 2:
    # HV@50% (0.10, 0) -> 0.05 ± 0.6353, HV@100% (0.13, 0) -> 0.065 ± 0.8259
    assert "| tpe | 0 ± 0 | 0.05 ± 0.6353 | 0.065 ± 0.8259 | - (0/2) | 3 | 2 | 4 | 0 |" in md
    assert "## Hypervolume and budget (mean ± 95% t-interval half-width over 2 seeds)" in md


# ---- the report of a real tiny run ----------------------------------------------------------


@pytest.fixture(scope="module")
def report(tiny_run) -> dict[str, Any]:
    out, _ = tiny_run
    return build_report(out)


def test_report_files_and_numbers(tiny_run, report: dict[str, Any]) -> None:
    out, ctx = tiny_run
    for name in ("report.html", "pareto.png", "hypervolume.png", "policies.png", "pareto.html", "summary.json",
                 "summary.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert "## Hypervolume and budget (one seed: no interval)" in (out / "summary.md").read_text()
    page = (out / "pareto.html").read_text()
    assert "<script src" not in page and "<link" not in page and "Plotly.newPlot" in page  # plotly.js inline
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    studies = load_studies(ctx.storage)
    for strategy in ("random", "nsga2"):
        final = ctx.hypervolume(counted_trials(studies[(strategy, 0)], 4))
        assert report["strategies"][strategy]["hypervolume"]["100%"]["mean"] == pytest.approx(final)
        for row in report["strategies"][strategy]["pareto"]:
            assert 0.0 <= row["test_accuracy"] <= 1.0  # measured on the test split
            assert row["metrics"]["size_kb"] <= 12.0  # only feasible points
    html = (out / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained


def test_second_report_reuses_the_test_cache(tiny_run, report: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = tiny_run
    cache = json.loads((out / TEST_CACHE).read_text())
    assert len(cache) >= 1
    # the re-run fine-tune under the same seed reproduces the validation accuracy of the trial
    rows = [r for s in report["strategies"].values() for r in s["pareto"]]
    for r in rows:
        assert cache[f"{json.dumps(r['policy'], sort_keys=True)}|s{r['seed']}"]["val_accuracy"] == pytest.approx(
            r["metrics"]["accuracy"])

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the test split was evaluated again")

    monkeypatch.setattr(CompressionEvaluator, "evaluate", forbidden)
    again = build_report(out)
    assert [r["test_accuracy"] for s in again["strategies"].values() for r in s["pareto"]] == [
        r["test_accuracy"] for r in rows]


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs[a.get("id") or ""] = a.get("src") or ""
        elif tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table and "data-strategy" in a:
            self.rows.setdefault(self._table, []).append(a["data-strategy"] or "")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_renders_in_headless_chromium(tiny_run, report: dict[str, Any], tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it")
    out, _ = tiny_run
    url = (out / "report.html").resolve().as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True)
    parsed = _Dom()
    parsed.feed(dom)
    for key in ("pareto", "hypervolume"):
        src = parsed.imgs[key]
        assert src.startswith("data:image/png;base64,")
        width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width >= 400 and height >= 300
    assert parsed.rows["summary"] == ["random", "nsga2"]
    assert {"random", "nsga2"} <= set(parsed.rows["pareto-points"])
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text, tables and plots, not a blank page
    width, height = _png_size(base64.b64decode(parsed.imgs["policies"].split(",", 1)[1]))
    assert width >= 300 and height >= 150  # the per-unit heatmaps of the Pareto policies


def test_interactive_page_shows_the_policy_of_a_hovered_point_in_chromium(tiny_run, report: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """pareto.html#hover=<strategy>/<trial> hovers that point on load (Plotly.Fx.hover, what a
    mouse does); the hover label Chromium renders lists the trial's policy unit by unit."""
    from compsearch.studies.figures import policy_text, unit_order

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); .ci/run installs it")
    out, _ = tiny_run
    strategy, row = next((name, s["pareto"][0]) for name, s in report["strategies"].items() if s["pareto"])
    url = f"{(out / 'pareto.html').resolve().as_uri()}#hover={strategy}/{row['trial']}"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout
    assert 'class="main-svg"' in dom  # plotly drew the figure from the inline plotly.js
    label = dom.split('class="hovertext"', 1)[1].split("</g>", 1)[0]
    expected = policy_text(row["policy"], unit_order(report, [row]))
    assert f"trial {row['trial']}" in label
    for line in expected.split("<br>"):  # every unit line of the policy ("features.3: w4 keep 0.5 ...")
        assert line in label
