from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError, PolicyError, UnknownNameError
from compsearch.spaces import Policy, UnitPolicy, discover_units, get_space, list_spaces


@pytest.fixture(scope="module")
def units():  # 4 units in 3 blocks: stem "0", block "body" {2, 4}, head "6"
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    return discover_units(model, torch.randn(1, 1, 4, 4), blocks={r"[24]": "body"})


def test_registry_lists_builtins_and_rejects_unknown(units) -> None:
    assert {"joint", "block", "uniform", "quant", "prune", "depth"} <= set(list_spaces())
    with pytest.raises(UnknownNameError, match=r"unknown space 'jiont'; registered: \['block', 'depth', 'joint'"):
        get_space("jiont", units)
    with pytest.raises(TypeError, match="unexpected keyword"):
        get_space("joint", units, bits=(4, 8))


def test_joint_dimension_counts(units) -> None:
    space = get_space("joint", units)
    # first and head skipped -> units "2" and "4"; 6 fields each, all with > 1 default choice
    assert [u.name for u in space.units] == ["2", "4"]
    assert len(space.dimensions()) == 12
    assert space.action_sizes()[:6] == [7, 2, 7, 2, 2, 2]
    # features: 3 ordinal + 3 binary one-hot (2 columns each) = 9 per unit
    assert space.features(space.sample(np.random.default_rng(0))).shape == (18,)
    nni = space.nni_search_space()
    assert nni["2.w_bits"] == {"_type": "choice", "_value": [2, 3, 4, 5, 6, 8, 32]}


def test_fixed_fields_are_not_params(units) -> None:
    quant = get_space("quant", units)
    assert {d.name.split(".")[-1] for d in quant.dimensions()} == {"w_bits", "a_bits", "scheme", "granularity"}
    p = quant.sample(np.random.default_rng(1))
    assert all(up.keep == 1.0 for up in p.values())
    prune = get_space("prune", units, keep=(0.5, 1.0))
    assert prune.action_sizes() == [2, 2, 2, 2]  # keep x structure, per unit
    p = prune.decode({"2.keep": 0.5, "2.structure": "unstructured", "4.keep": 1.0, "4.structure": "channel"})
    assert p["2"] == UnitPolicy(keep=0.5, structure="unstructured") and p["4"].w_bits == 32


def test_block_and_uniform_tie(units) -> None:
    block = get_space("block", units, w_bits=(4, 8), a_bits=8, keep=1.0, scheme="symmetric",
                      granularity="channel", structure="channel")
    assert block.param_names() == ["body.w_bits"]
    p = block.decode({"body.w_bits": 4})
    assert p["2"] == p["4"] == UnitPolicy(w_bits=4, a_bits=8)
    uniform = get_space("uniform", units, skip_first=False, skip_head=False, w_bits=(2, 8), a_bits=32,
                        keep=(0.5, 1.0), scheme="symmetric", granularity="tensor", structure="channel")
    assert uniform.param_names() == ["w_bits", "keep"]
    p = uniform.decode({"w_bits": 2, "keep": 0.5})
    assert len(p) == 4 and set(p.values()) == {UnitPolicy(w_bits=2, keep=0.5, granularity="tensor")}
    with pytest.raises(PolicyError, match="ties group 'body'"):
        block.encode(Policy({"2": UnitPolicy(w_bits=4, a_bits=8), "4": UnitPolicy(w_bits=8, a_bits=8)}))


def test_round_trips_and_actions(units) -> None:
    rng = np.random.default_rng(0)
    for name in ("joint", "block", "uniform", "quant", "prune"):
        space = get_space(name, units)
        for _ in range(5):
            p = space.sample(rng)
            params = space.encode(p)
            assert space.decode(params) == p
            assert space.encode(space.decode(params)) == params
            actions = space.actions_from_params(params)
            assert space.params_from_actions(actions) == params
            f = space.features(p)
            assert f.min() >= 0 and f.max() <= 1


def test_suggest_with_optuna(units) -> None:
    space = get_space("joint", units)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    p = space.suggest(trial)
    assert space.encode(p) == trial.params
    assert set(space.optuna_distributions()) == set(trial.params)


def test_bad_choices_and_params(units) -> None:
    with pytest.raises(PolicyError, match="w_bits=0 is invalid"):
        get_space("joint", units, w_bits=(0, 4))
    with pytest.raises(ConfigError, match="choices for keep are empty"):
        get_space("joint", units, keep=())
    with pytest.raises(ConfigError, match="leave no unit to search"):
        get_space("joint", [u for u in units if u.is_head])
    space = get_space("joint", units)
    with pytest.raises(PolicyError, match="lack 12 parameter"):
        space.decode({})
    params = space.encode(space.sample(np.random.default_rng(0)))
    params["2.w_bits"] = 7
    with pytest.raises(PolicyError, match=r"'2.w_bits' = 7 is not one of its choices"):
        space.decode(params)
    with pytest.raises(PolicyError, match="does not search unit"):
        space.encode(Policy({"0": UnitPolicy(w_bits=4), "2": UnitPolicy(), "4": UnitPolicy()}))


def test_functional_units_keep_float_inputs(units) -> None:
    import dataclasses

    func = [dataclasses.replace(u, use="functional") if u.name == "4" else u for u in units]
    joint = get_space("joint", func)
    # unit "2": 6 searched fields; unit "4" (functional): its input is not quantized -> 5 fields
    assert [d.name for d in joint.dimensions() if d.group == "4"] == ["4.w_bits", "4.keep", "4.scheme",
                                                                      "4.granularity", "4.structure"]
    assert len(joint.dimensions()) == 11
    policy = joint.sample(np.random.default_rng(0))
    assert policy["4"].a_bits == 32 and policy["2"].a_bits in (8, 32)
    # a block holding a functional unit keeps float inputs for all its units (one tied setting)
    assert "body.a_bits" not in {d.name for d in get_space("block", func).dimensions()}
