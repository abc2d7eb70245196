"""``compsearch check``: every meaningless value is rejected before any work, naming its key path.

The fuzz test mutates a valid spec systematically -- every numeric key x {nan, inf, -inf,
-1, 0, 1e9, 10**9, 10**18, a string}, unknown keys in every section, bad names, storages,
devices, checkpoints, space choices, strategy options -- and knows for each mutation
whether it is valid. It asserts: every invalid one is rejected with a compsearch error
that names the key path (or the command-line flag), never with another exception; every
valid one is accepted. Validation only: nothing is trained.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from compsearch import cli
from compsearch.errors import CompsearchError
from compsearch.studies.validate import check_run

BASE: dict[str, Any] = {
    "name": "fuzz",
    "strategies": ["random", "nsga2"],
    "trials": 4,
    "seeds": 1,
    "objectives": ["accuracy", "size_kb"],
    "model": {"name": "digits_cnn", "kwargs": {"width": 8, "hidden": 32}},
    "base": {"steps": 60, "lr": 0.01},
    "data": {"name": "digits"},
    "space": {"name": "joint", "choices": {"w_bits": [2, 4, 8, 32], "keep": [0.5, 1.0]}},
    "evaluator": {"device": "cpu", "finetune": {"steps": 5, "lr": 0.01}},
    "constraints": {"max_size_kb": 12.0},
    "reference_point": {"accuracy": 0.5},
}
VALUES: list[Any] = [math.nan, math.inf, -math.inf, -1, 0, 1e9, 10**9, 10**18, "x"]
CPUS = os.cpu_count() or 1


def _int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _real(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
    return ok


#: key path -> which values are valid (the spec's documented ranges; LIMITS for upper bounds)
NUMERIC: dict[str, Callable[[Any], bool]] = {
    "trials": _int(1, 10_000),
    "seeds": _int(1, 100),
    "base.steps": _int(1, 1_000_000),
    "base.epochs": _real(0, 10_000, open_low=True),
    "base.lr": _real(0, math.inf, open_low=True),
    "base.batch_size": _int(1, 65_536),
    "base.weight_decay": _real(0, 1),
    "base.seed": _int(0, 2**31 - 1),
    "data.seed": _int(0, 2**31 - 1),
    "evaluator.threads": _int(1, CPUS),
    "evaluator.finetune.steps": _int(0, 1_000_000),
    "evaluator.finetune.epochs": _real(0, 10_000, open_low=True),
    "evaluator.finetune.batch_size": _int(1, 65_536),
    "evaluator.finetune.lr": _real(0, math.inf, open_low=True),
    "evaluator.finetune.momentum": _real(0, 1, open_high=True),
    "evaluator.finetune.weight_decay": _real(0, 1),
    "evaluator.finetune.distill": _real(0, 1),
    "evaluator.finetune.temperature": _real(0, 100, open_low=True),
    "evaluator.finetune.report_every": _int(0, 1_000_000),
    "evaluator.calib_batches": _int(1, 10_000),
    "evaluator.calib_batch_size": _int(1, 65_536),
    "evaluator.eval_batch_size": _int(1, 65_536),
    "evaluator.proxy_samples": _int(1, 1_000_000),
    "evaluator.sensitivity_batches": _int(1, 10_000),
    "evaluator.ema_momentum": _real(0, 1),
    "reference_point.accuracy": _real(0, 1),
    "constraints.max_size_kb": _real(0, math.inf, open_low=True),
    "constraints.min_accuracy": _real(0, 1),
}
SECTIONS = ["", "model", "base", "data", "space", "space.choices", "evaluator", "evaluator.finetune"]


@dataclass(frozen=True)
class Case:
    """One mutation: ``change(spec)`` edits a copy of BASE; ``where`` must be named when invalid."""

    label: str
    change: Callable[[dict[str, Any]], None]
    valid: bool
    where: str
    storage: str | None = None
    out: str | None = None


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return change


def _cases(tmp: Path) -> list[Case]:
    cases = [Case(f"{path}={v!r}", _set(path, v), ok(v), path) for path, ok in NUMERIC.items() for v in VALUES]
    cases += [Case(f"{s or '<root>'}.bogus", _set(f"{s}.bogus" if s else "bogus", 1), False, f"{s}.bogus" if s else "bogus")
              for s in SECTIONS]
    cases += [
        Case("allow_large lifts limits", lambda s: s.update(trials=10**6, allow_large=True), True, "trials"),
        Case("seeds 10**7 with allow_large", lambda s: s.update(seeds=10**7, allow_large=True), False, "seeds"),
        Case("seed list too long", _set("seeds", list(range(101))), False, "seeds"),
        Case("seed 2**31", _set("seeds", [0, 2**31]), False, "seeds"),
        Case("reference size_kb -3", lambda s: s.update(reference_point={"size_kb": -3.0}), False, "reference_point.size_kb"),
        Case("reference size_kb 0", lambda s: s.update(reference_point={"size_kb": 0.0}), False, "reference_point.size_kb"),
        Case("reference size_kb 50", lambda s: s.update(reference_point={"size_kb": 50.0}), True, "reference_point"),
        Case("reference accuracy nan", _set("reference_point.accuracy", math.nan), False, "reference_point.accuracy"),
        Case("reference not an objective", _set("reference_point.bops", 1.0), False, "reference_point"),
        Case("constraint max_speed", _set("constraints.max_speed", 1.0), False, "constraints.max_speed"),
        Case("constraint min_return", _set("constraints.min_return", -5.0), False, "constraints.min_return"),
        Case("objective return", lambda s: s.update(objectives=["return", "size_kb"], reference_point={}), False,
             "objectives[0]"),
        Case("[task] without [agent]", _set("task", {"episodes": 3}), False, "task"),
        Case("gates online without [agent]", _set("gates.online", True), False, "gates.online"),
        Case("gates 5 strengths > 4 trials", _set("gates.strengths", [0.1, 0.2, 0.3, 0.4, 0.5]), False, "gates.strengths"),
        Case("gates 4 strengths", _set("gates.strengths", [0.1, 0.2, 0.3, 0.4]), True, "gates"),
        Case("criterion lrp", _set("evaluator.criterion", "lrp"), True, "evaluator.criterion"),
        Case("criterion gates", _set("evaluator.criterion", "gates"), True, "evaluator.criterion"),
        Case("objective speed", _set("objectives", ["accuracy", "speed"]), False, "objectives[1]"),
        Case("objective direction", _set("objectives", [{"metric": "size_kb", "direction": "maximize"}]), False, "objectives[0]"),
        Case("no objectives", _set("objectives", []), False, "objectives"),
        Case("name with space", _set("name", "my run"), False, "name"),
        Case("name with slash", _set("name", "../escape"), False, "name"),
        Case("name 200 chars", _set("name", "a" * 200), False, "name"),
        Case("strategy nope", _set("strategies", ["random", "nope"]), False, "strategies[1]"),
        Case("no strategies", _set("strategies", []), False, "strategies"),
        Case("duplicate strategies", _set("strategies", ["random", "random"]), False, "strategies"),
        Case("strategy option unknown", _set("strategy_options", {"tpe": {"bogus": 1}}), False, "strategy_options.tpe"),
        Case("nsga2 population 0", _set("strategy_options", {"nsga2": {"population_size": 0}}), False, "strategy_options.nsga2"),
        Case("nsga2 population 6", _set("strategy_options", {"nsga2": {"population_size": 6}}), True, "strategy_options"),
        Case("model nope", _set("model.name", "no_such_net"), False, "model.name"),
        Case("model kwargs bogus", _set("model.kwargs", {"bogus": 3}), False, "model.kwargs"),
        Case("data nope", _set("data.name", "mnist"), False, "data.name"),
        Case("data option bogus", _set("data.options", {"bogus": 1}), False, "data.options"),
        Case("space nope", _set("space.name", "fancy"), False, "space.name"),
        Case("w_bits 0", _set("space.choices.w_bits", [0, 8]), False, "space"),
        Case("w_bits 64", _set("space.choices.w_bits", [8, 64]), False, "space"),
        Case("w_bits string", _set("space.choices.w_bits", [8, "4"]), False, "space.choices.w_bits[1]"),
        Case("keep 1.5", _set("space.choices.keep", [0.5, 1.5]), False, "space"),
        Case("keep 0", _set("space.choices.keep", [0.0, 1.0]), False, "space"),
        Case("keep nan", _set("space.choices.keep", [math.nan]), False, "space.choices.keep[0]"),
        Case("scheme weird", _set("space.choices.scheme", ["weird"]), False, "space"),
        Case("criterion nope", _set("evaluator.criterion", "random"), False, "evaluator.criterion"),
        Case("optimizer lion", _set("evaluator.finetune.optimizer", "lion"), False, "evaluator.finetune"),
        Case("schedule nope", _set("evaluator.finetune.schedule", "zigzag"), False, "evaluator.finetune"),
        Case("device cuda:7", _set("evaluator.device", "cuda:7"), torch.cuda.device_count() > 7, "evaluator.device"),
        Case("device cuda", _set("evaluator.device", "cuda"), torch.cuda.is_available(), "evaluator.device"),
        Case("device tpu", _set("evaluator.device", "tpu"), False, "evaluator.device"),
        Case("device gibberish", _set("evaluator.device", "fast please"), False, "evaluator.device"),
        Case("device auto", _set("evaluator.device", "auto"), True, "evaluator.device"),
        Case("storage outside", _set("storage", "sqlite:////tmp/elsewhere.db"), False, "storage"),
        Case("storage up", _set("storage", "../up.db"), False, "storage"),
        Case("storage postgres", _set("storage", "postgresql://u:p@h/db"), False, "storage"),
        Case("storage journal", _set("storage", "journal"), True, "storage"),
        Case("storage named", _set("storage", "mine.db"), True, "storage"),
        Case("--storage nonsense", lambda s: None, False, "--storage", storage="nonsense"),
        Case("--storage no driver", lambda s: None, False, "--storage", storage="postgresql+nodriver://u@h/db"),
        Case("--storage under a file", lambda s: None, False, "--storage", storage="sqlite:////etc/passwd/x.db"),
        Case("--storage missing folder", lambda s: None, False, "--storage", storage="sqlite:////no/such/dir/x.db"),
        Case("--storage journal elsewhere", lambda s: None, True, "--storage", storage=f"journal://{tmp / 'j' / 'x.log'}"),
        Case("--out a file", lambda s: None, False, "--out", out=str(tmp / "afile")),
        Case("--out under /proc", lambda s: None, False, "--out", out="/proc/nope/run"),
    ]
    cases += _checkpoint_cases(tmp)
    return cases


def _checkpoint_cases(tmp: Path) -> list[Case]:
    from compsearch.evaluators.models import build_model

    good = tmp / "good.pt"
    torch.save(build_model("digits_cnn", num_classes=10, in_chans=1, width=8, hidden=32).state_dict(), good)
    wrong = tmp / "wrong.pt"
    torch.save(build_model("digits_cnn", num_classes=10, in_chans=1, width=16, hidden=32).state_dict(), wrong)
    (tmp / "notes.txt").write_text("not a checkpoint")
    (tmp / "afile").write_text("x")
    evil = tmp / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump(_Evil(str(tmp / "pwned")), f)
    listed = tmp / "list.pt"
    torch.save([1, 2, 3], listed)

    def ckpt(path: Path) -> Callable[[dict[str, Any]], None]:
        def change(spec: dict[str, Any]) -> None:
            spec.pop("base")
            spec["model"]["checkpoint"] = str(path)
        return change

    return [Case("checkpoint good", ckpt(good), True, "model.checkpoint"),
            Case("checkpoint wrong shapes", ckpt(wrong), False, "model.checkpoint"),
            Case("checkpoint text file", ckpt(tmp / "notes.txt"), False, "model.checkpoint"),
            Case("checkpoint malicious pickle", ckpt(evil), False, "model.checkpoint"),
            Case("checkpoint a list", ckpt(listed), False, "model.checkpoint"),
            Case("checkpoint missing", ckpt(tmp / "none.pt"), False, "model.checkpoint"),
            Case("checkpoint and base", _set("model.checkpoint", str(good)), False, "model.checkpoint")]


class _Evil:
    """Pickles to ``os.system('touch <path>')``: loading it must never run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def check_cases(cases: list[Case], base: dict[str, Any], tmp_path: Path) -> list[str]:
    """Run ``check_run`` on every mutation of ``base``; the problems found (empty = all as known)."""
    problems = []
    for case in cases:
        spec = copy.deepcopy(base)
        case.change(spec)
        try:
            check_run(spec, case.out or tmp_path / "run", storage=case.storage)
        except CompsearchError as e:
            if case.valid:
                problems.append(f"{case.label}: valid but rejected: {e}")
            elif case.where not in str(e):
                problems.append(f"{case.label}: the message does not name {case.where!r}: {e}")
        except Exception as e:  # a traceback in the CLI
            problems.append(f"{case.label}: {type(e).__name__} instead of a clean rejection: {e}")
        else:
            if not case.valid:
                problems.append(f"{case.label}: accepted although meaningless")
    return problems


