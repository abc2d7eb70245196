"""How spaces map onto the hierarchy's blocks and kernels, the exact kernel cost, and the clear
errors for spaces the hierarchy cannot map."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from compsearch.search.registry import SearchContext, get_strategy
from compsearch.search.rl.layout import LayoutError, block_layout
from compsearch.search.rl.objective import StrategyObjective
from compsearch.search.rl.reward import unit_cost_oracle
from compsearch.spaces import discover_units, get_space
from compsearch.testing import TOY_CHOICES, toy_model, toy_objective, toy_space


def test_joint_space_kernels_are_units_inside_model_blocks() -> None:
    layout = block_layout(toy_space())
    assert layout.blocks == ("layer1.0", "fc")  # 2 model blocks for 3 searched units: not one slot per unit
    assert layout.kernels == ("layer1.0.conv1", "layer1.0.conv2", "fc")
    assert layout.kernel_block.tolist() == [0, 0, 1]
    assert [f for f, _ in layout.heads] == ["w_bits", "a_bits", "keep", "scheme", "structure"]
    actions = np.array([[3, 1, 2, 0, 1, 0, 0, 1, 1, 0, 2, 1, 0, 1, 1]])
    slots = layout.to_slots(actions)
    assert slots.shape == (1, 3, 5) and slots[0, 2].tolist() == [2, 1, 0, 1, 1]
    assert np.array_equal(layout.from_slots(slots), actions)


def test_block_space_kernels_are_whole_blocks() -> None:
    layout = block_layout(toy_space("block"))
    assert layout.blocks == ("layer1.0", "fc") and layout.kernels == ("layer1.0", "fc")
    assert [u.name for u in layout.kernel_units[0]] == ["layer1.0.conv1", "layer1.0.conv2"]


def test_uniform_space_cannot_be_split_across_blocks() -> None:
    with pytest.raises(LayoutError, match=r"dimension 'w_bits' sets group 'all units', whose units lie in 2 model blocks.*'hirl-flat'"):
        block_layout(toy_space("uniform"))
    merged = block_layout(toy_space("uniform"), merge=True)
    assert merged.blocks == ("layer1.0+fc",) and merged.n_kernels == 1
    with pytest.raises(LayoutError, match="whose units lie in 2 model blocks"):
        get_strategy("hirl-full", space=toy_space("uniform"), seed=0)


def test_flat_variants_and_sls_run_on_the_uniform_space() -> None:
    space = toy_space("uniform")
    for name in ("hirl", "hirl-flat", "sls"):
        sampler = get_strategy(name, space=space, seed=0, startup_trials=2)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        study.optimize(toy_objective(space), n_trials=5)
        assert len({str(t.params) for t in study.trials}) == 5
        assert sampler.origins[4] != "startup"  # the model-based path ran


def test_a_model_of_one_block_has_nothing_to_allocate() -> None:
    units = discover_units(toy_model(), torch.zeros(1, 1, 4, 4), blocks=lambda name: "all")
    space = get_space("joint", units, **TOY_CHOICES)
    with pytest.raises(LayoutError, match=r"lie in 1 model block \['all'\].*'hirl', 'hirl-flat' or 'sls'"):
        get_strategy("hirl-full", space=space, seed=0)
    assert get_strategy("hirl-flat", space=space, seed=0) is not None


def test_kernel_cost_equals_the_oracle_and_block_ratio_by_hand() -> None:
    space = toy_space()
    oracle = unit_cost_oracle(space)
    obj = StrategyObjective(SearchContext(space=space), ["maximize", "minimize"], layout=block_layout(space))
    rng = np.random.default_rng(0)
    actions = np.array([[rng.integers(n) for n in space.action_sizes()] for _ in range(20)])
    metrics = obj.cost.metrics(actions)
    for i, a in enumerate(actions):
        exact = oracle(space.decode(space.params_from_actions(a.tolist())))
        for key in ("size_bits", "bops", "sparsity", "compression_ratio"):
            assert metrics[key][i] == pytest.approx(exact[key], rel=1e-9)
    # all 32-bit, keep 1 except fc at keep 0.5 (channel pruning): block fc keeps half its 2048 weights
    a = np.array([[3, 1, 2, 0, 0, 3, 1, 2, 0, 0, 3, 1, 0, 0, 0]])
    ratio = obj.cost.block_ratio(obj.cost.deltas(a))[0]
    assert ratio[0] == pytest.approx(1.0) and ratio[1] == pytest.approx(0.5, abs=0.02)
