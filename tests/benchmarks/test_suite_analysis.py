"""benchmarks/suite.py's per-problem analysis on a hand-made run summary (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_loader import ROOT, load_benchmark

from compsearch.errors import CompsearchError

# Objectives accuracy (max) and size_kb (min), reference (0.5, 100), scales (1, 100).
# hirl's point (0.9, 50) has gains (0.4, 0.5): hypervolume 0.2; tpe's (0.7, 20) has gains
# (0.2, 0.8): 0.16. Union front = both points: 0.4 x 0.5 + 0.2 x (0.8 - 0.5) = 0.26.
SUMMARY = {
    "name": "hand", "budget": 4, "objectives": [["accuracy", "maximize"], ["size_kb", "minimize"]],
    "reference_point": {"accuracy": 0.5, "size_kb": 100.0}, "scales": [1.0, 100.0],
    "strategies": {
        "hirl": {"curves": {"0": [0.1, 0.1, 0.2, 0.2], "1": [0.0, 0.1, 0.1, 0.2]}, "counted": {"0": 4, "1": 4},
                 "points": [[0.9, 50.0], [0.6, 90.0]]},
        "tpe": {"curves": {"0": [0.16] * 4, "1": [0.1, 0.16]}, "counted": {"0": 4, "1": 2},
                "points": [[0.7, 20.0]]},
    },
}


def test_analyse_problem_by_hand() -> None:
    suite = load_benchmark("suite")
    out = suite.analyse_problem(SUMMARY)
    assert out["best_known_front"]["points"] == [[0.7, 20.0], [0.9, 50.0]]
    assert out["best_known_front"]["hypervolume"] == pytest.approx(0.26)
    # Checkpoints of a budget of 4: 25% -> 1 evaluation, 50% -> 2, 100% -> 4.
    hirl, tpe = out["strategies"]["hirl"], out["strategies"]["tpe"]
    assert hirl["hv"]["25%"]["mean"] == pytest.approx(0.05) and hirl["hv"]["25%"]["n"] == 2
    assert hirl["hv"]["50%"]["ci"] == pytest.approx([0.1, 0.1])  # both seeds 0.1: zero width
    assert hirl["hv"]["100%"]["mean"] == pytest.approx(0.2)
    assert hirl["relative_hv"]["mean"] == pytest.approx(0.2 / 0.26)
    # tpe's seed 1 stopped after 2 evaluations: in the 25% and 50% checkpoints, not in the final one.
    assert tpe["hv"]["25%"]["mean"] == pytest.approx(0.13) and tpe["hv"]["50%"]["n"] == 2
    assert tpe["hv"]["100%"]["n"] == 1 and tpe["hv"]["100%"]["per_seed"] == {"0": 0.16}
    assert out["completion"]["tpe"] == {"complete_seeds": [0], "partial": {"1": 2}, "missing_seeds": []}
    assert not out["complete"]
    # hirl's mean curve over complete seeds: 0.05, 0.1, 0.15, 0.2 -> reaches tpe's 0.16 after 4.
    versus = out["hirl_vs_best_non_rl"]
    assert versus["best_non_rl"] == "tpe" and versus["hirl_evals_to_reach_best_non_rl"] == 4
    assert not versus["hirl_reaches_within_half_budget"]
    paired = versus["paired_final_hv"]  # common complete seed 0 only: 0.2 - 0.16
    assert paired["seeds"] == [0] and paired["mean_difference"] == pytest.approx(0.04) and paired["wilcoxon"] is None
    # Ranked on the seeds both completed (seed 0): hirl 0.2, tpe 0.16.
    assert out["rank_seeds"] == [0] and out["rank_scores"] == pytest.approx({"hirl": 0.2, "tpe": 0.16})
    table = suite.aggregate({"hand": out})
    assert table["ranks"]["hand"] == {"hirl": 1.0, "tpe": 2.0}
    # hirl 0.2 >= tpe 0.16; one paired seed is no interval (not "above zero"); reached after 4 of 4, not 2.
    assert not paired["ci_above_zero"]
    assert suite.targets({"hand": out}) == {"compared": ["hand"], "hirl_at_or_above_best_non_rl": ["hand"],
                                            "difference_ci_above_zero": [], "hirl_reaches_within_half_budget": []}


def test_analyse_problem_restricts_seeds_and_strategies() -> None:
    suite = load_benchmark("suite")
    out = suite.analyse_problem(SUMMARY, strategies=["tpe"], seeds=[0])
    assert list(out["strategies"]) == ["tpe"] and out["complete"]
    # A requested strategy or seed the run has not started makes the problem partial.
    more = suite.analyse_problem(SUMMARY, strategies=["tpe", "bo"], seeds=[0, 5])
    assert more["strategies_not_started"] == ["bo"] and not more["complete"]
    text = suite.markdown({"problems": {"hand": more}, "ranks": suite.aggregate({"hand": more})})
    assert "; partial)" in text and "no studies in the run folder (not started, or not run on this problem): bo" in text
    assert more["completion"]["tpe"]["missing_seeds"] == [5]
    # The front still pools every strategy the run holds.
    assert out["best_known_front"]["hypervolume"] == pytest.approx(0.26)
    assert out["hirl_vs_best_non_rl"]["best_non_rl"] is None


def test_command_line_errors_and_empty_analysis(tmp_path: Path) -> None:
    suite = load_benchmark("suite")
    with pytest.raises(CompsearchError, match=r"--problems: unknown problem\(s\) \['nope'\]"):
        suite.main(["--problems", "nope", "--analyse-only"])
    with pytest.raises(CompsearchError, match="--trials=0 must be at least 1"):
        suite.main(["--trials", "0", "--analyse-only"])
    out = suite.main(["--analyse-only", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "s.json")])
    assert out["partial"] and out["problems_missing"] == list(suite.PROBLEMS)
    assert json.loads((tmp_path / "s.json").read_text())["problems"] == {}


SUITE_SPECS = sorted((ROOT / "studies" / "suite").glob("*.toml"))


@pytest.mark.parametrize("path", SUITE_SPECS, ids=[p.stem for p in SUITE_SPECS])
def test_suite_specs_pass_check_at_equal_budgets(path: Path, tmp_path: Path) -> None:
    from compsearch.studies.spec import load_spec
    from compsearch.studies.validate import check_run

    spec = check_run(load_spec(path), tmp_path / "run")  # what `compsearch check` runs (no training)
    suite = load_benchmark("suite")
    assert path.stem in suite.PROBLEMS and len(SUITE_SPECS) == len(suite.PROBLEMS) >= 4
    assert spec.strategies == list(suite.STRATEGIES) and spec.trials >= 50 and len(spec.seeds) >= 5


def test_the_full_hierarchy_against_its_ablations_by_hand() -> None:
    summary = json.loads(json.dumps(SUMMARY))
    summary["strategies"]["hirl-full"] = {"curves": {"0": [0.1, 0.1, 0.2, 0.25], "1": [0.1, 0.1, 0.1, 0.2]},
                                          "counted": {"0": 4, "1": 4}, "points": [[0.8, 40.0]]}
    summary["strategies"]["hirl-flat"] = {"curves": {"0": [0.1, 0.1, 0.1, 0.15], "1": [0.1, 0.1, 0.1, 0.3]},
                                          "counted": {"0": 4, "1": 4}, "points": [[0.8, 40.0]]}
    suite = load_benchmark("suite")
    out = suite.analyse_problem(summary)
    assert out["ablation_base"] == "hirl-full"
    assert list(out["ablations"]) == ["hirl", "hirl-flat"]  # hirl changes parts of hirl-full too; tpe is not an ablation
    flat = out["ablations"]["hirl-flat"]  # hirl-full's finals 0.25, 0.2 minus 0.15, 0.3
    assert flat["seeds"] == [0, 1] and flat["differences"] == pytest.approx([0.1, -0.1])
    assert flat["mean_difference"] == pytest.approx(0.0) and (flat["wins"], flat["losses"]) == (1, 1)
    lean = out["ablations"]["hirl"]  # minus hirl's 0.2, 0.2
    assert lean["differences"] == pytest.approx([0.05, 0.0]) and lean["mean_difference"] == pytest.approx(0.025)
    text = suite.markdown({"problems": {"hand": out}, "ranks": suite.aggregate({"hand": out})})
    assert "| hirl-full minus | final HV difference |" in text
    assert "| hirl | +0.0250 | [+0.0000, +0.0500] |" in text and "| hirl-flat | +0.0000 | [-0.1000, +0.1000] |" in text


def test_markdown_tables_of_the_hand_summary() -> None:
    suite = load_benchmark("suite")
    problem = suite.analyse_problem(SUMMARY)
    text = suite.markdown({"problems": {"hand": problem}, "ranks": suite.aggregate({"hand": problem})})
    assert "| strategy | HV @1 | HV @2 | HV @4 | HV / best-known | seeds complete |" in text
    assert "| hirl | 0.0500 [0.0000, 0.1000] (n=2) | 0.1000 [0.1000, 0.1000] (n=2) | 0.2000 [0.2000, 0.2000] (n=2) |" in text
    assert "partial" in text and "hirl - tpe (final HV, seeds [0]): mean +0.0400" in text
    assert "| hirl | 1.00 | 1 |" in text and "| tpe | 2.00 | 1 |" in text


def test_a_candidate_variant_is_compared_in_hirls_place() -> None:
    suite = load_benchmark("suite")
    variant = {"curves": {"0": [0.1, 0.15, 0.15, 0.15], "1": [0.16] * 4}, "counted": {"0": 4, "1": 4}, "points": [[0.8, 60.0]]}
    summary = {**SUMMARY, "strategies": {**SUMMARY["strategies"], "hirl-front": variant}}
    out = suite.analyse_problem(summary, candidate="hirl-front")
    versus = out["hirl_vs_best_non_rl"]
    # hirl-front is RL: tpe stays the best non-RL strategy (0.16 on its one complete seed);
    # hirl-front's final mean (0.15 + 0.16) / 2 = 0.155; its mean curve 0.13, 0.155, 0.155, 0.155 never reaches 0.16.
    assert out["candidate"] == "hirl-front" and versus["best_non_rl"] == "tpe"
    assert versus["hirl_final_mean"] == pytest.approx(0.155) and versus["hirl_evals_to_reach_best_non_rl"] is None
    assert versus["paired_final_hv"]["mean_difference"] == pytest.approx(0.15 - 0.16)  # seed 0 only
    # the ablations are hirl-full's, whichever the candidate: none in a run without hirl-full
    assert out["ablation_base"] == "hirl-full" and out["ablations"] == {}
    assert "hirl-front - tpe" in suite.markdown({"problems": {"hand": out}, "ranks": suite.aggregate({"hand": out})})


def test_a_non_rl_candidate_is_refused_naming_the_flag() -> None:
    suite = load_benchmark("suite")
    with pytest.raises(CompsearchError, match=r"--candidate='tpe' is not an RL strategy"):
        suite._settings(suite._parse(["--candidate", "tpe"]))


def _doc(hirl: dict[str, float], gp: dict[str, float], *, best: str | None = "gp", ref: float = 0.5,
         hirl_half: dict[str, float] | None = None) -> dict:
    """A suite document with one problem, final hypervolumes per seed of hirl and gp (and hirl's at 50 %)."""
    def stats(per_seed: dict[str, float], half: dict[str, float] | None = None) -> dict:
        return {"hv": {"100%": {"per_seed": per_seed}, **({"50%": {"per_seed": half}} if half else {})}}

    return {"problems": {"p": {"budget": 4, "reference_point": {"accuracy": ref},
                               "hirl_vs_best_non_rl": {"best_non_rl": best},
                               "strategies": {"hirl": stats(hirl, hirl_half), "gp": stats(gp)}}}}


def test_pooled_seed_sets_by_hand(tmp_path: Path) -> None:
    suite = load_benchmark("suite")
    # seeds 0-1: differences +0.02, -0.01; seeds 5-6 (the second file, whose own best is ignored): +0.03, 0.00.
    # hirl after half the budget: 0.27, 0.19, 0.36, 0.27 -> mean 0.2725 < gp's final mean 0.2775: not reached.
    first = _doc({"0": 0.30, "1": 0.20}, {"0": 0.28, "1": 0.21}, hirl_half={"0": 0.27, "1": 0.19})
    fresh = _doc({"5": 0.40, "6": 0.25}, {"5": 0.37, "6": 0.25}, best="tpe", hirl_half={"5": 0.36, "6": 0.27})
    out = suite.pool_seed_sets([("a.json", first), ("b.json", fresh)])
    p = out["problems"]["p"]
    assert p["best_non_rl"] == "gp" and [s["seeds"] for s in p["sources"]] == [{"hirl": [0, 1], "gp": [0, 1]}, {"hirl": [5, 6], "gp": [5, 6]}]
    pair = p["paired_final_hv"]
    assert pair["seeds"] == [0, 1, 5, 6]
    assert pair["differences"] == pytest.approx([0.02, -0.01, 0.03, 0.0])
    assert pair["mean_difference"] == pytest.approx(0.01)
    assert (pair["wins"], pair["losses"], pair["ties"]) == (2, 1, 1)
    assert p["candidate_final_mean"] == pytest.approx(0.2875) and p["best_non_rl_final_mean"] == pytest.approx(0.2775)
    assert (out["at_or_above"], out["compared"]) == (1, 1)
    assert p["candidate_half_budget_mean"] == pytest.approx(0.2725)
    assert p["reaches_within_half_budget"] is False and out["reach_within_half_budget"] == 0
    table = suite.markdown(out)  # a pooled document gets its own table
    assert "| p | gp | +0.0100 | [" in table and "| 2/1 | 4 | 0.2725 / 0.2775 (not reached) |" in table
    assert table.endswith("of 1 problems compared: at or above 1, ci above zero 0, reach within half budget 0")
    # seed 6 at half the budget 0.29 instead of 0.27: mean 0.2775, equal to gp's final mean -> reached
    fresh["problems"]["p"]["strategies"]["hirl"]["hv"]["50%"]["per_seed"]["6"] = 0.29
    again = suite.pool_seed_sets([("a.json", first), ("b.json", fresh)])
    assert again["problems"]["p"]["reaches_within_half_budget"] is True and again["reach_within_half_budget"] == 1
    # the command line writes the same document
    fa, fb, dst = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "pooled.json"
    fa.write_text(json.dumps(first))
    fb.write_text(json.dumps(fresh))
    suite.main(["--pool", str(fa), str(fb), "--json", str(dst)])
    assert json.loads(dst.read_text())["problems"]["p"]["paired_final_hv"]["mean_difference"] == pytest.approx(0.01)


def test_pooling_pairs_a_candidate_and_a_baseline_from_different_files() -> None:
    suite = load_benchmark("suite")
    stored = _doc({"0": 0.30, "1": 0.20}, {"0": 0.28, "1": 0.21})  # gp's seeds 0-1 (hirl's ignored)
    new = {"problems": {"p": {"budget": 4, "reference_point": {"accuracy": 0.5}, "hirl_vs_best_non_rl": {"best_non_rl": None},
                              "strategies": {"hirl-x": {"hv": {"100%": {"per_seed": {"0": 0.29, "1": 0.25, "2": 0.9}}}}}}}}
    p = suite.pool_seed_sets([("stored.json", stored), ("new.json", new)], candidate="hirl-x")["problems"]["p"]
    # seed 2 has no gp value: not paired; differences 0.29 - 0.28 and 0.25 - 0.21
    assert p["paired_final_hv"]["seeds"] == [0, 1]
    assert p["paired_final_hv"]["differences"] == pytest.approx([0.01, 0.04])
    assert p["candidate_final_mean"] == pytest.approx(0.27) and p["best_non_rl_final_mean"] == pytest.approx(0.245)
    assert p["sources"] == [{"file": "stored.json", "seeds": {"hirl-x": [], "gp": [0, 1]}},
                            {"file": "new.json", "seeds": {"hirl-x": [0, 1, 2], "gp": []}}]


def test_pool_as_counts_another_name_as_the_candidate_in_one_file(tmp_path: Path) -> None:
    suite = load_benchmark("suite")
    # a.json: hirl (seeds 0-1) is some other policy, gp the baseline; b.json: the candidate's parts stored as "hirl"
    first = _doc({"0": 0.30, "1": 0.20}, {"0": 0.28, "1": 0.21})
    cand = {"problems": {"p": {"budget": 4, "reference_point": {"accuracy": 0.5}, "hirl_vs_best_non_rl": {"best_non_rl": "gp"},
                               "strategies": {"hirl-x": {"hv": {"100%": {"per_seed": {"0": 0.29, "1": 0.25}}}}}}}}
    fresh = _doc({"5": 0.40}, {"5": 0.37}, hirl_half={"5": 0.36})
    fa, fc, fb = tmp_path / "a.json", tmp_path / "c.json", tmp_path / "b.json"
    for path, doc in ((fa, first), (fc, cand), (fb, fresh)):
        path.write_text(json.dumps(doc))
    out = suite.main(["--pool", str(fa), str(fc), "--candidate", "hirl-x", "--pool-as", str(fb), "hirl",
                      "--json", str(tmp_path / "pooled.json")])
    pair = out["problems"]["p"]["paired_final_hv"]
    # hirl-x 0.29, 0.25 from c.json and b.json's hirl 0.40, against gp 0.28, 0.21, 0.37; a.json's hirl is not counted
    assert pair["seeds"] == [0, 1, 5] and pair["differences"] == pytest.approx([0.01, 0.04, 0.03])
    with pytest.raises(CompsearchError, match="--pool-as adds a file to --pool"):
        suite.main(["--pool-as", str(fb), "hirl"])
    with pytest.raises(CompsearchError, match=r"--pool-as .*b.json='gp' is not an RL strategy"):
        suite.main(["--pool", str(fa), "--pool-as", str(fb), "gp"])
    with pytest.raises(CompsearchError, match=r"--pool/--pool-as: \[.*b.json'\] given more than once"):
        suite.main(["--pool", str(fa), str(fb), "--pool-as", str(fb), "hirl"])


def test_pooling_refuses_other_problems_and_conflicting_seeds() -> None:
    suite = load_benchmark("suite")
    first = _doc({"0": 0.30}, {"0": 0.28})
    with pytest.raises(CompsearchError, match="reference_point"):
        suite.pool_seed_sets([("a.json", first), ("b.json", _doc({"5": 0.4}, {"5": 0.3}, ref=0.6))])
    with pytest.raises(CompsearchError, match="seed 0 differs"):
        suite.pool_seed_sets([("a.json", first), ("b.json", _doc({"0": 0.31}, {"0": 0.28}))])


def test_pool_and_markdown_name_a_file_that_is_not_a_suite_result(tmp_path: Path) -> None:
    suite = load_benchmark("suite")
    bad, other = tmp_path / "bad.json", tmp_path / "other.json"
    bad.write_text("{not json")
    other.write_text(json.dumps({"trials": 3}))
    with pytest.raises(CompsearchError, match="--pool: cannot read .*bad.json"):
        suite.main(["--pool", str(bad)])
    with pytest.raises(CompsearchError, match="other.json has no 'problems'"):
        suite.main(["--pool", str(other)])
    with pytest.raises(CompsearchError, match="--candidate='gp' is not an RL strategy"):
        suite.main(["--pool", str(other), "--candidate", "gp"])
    with pytest.raises(CompsearchError, match="--markdown: cannot read .*missing.json"):
        suite.main(["--markdown", str(tmp_path / "missing.json")])
    with pytest.raises(CompsearchError, match="--markdown: .*other.json has no 'problems'"):
        suite.main(["--markdown", str(other)])
