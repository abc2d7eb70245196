"""``HiRLSampler``: the RL strategy ``hirl`` and its hierarchical form ``hirl-full`` as Optuna
samplers (a thin shell).

It is :class:`~compsearch.search.sls.SLSSampler` (the same proposal loop, reward part and
mutations) plus a hierarchy of agents (:mod:`~compsearch.search.rl.hierarchy`) built from
parts passed in:

=============== ====================================== ==============================================
part            ``hirl`` (default)                     ``hirl-full`` (the hierarchy as HiReLC has it)
=============== ====================================== ==============================================
``allocation``  :class:`FixedAllocation` (no high       :class:`EnsembleAllocation` (K=3 agents, vote)
                level: every block's budget is the
                global target)
``low_level``   :class:`SharedLowLevel` (one policy,    the same (:class:`PerBlockLowLevel`: one agent
                block embedding)                        per block)
``rewards``     :class:`SurrogateRewards`               the same (:class:`RealRewards`: no surrogate)
``prior``       :class:`NoPrior`                        :class:`FisherPrior`
``sources``     agents (64), greedy, mutations (16)     agents (64) and greedy
                of the 4 best trials
``curriculum``  :class:`NoCurriculum`                   the same (:class:`BudgetCurriculum`)
=============== ====================================== ==============================================

The default is ``hirl-full`` with three parts swapped as the benchmark suite's single-part
ablations of ``hirl-full`` suggest (README, "Benchmark suite"): averaged over its four problems
the high level and the Fisher prior did not raise the final hypervolume, the mutations did.
``hirl-full`` and its ablations (:mod:`~compsearch.search.hirl.variants`) stay registered.

After every refit of the rewards the agents train: by PPO against the surrogate
(``replay_iterations`` PPO iterations the first time in a process, then ``iterations``, of
``episodes`` episodes each), or from the real trials (:class:`RealRewards`). The surrogate
shapes rewards only: every value the study records is a real evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compsearch.errors import check_int_at_least
from compsearch.search.common import Observation
from compsearch.search.hirl.variants import default_parts, variant_parts
from compsearch.search.registry import DEFAULT_OBJECTIVES, SearchContext
from compsearch.search.rl.hierarchy import Hierarchy, build_hierarchy
from compsearch.search.rl.layout import BlockLayout, LayoutError, block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.options import route_options
from compsearch.search.rl.persist import check_hierarchy_state, load_warm_start
from compsearch.search.rl.ppo import PPOConfig
from compsearch.search.sls import SLS_ALIASES, SLSConfig, SLSSampler, as_config

HIRL_ALIASES = {
    **SLS_ALIASES,
    "pool": ("sources", "AgentProposals.n"),
    **{f: ("allocation", f) for f in ("k", "voting", "levels", "agent_weights", "block_penalty")},
    "prior_strength": ("prior", "strength"),
    "embed": ("low_level", "embed"),
    "curriculum_rounds": ("curriculum", "rounds"),
}


@dataclass(frozen=True)
class HiRLConfig(SLSConfig):
    """Plain settings of :class:`HiRLSampler` (the parts are separate objects).

    Attributes:
        startup_trials: random trials before the agents propose.
        retrain_every: new finished trials between retrainings.
        weights: reward weights of the proposals and the low level (quality, penalty, thrift, recon).
        episodes: episodes per PPO iteration.
        iterations: PPO iterations per retraining.
        replay_iterations: PPO iterations of the first training in a process.
        ppo: PPO settings of every agent (a :class:`PPOConfig` or a mapping of its fields).
    """

    episodes: int = 32
    iterations: int = 8
    replay_iterations: int = 20
    ppo: PPOConfig = field(default_factory=PPOConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int_at_least("HiRLConfig", self, {"episodes": 1, "iterations": 1, "replay_iterations": 0})
        as_config(self, "ppo", PPOConfig)


class HiRLSampler(SLSSampler):
    """Hierarchical RL (HiReLC-style) compression sampler (module docstring).

    Args:
        space: the compression space.
        evaluator: the shared evaluator (``cost``, ``proxy``, ``sensitivity``, ``unit_stats``,
            ``reconstruction_error``); optional.
        sensitivity: unit name -> Fisher sensitivity (overrides ``evaluator.sensitivity()``).
        seed: fixes every random choice (None = nondeterministic).
        config: :class:`HiRLConfig`.
        allocation, low_level, rewards, prior, sources, curriculum, goals: the parts (module docstring).
        objectives: ``(metric, direction)`` in the study's value order.
        constraints: ``max_<metric>`` / ``min_<metric>`` bounds, e.g. ``{"max_size_kb": 4.0}``.
        context: a full :class:`SearchContext` (overrides the arguments above it).
        warm_start: a finished run's folder (its ``strategy_state/<name>-s<seed>.pt``) or a state
            file: the hierarchy starts from that learned state, possibly of another model
            (:mod:`~compsearch.search.rl.persist` says what carries over).
        name: the registered name (finds the state file in a run folder).
    """

    def __init__(
        self, space: Any, *, evaluator: Any = None, sensitivity: Mapping[str, float] | None = None, seed: int | None = None,
        config: HiRLConfig | None = None, allocation: Any = None, low_level: Any = None, rewards: Any = None, prior: Any = None,
        sources: Sequence[Any] | None = None, curriculum: Any = None, goals: Any = None, objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
        constraints: Mapping[str, float] | None = None, context: SearchContext | None = None,
        warm_start: str | None = None, name: str = "hirl",
    ) -> None:
        d = default_parts()
        config = config or HiRLConfig()
        if not isinstance(config, HiRLConfig):
            raise TypeError(f"config must be a HiRLConfig, got {type(config).__name__}")
        super().__init__(
            space, evaluator=evaluator, seed=seed, config=config, rewards=rewards or d["rewards"],
            sources=sources if sources is not None else d["sources"], goals=goals or d["goals"], objectives=objectives, constraints=constraints, context=context,
        )
        self.config: HiRLConfig = config
        self.allocation = allocation or d["allocation"]
        self.low_level = low_level or d["low_level"]
        self.prior = prior or d["prior"]
        self.curriculum = curriculum or d["curriculum"]
        self._sensitivity = dict(sensitivity) if sensitivity is not None else None
        self.hierarchy: Hierarchy | None = None
        self._warm = load_warm_start(warm_start, strategy=name, seed=self.ctx.seed, check=check_hierarchy_state)
        self.warm_copied: dict[str, list[str]] = {}
        if self.allocation.hierarchical:
            self._layout()  # a space the hierarchy cannot map fails here, not at the first proposal

    def _check_sources(self) -> None:
        if not self.sources:
            raise TypeError("HiRLSampler needs at least one proposal source")

    @classmethod
    def from_context(cls, ctx: SearchContext, *, sensitivity: Mapping[str, float] | None = None, name: str = "hirl", **options: Any) -> HiRLSampler:
        """Registry factory: ``options`` are :class:`HiRLConfig` fields, parts by name, or the
        aliases of :data:`HIRL_ALIASES`; ``name`` picks the variant's parts as the base."""
        base = variant_parts(name)
        warm_start = options.pop("warm_start", None)
        config, parts = route_options(name, HiRLConfig(), base, {k: v for k, v in options.items() if k != "config"}, HIRL_ALIASES,
                                      fix="use 'hirl-full' (the high level and the Fisher prior are its parts, not the default's)")
        if "config" in options:
            config = options["config"]
        return cls(ctx.space, context=ctx, sensitivity=sensitivity, config=config, warm_start=warm_start, name=name, **parts)

    # ---- set-up ------------------------------------------------------------------------------
    def _layout(self) -> BlockLayout:
        layout = block_layout(self.space, merge=not self.allocation.hierarchical)
        if self.allocation.hierarchical and layout.n_blocks < 2:
            raise LayoutError(
                f"space {self.space.name!r}: its searched units lie in {layout.n_blocks} model block {list(layout.blocks)}, "
                f"so the high level has nothing to allocate across; use 'hirl', 'hirl-flat' or 'sls' (no high level), or give discover_units "
                f"a block override (blocks=...) that splits the model"
            )
        return layout

    def _build(self, obj: StrategyObjective) -> None:
        ev, cfg = self.ctx.evaluator, self.config
        sens = self._sensitivity
        if sens is None and self.prior.uses_sensitivity and ev is not None and hasattr(ev, "sensitivity"):
            sens = ev.sensitivity()
        self.hierarchy = build_hierarchy(
            obj, ev, allocation=self.allocation, low_level=self.low_level, prior=self.prior, sensitivity=sens,
            ppo=cfg.ppo, weights=cfg.weights, seed=self.seed,
        )
        if self._warm is not None:
            self.warm_copied = self.hierarchy.load_state_dict(self._warm)

    def _hierarchy(self) -> Hierarchy | None:
        return self.hierarchy

    def _before_pick(self, index: int) -> None:
        if self.hierarchy is not None:
            self.hierarchy.gen.manual_seed(int(np.random.default_rng([self.seed, index, 11]).integers(2**62)))

    def _train(self, obj: StrategyObjective, history: list[Observation], *, first: bool) -> None:
        assert self.hierarchy is not None  # built by _setup
        cfg = self.config
        self._critic.train(
            self.hierarchy, obj, history, low=self.curriculum.low(obj, self._rounds),
            iterations=cfg.replay_iterations if first else cfg.iterations, episodes=cfg.episodes,
        )

    # ---- learned state ---------------------------------------------------------------------------
    def learned_state(self, study: Any = None) -> dict[str, Any]:
        """The hierarchy's learned state (format: :mod:`~compsearch.search.rl.persist`); empty
        before the first model-based proposal. ``study`` is accepted for the common protocol
        and not used (the agents train on their own schedule)."""
        return self.hierarchy.state_dict() if self.hierarchy is not None else {}

    def load_learned_state(self, state: dict[str, Any]) -> dict[str, list[str]]:
        """Warm-start the hierarchy (built now if needed) from a saved state; returns what was copied.

        Raises:
            ConfigError: the state is of another format; RuntimeError: called before the study's
                objective is known (call it after the first proposal or pass the study).
        """
        if self.hierarchy is None:
            raise RuntimeError("load_learned_state needs the hierarchy: call it after the sampler's first model-based proposal")
        return self.hierarchy.load_state_dict(state)
