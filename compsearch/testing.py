"""Contract test cases every space, evaluator and strategy must pass (pytest classes shipped with the package).

Like ``optuna.testing.pytest_samplers`` and scikit-learn's ``parametrize_with_checks``:
a test module subclasses a contract and says what to test, either one name::

    class TestMyStrategy(StrategyContract):
        strategy_name = "my-strategy"

or every registered name, by parametrizing the ``strategy_name`` argument::

    @pytest.mark.parametrize("strategy_name", list_strategies())
    class TestAllStrategies(StrategyContract):
        pass

The contracts use a toy model (:func:`toy_model`, 3 searched units) and a cheap analytic
objective (:func:`toy_objective`: exact-ish size from bits x params and a fake accuracy),
so no test trains anything.

Spaces that change depth (``depth``, ``depth+joint``) need a model with removable blocks:
:func:`toy_space` builds them over :class:`ToyResNet` (:func:`toy_depth_units`), and a
contract subclass picks such a space with ``space_name`` (``StrategyContract``) or by
parametrizing ``space_name`` (``SpaceContract``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import optuna
import pytest
import torch
from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from torch import nn

from compsearch.spaces import Policy, Space, Unit, discover_units, get_space

TOY_CHOICES: dict[str, Any] = {"w_bits": (2, 4, 8, 32), "a_bits": (8, 32), "keep": (0.5, 0.75, 1.0), "granularity": "channel"}
"""Space choices of the strategy contract's toy space (joint space over 3 units: 15 dimensions)."""


class _ToyBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class ToyNet(nn.Module):
    """``stem`` conv (1->4) -> ``layer1.0`` (conv1 4->8, conv2 8->8) -> ``fc`` (128->16) -> ``head`` (16->3),
    on ``b x 1 x 4 x 4`` inputs. Searched units (stem and head skipped): ``layer1.0.conv1``
    (288 weights), ``layer1.0.conv2`` (576), ``fc`` (2048); blocks ``layer1.0`` and ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Sequential(_ToyBlock(4, 8))
        self.fc = nn.Linear(8 * 16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer1(torch.relu(self.stem(x)))
        return self.head(torch.relu(self.fc(h.flatten(1))))


class _ToyRes(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


class _ToyDown(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + self.shortcut(x)


class ToyResNet(nn.Module):
    """``stem`` conv (1->4, 36 weights) -> ``layer1.0``, ``layer1.1`` (``x + relu(conv(x))``, 4->4,
    144 weights each) -> ``layer2.0`` (``relu(conv(x)) + shortcut(x)``: conv 4->8 stride 2, 288
    weights; shortcut 1x1 4->8 stride 2, 32 weights) -> ``layer2.1`` (8->8, 576 weights) -> ``head``
    (32->3, 96 weights), on ``b x 1 x 4 x 4`` inputs. Every conv and linear has a bias.
    Removable blocks: ``layer1.0``, ``layer1.1``, ``layer2.1`` (identity) and ``layer2.0``
    (its shortcut)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Sequential(_ToyRes(4), _ToyRes(4))
        self.layer2 = nn.Sequential(_ToyDown(4, 8), _ToyRes(8))
        self.head = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(torch.relu(self.stem(x)))).flatten(1))