def test_fuzzed_specs_are_rejected_cleanly_or_accepted(tmp_path: Path) -> None:
    cases = _cases(tmp_path)
    assert len(cases) >= 250
    start = time.monotonic()
    problems = check_cases(cases, BASE, tmp_path)
    seconds = time.monotonic() - start
    valid = sum(c.valid for c in cases)
    assert problems == [], f"{len(problems)} of {len(cases)} ({valid} valid):\n" + "\n".join(problems)
    assert not (tmp_path / "pwned").exists()  # the malicious checkpoint ran nothing
    assert not (tmp_path / "run").exists()  # validation creates nothing
    print(f"{len(cases)} mutations ({valid} valid) in {seconds:.1f} s")


def test_check_command_says_valid_or_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the terminal width
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "ok"\nstrategies = ["random"]\ntrials = 2\n[model]\nname = "digits_cnn"\n'
                    '[evaluator]\ndevice = "cpu"\n[evaluator.finetune]\nmomentum = 1.5\n')
    assert cli.main(["check", str(spec), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "evaluator.finetune.momentum" in err and "Traceback" not in err
    spec.write_text(spec.read_text().replace("momentum = 1.5", "momentum = 0.5"))
    assert cli.main(["check", str(spec), "--out", str(tmp_path / "run"), "--trials", "3"]) == 0
    assert "valid. 1 studies (1 strategies x 1 seeds) x 3 trials" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
    assert cli.main(["check", str(spec), "--trials", "0"]) == 2
    assert "trials" in capsys.readouterr().err