def toy_resnet() -> ToyResNet:
    """A :class:`ToyResNet` with fixed weights (seed 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ToyResNet()


@lru_cache(maxsize=1)
def toy_depth_units() -> tuple[Unit, ...]:
    """The 7 units of :func:`toy_resnet` (``discover_units`` on a ``1 x 1 x 4 x 4`` input)."""
    return tuple(discover_units(toy_resnet(), torch.zeros(1, 1, 4, 4)))


def space_needs_model(name: str) -> bool:
    """Whether space ``name`` (or a part of a composition ``a+b``) needs the model (``depth``)."""
    from compsearch.spaces import SPACES

    return any(getattr(SPACES.get(part), "needs_model", False) for part in name.split("+"))


def toy_model() -> ToyNet:
    """A :class:`ToyNet` with fixed weights (seed 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ToyNet()


@lru_cache(maxsize=1)
def toy_units() -> tuple[Unit, ...]:
    """The 5 units of :func:`toy_model` (``discover_units`` on a ``1 x 1 x 4 x 4`` input)."""
    return tuple(discover_units(toy_model(), torch.zeros(1, 1, 4, 4)))


def toy_space(name: str = "joint", **choices: Any) -> Space:
    """Space ``name`` over :func:`toy_units` (``choices`` default to :data:`TOY_CHOICES` for ``joint``
    and ``depth+joint``); a space that needs the model (:func:`space_needs_model`) is built over
    :func:`toy_resnet` and :func:`toy_depth_units` instead."""
    if name in ("joint", "depth+joint") and not choices:
        choices = dict(TOY_CHOICES)
    if space_needs_model(name):
        return get_space(name, toy_depth_units(), model=toy_resnet(), example_input=torch.zeros(1, 1, 4, 4), **choices)
    return get_space(name, toy_units(), **choices)


def digits_spec(name: str, *, trials: int, finetune: dict[str, Any], strategies: Sequence[str] = ("random",)) -> dict[str, Any]:
    """A study spec (mapping) of the digits CNN, base trained 30 steps, over ``w_bits`` in
    {2, 4, 8} x ``keep`` in {0.5, 1}: the small real study of the multi-process and host tests."""
    return {
        "name": name,
        "model": {"name": "digits_cnn"},
        "base": {"steps": 30},
        "data": {"name": "digits"},
        "space": {"name": "joint", "choices": {"w_bits": [2, 4, 8], "keep": [0.5, 1.0]}},
        "evaluator": {"device": "cpu", "finetune": dict(finetune)},
        "strategies": list(strategies),
        "trials": trials,
    }


def toy_size_bits(policy: Policy, units: Sequence[Unit]) -> float:
    """``sum_u params_u * keep_u * w_bits_u`` (32 bits for unquantized or unlisted units; 0 for
    a unit of a removed block, :meth:`Policy.removes`)."""
    total = 0.0
    for u in units:
        if policy.removes(u.name):
            continue
        up = policy.get_or_identity(u.name)
        total += u.params * up.keep * (up.w_bits if up.quantized else 32)
    return total


def toy_accuracy(policy: Policy, units: Sequence[Unit]) -> float:
    """Fake accuracy in (0, 1]: ``1 - sum_u share_u * (2^-w_bits + 2^-a_bits + (1 - keep) / 2)``,
    with ``share_u`` the unit's fraction of the parameters (so compressing more lowers it); a
    unit of a removed block drops ``0.6 * share_u``."""
    total = sum(u.params for u in units)
    drop = 0.0
    for u in units:
        if policy.removes(u.name):
            drop += 0.6 * u.params / total
            continue
        up = policy.get_or_identity(u.name)
        drop += u.params / total * (2.0**-up.w_bits + 2.0**-up.a_bits + (1.0 - up.keep) / 2)
    return 1.0 - drop


def toy_objective(space: Space, *, extra_param: bool = False, single: bool = False) -> Callable[[optuna.Trial], Any]:
    """Objective ``(accuracy, size_bits)`` (or accuracy alone with ``single``) of :func:`toy_accuracy`
    and :func:`toy_size_bits`; ``extra_param`` also suggests a float ``lr`` outside the space
    (and adds ``1e-3 * lr`` to the accuracy)."""

    def objective(trial: optuna.Trial) -> Any:
        policy = space.suggest(trial)
        acc = toy_accuracy(policy, space.all_units)
        if extra_param:
            acc += 1e-3 * trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        return acc if single else (acc, toy_size_bits(policy, space.all_units))

    return objective


def run_toy_study(name: str, *, seed: int, n_trials: int, options: dict[str, Any] | None = None, single: bool = False,
                  space_name: str = "joint") -> optuna.Study:
    """A study of strategy ``name`` on :func:`toy_space` ``(space_name)`` with :func:`toy_objective`."""
    from compsearch.search.registry import get_strategy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = toy_space(space_name)
    objectives = [("accuracy", "maximize")] if single else [("accuracy", "maximize"), ("size_bits", "minimize")]
    sampler = get_strategy(name, space=space, seed=seed, objectives=objectives, n_trials=n_trials, **(options or {}))
    directions: list[Any] = [d for _, d in objectives]
    study = optuna.create_study(directions=directions, sampler=sampler)
    study.optimize(toy_objective(space, single=single), n_trials=n_trials)
    return study


def _params_sequence(study: optuna.Study) -> list[dict[str, Any]]:
    return [dict(t.params) for t in study.trials]


_FRESH_SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys
    from compsearch.errors import UnknownNameError
    from compsearch.testing import run_toy_study, _params_sequence
    req = json.loads(sys.argv[1])
    for module in req["modules"]:
        importlib.import_module(module)
    out = {}
    for name, options in req["strategies"]:
        try:
            out[name] = _params_sequence(run_toy_study(name, seed=req["seed"], n_trials=req["n_trials"], options=options,
                                                       space_name=req["space"]))
        except UnknownNameError as e:
            out[name] = {"error": str(e)}
    print("@@" + json.dumps(out))
    """
)


@lru_cache(maxsize=8)
def _fresh_process_runs(request: str) -> dict[str, Any]:
    """Run the strategies of ``request`` (JSON) in one fresh interpreter; name -> params list."""
    proc = subprocess.run([sys.executable, "-c", _FRESH_SCRIPT, request], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"fresh-process run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@"))
    return dict(json.loads(line[2:]))


class StrategyContract:
    """Tests every registered strategy must pass.

    Subclasses set ``strategy_name`` (or override the ``strategy_name`` fixture to
    parametrize), may pick another toy space with ``space_name`` (``"depth+joint"``: depth and
    per-layer compression together), may give per-strategy options in :meth:`options_for`, list the modules
    that register a third-party strategy in ``plugin_modules`` (the fresh-process test
    imports them), and may batch the fresh-process runs of several strategies in one
    interpreter by overriding :meth:`fresh_process_names`.
    """

    strategy_name: ClassVar[str | None] = None
    space_name: ClassVar[str] = "joint"
    n_trials: ClassVar[int] = 6
    seed: ClassVar[int] = 7
    plugin_modules: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture(name="strategy_name")
    def _strategy_name(self) -> str:
        if self.strategy_name is None:
            raise NotImplementedError("set strategy_name or override the strategy_name fixture")
        return self.strategy_name

    @classmethod
    def options_for(cls, name: str) -> dict[str, Any]:
        """Options passed to ``get_strategy(name, ...)`` (JSON-serializable); none by default."""
        return {}

    @classmethod
    def fresh_process_names(cls, name: str) -> list[str]:
        """Strategies run together in the fresh interpreter when ``name`` is tested."""
        return [name]

    def _run(self, name: str, **kw: Any) -> optuna.Study:
        return run_toy_study(name, seed=self.seed, n_trials=self.n_trials, options=self.options_for(name),
                             space_name=self.space_name, **kw)

    def test_returns_base_sampler(self, strategy_name: str) -> None:
        from compsearch.search.registry import get_strategy

        sampler = get_strategy(strategy_name, space=toy_space(self.space_name), seed=0, **self.options_for(strategy_name))
        assert isinstance(sampler, BaseSampler)

    def test_multi_objective_study_completes_inside_space(self, strategy_name: str) -> None:
        from compsearch.search.common import CompressionSampler

        space = toy_space(self.space_name)
        study = self._run(strategy_name)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * self.n_trials
        for t in study.trials:
            assert space.contains(t.params), f"trial {t.number} params {t.params} are not a point of the space"
            assert t.values is not None and len(t.values) == 2
        if isinstance(study.sampler, CompressionSampler):  # never an equivalent of a finished policy
            keys = [space.canonical_key(t.params) for t in study.trials]
            assert len(set(keys)) == len(keys), "two trials got equivalent policies (same canonical form)"

    def test_single_objective_study_completes(self, strategy_name: str) -> None:
        space = toy_space(self.space_name)
        study = self._run(strategy_name, single=True)
        assert all(t.state == TrialState.COMPLETE and space.contains(t.params) for t in study.trials)
        assert len(study.trials) == self.n_trials

    def test_reproducible_under_seed(self, strategy_name: str) -> None:
        first = _params_sequence(self._run(strategy_name))
        second = _params_sequence(self._run(strategy_name))
        assert first == second

    def test_reproducible_in_fresh_process(self, strategy_name: str) -> None:
        names = list(dict.fromkeys([strategy_name, *self.fresh_process_names(strategy_name)]))
        request = json.dumps(
            {
                "modules": list(self.plugin_modules),
                "strategies": [[n, self.options_for(n)] for n in sorted(names)],
                "seed": self.seed,
                "n_trials": self.n_trials,
                "space": self.space_name,
            }
        )
        fresh = _fresh_process_runs(request)[strategy_name]
        assert not (isinstance(fresh, dict) and "error" in fresh), (
            f"{fresh}; list the module registering {strategy_name!r} in plugin_modules"
        )
        assert fresh == _params_sequence(self._run(strategy_name))

    def test_outside_space_falls_back_to_independent_sampling(self, strategy_name: str) -> None:
        from compsearch.search.common import CompressionSampler
        from compsearch.search.registry import get_strategy

        space = toy_space(self.space_name)
        sampler = get_strategy(strategy_name, space=space, seed=self.seed, **self.options_for(strategy_name))
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(toy_objective(space, extra_param=True), n_trials=4)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
        for t in study.trials:
            assert 1e-4 <= t.params["lr"] <= 1e-1
            assert space.contains({k: v for k, v in t.params.items() if k != "lr"})
        if isinstance(sampler, CompressionSampler):  # the strategy keeps proposing the space's params
            assert sampler.infer_relative_search_space(study, study.trials[-1]) == space.optuna_distributions()

    def test_pickled_mid_study_the_sampler_goes_on(self, strategy_name: str) -> None:
        """Ray Tune pickles its searcher, sampler included (a thread lock once broke that)."""
        import pickle

        space = toy_space(self.space_name)
        study = self._run(strategy_name)
        study.sampler = pickle.loads(pickle.dumps(study.sampler))
        study.optimize(toy_objective(space), n_trials=2)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * (self.n_trials + 2)
        assert all(space.contains(t.params) for t in study.trials)

    def test_unknown_option_raises_type_error(self, strategy_name: str) -> None:
        from compsearch.search.registry import get_strategy

        with pytest.raises(TypeError, match="no_such_option"):
            get_strategy(strategy_name, space=toy_space(self.space_name), seed=0, no_such_option=1)


class SpaceContract:
    """Tests every registered space must pass, on :func:`toy_units` (on :func:`toy_depth_units`
    for a space that needs the model, e.g. ``depth`` or ``depth+joint``).

    Subclasses set ``space_name`` (or override the ``space_name`` fixture; compositions
    ``a+b`` are names too) and may give constructor choices in :meth:`choices_for`.
    """

    space_name: ClassVar[str | None] = None
    n_random: ClassVar[int] = 20

    @pytest.fixture(name="space_name")
    def _space_name(self) -> str:
        if self.space_name is None:
            raise NotImplementedError("set space_name or override the space_name fixture")
        return self.space_name

    @classmethod
    def choices_for(cls, name: str) -> dict[str, Any]:
        """Constructor choices of space ``name``; the space's defaults by default."""
        return {}

    @pytest.fixture
    def space(self, space_name: str) -> Space:
        return toy_space(space_name, **self.choices_for(space_name)) if space_needs_model(space_name) else \
            get_space(space_name, toy_units(), **self.choices_for(space_name))

    def test_has_unique_named_dimensions(self, space: Space) -> None:
        names = space.param_names()
        assert names and len(set(names)) == len(names)
        assert all(d.size >= 1 and len(set(d.choices)) == d.size for d in space.dimensions())

    def test_policy_round_trip(self, space: Space) -> None:
        rng = np.random.default_rng(0)
        for _ in range(self.n_random):
            policy = space.sample(rng)
            assert space.decode(space.encode(policy)) == policy

    def test_params_round_trip(self, space: Space) -> None:
        rng = np.random.default_rng(1)
        for _ in range(self.n_random):
            params = space.params_from_actions([int(rng.integers(n)) for n in space.action_sizes()])
            assert space.contains(params)
            assert space.encode(space.decode(params)) == params
            assert space.params_from_actions(space.actions_from_params(params)) == params

    def test_views_match_dimensions(self, space: Space) -> None:
        dims = space.dimensions()
        names = [d.name for d in dims]
        dists = space.optuna_distributions()
        assert list(dists) == names
        assert [list(dists[d.name].choices) for d in dims] == [list(d.choices) for d in dims]
        nni = space.nni_search_space()
        assert list(nni) == names
        assert all(nni[d.name] == {"_type": "choice", "_value": list(d.choices)} for d in dims)
        assert space.action_sizes() == [d.size for d in dims]
        width = sum(1 if d.ordinal else d.size for d in dims)
        assert len(space.feature_names()) == width
        assert space.features(space.sample(np.random.default_rng(2))).shape == (width,)

    def test_features_in_unit_interval(self, space: Space) -> None:
        rng = np.random.default_rng(3)
        for _ in range(self.n_random):
            f = space.features(space.sample(rng))
            assert np.all((f >= 0.0) & (f <= 1.0))
            col = 0
            for d in space.dimensions():  # each categorical dimension is exactly one-hot
                if not d.ordinal:
                    assert f[col : col + d.size].sum() == 1.0
                col += 1 if d.ordinal else d.size

    def test_suggest_returns_decodable_policy(self, space: Space) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        policy = space.suggest(trial)
        assert set(trial.params) == set(space.param_names())
        assert space.decode(trial.params) == policy
        assert isinstance(policy, Policy)

    def test_canonical_representative_is_equivalent_and_stable(self, space: Space) -> None:
        """``canonical_params`` stays in the class, is its own representative, and the
        canonical policy of a decoded point is a fixed point of ``canonical``."""
        rng = np.random.default_rng(5)
        for _ in range(min(self.n_random, 5)):
            params = space.params_from_actions([int(rng.integers(n)) for n in space.action_sizes()])
            rep = space.canonical_params(params)
            assert space.contains(rep) and space.canonical_key(rep) == space.canonical_key(params)
            assert space.canonical_params(rep) == rep
            canonical = space.canonical(space.decode(params))
            assert space.canonical(canonical) == canonical

    def test_contains_rejects_foreign_params(self, space: Space) -> None:
        params = space.encode(space.sample(np.random.default_rng(4)))
        assert space.contains(params)
        assert not space.contains({**params, "not-a-dimension": 1})
        first = space.dimensions()[0]
        assert not space.contains({**params, first.name: "not-a-choice"})
        assert not space.contains({k: v for k, v in params.items() if k != first.name})


__all__ = [
    "SpaceContract",
    "StrategyContract",
    "ToyNet",
    "ToyResNet",
    "digits_spec",
    "run_toy_study",
    "space_needs_model",
    "toy_accuracy",
    "toy_model",
    "toy_depth_units",
    "toy_objective",
    "toy_resnet",
    "toy_size_bits",
    "toy_space",
    "toy_units",
]


class EvaluatorContract:
    """Contract of an evaluator (``cost``/``proxy``/``sensitivity``/``evaluate``).

    Subclasses provide an ``evaluator`` fixture returning an evaluator over a model with
    at least two units and short fine-tuning (a few steps); the checks are exact:

    * the identity policy costs ``32 x all parameters`` bits (``compression_ratio`` 1,
      ``sparsity`` 0) and its proxy (logit-MSE against the uncompressed model) is 0;
    * halving one unit's kept channels removes exactly ``floor(c/2 + 0.5) x fan_in``
      weights' worth of bits and sets ``sparsity`` accordingly;
    * ``sensitivity()`` has one finite, non-negative value per unit;
    * after ``evaluate`` of a 4-bit, 50%-channel policy the weights its forward uses have
      exactly the kept rows non-zero and at most ``2^4`` distinct values per channel, the
      result carries the task's quality metric, and ``compressed_units()`` reproduces those
      weights exactly from integer codes in ``[qmin, qmax]``;
    * ``reconstruction_error`` of the identity policy is 0 for every unit whose forward runs,
      and ``unit_stats`` has finite weight and gradient statistics for every unit;
    * a policy naming a unit the model lacks raises :class:`~compsearch.errors.PolicyError`.
    """

    @staticmethod
    def _two_units(evaluator: Any) -> tuple[Unit, Unit]:
        units = [u for u in evaluator.units if u.out_channels >= 2]
        return units[0], units[-1]

    def test_identity_cost_is_uncompressed(self, evaluator: Any) -> None:
        params = sum(p.numel() for p in evaluator.model.parameters())
        cost = evaluator.cost(Policy())
        assert cost["size_bits"] == 32 * params
        assert cost["compression_ratio"] == 1.0 and cost["sparsity"] == 0.0
        assert evaluator.proxy(Policy()) == 0.0

    def test_channel_pruning_cost_is_exact(self, evaluator: Any) -> None:
        from compsearch.spaces import UnitPolicy

        unit, _ = self._two_units(evaluator)
        kept = int(np.floor(unit.out_channels * 0.5 + 0.5))
        removed = (unit.out_channels - kept) * unit.fan_in
        cost = evaluator.cost(Policy({unit.name: UnitPolicy(keep=0.5)}))
        assert evaluator.cost(Policy())["size_bits"] - cost["size_bits"] == 32 * removed
        total = sum(u.params for u in evaluator.units)
        assert abs(cost["sparsity"] - removed / total) < 1e-12

    def test_sensitivity_per_unit(self, evaluator: Any) -> None:
        sens = evaluator.sensitivity()
        assert set(sens) == {u.name for u in evaluator.units}
        assert all(np.isfinite(v) and v >= 0 for v in sens.values())

    def test_compression_in_force_after_evaluate(self, evaluator: Any) -> None:
        from compsearch.spaces import UnitPolicy

        unit, _ = self._two_units(evaluator)
        up = UnitPolicy(w_bits=4, a_bits=8, keep=0.5, granularity="channel", structure="channel")
        result = evaluator.evaluate(Policy({unit.name: up}))
        assert np.isfinite(result.values[result.quality]) and result.quality in result.metrics()
        w = evaluator.effective_weights()[unit.name].detach().reshape(unit.out_channels, -1)
        alive = (w != 0).any(dim=1)
        assert int(alive.sum()) <= int(np.floor(unit.out_channels * 0.5 + 0.5))
        for row in w[alive]:
            assert len(torch.unique(row)) <= 2**4
        packed = evaluator.compressed_units()[unit.name]
        codes = packed.codes()
        assert packed.qmin <= int(codes.min()) and int(codes.max()) <= packed.qmax
        assert torch.equal(packed.dequantize(codes).reshape(unit.out_channels, -1), w)

    def test_hooks(self, evaluator: Any) -> None:
        errors = evaluator.reconstruction_error(Policy())
        assert set(errors) == {u.name for u in evaluator.units}
        assert all(e == 0.0 or np.isnan(e) for e in errors.values())
        for stats in evaluator.unit_stats().values():
            assert all(np.isfinite(v) for v in (stats.weight_mean, stats.weight_var, stats.grad_mean, stats.grad_var))
            assert 0.0 <= stats.weight_entropy <= 1.0

    def test_unknown_unit_raises(self, evaluator: Any) -> None:
        from compsearch.errors import PolicyError
        from compsearch.spaces import UnitPolicy

        with pytest.raises(PolicyError, match="does not have"):
            evaluator.cost(Policy({"no.such.unit": UnitPolicy(w_bits=4)}))
