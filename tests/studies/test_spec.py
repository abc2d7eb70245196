"""Study specs: the bundled ones validate; malformed ones are rejected naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from compsearch.errors import SpecError
from compsearch.search.registry import list_strategies
from compsearch.studies.spec import load_spec

STUDIES = Path(__file__).resolve().parents[2] / "studies"
BUNDLED = sorted(STUDIES.glob("*.toml"))


def test_all_four_bundled_specs_are_present() -> None:
    assert {p.stem for p in BUNDLED} >= {"quickstart", "digits_compare", "cifar10_resnet18", "cifar10_vit_tiny"}


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_spec_validates(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert set(spec.strategies) <= set(list_strategies())
    assert spec.objective_pairs[0] == (spec.quality, "maximize")  # accuracy, or return of an agent study


def test_quickstart_budget() -> None:
    spec = load_spec(STUDIES / "quickstart.toml")
    assert 4 <= len(spec.strategies) <= 5 and spec.trials == 40 and spec.seeds == [0]


def test_digits_compare_runs_every_strategy(make_spec) -> None:
    spec = load_spec(STUDIES / "digits_compare.toml")
    assert spec.trials == 100 and spec.seeds == [0, 1, 2, 3, 4]
    assert set(spec.strategies) == set(list_strategies())


def test_defaults_and_normalisation(make_spec) -> None:
    spec = load_spec(make_spec(seeds=3, objectives=["accuracy", {"metric": "bops"}]))
    assert spec.seeds == [0, 1, 2]
    assert spec.objective_pairs == (("accuracy", "maximize"), ("bops", "minimize"))
    assert spec.evaluator.config(seed=7).finetune.seed == 7  # the study seed seeds fine-tuning
    assert spec.evaluator.config(seed=7).seed == 7
    assert spec.space.space_kwargs() == {"w_bits": [2, 4, 8, 32], "keep": [0.5, 1.0], "skip_first": True, "skip_head": True}
    assert [(c.kind, c.metric, c.bound) for c in spec.parsed_constraints()] == [("max", "size_kb", 12.0)]


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"evaluator": {"finetune": {"stepz": 3}}}, r"evaluator\.finetune\.stepz: unknown key; allowed: \[.*'steps'"),
        ({"colour": "red"}, r"colour: unknown key"),
        ({"trials": "ten"}, r"trials: expected an integer, got 'ten'"),
        ({"base": {"lr": "fast"}}, r"base\.lr: expected a number, got 'fast'"),
        ({"space": {"choices": {"w_bits": [4, "8"]}}}, r"space\.choices\.w_bits\[1\]: expected an integer, got '8'"),
        ({"strategies": ["random", "nsga2", "foo"]}, r"strategies\[2\]: unknown strategy 'foo'; registered: \[.*'random'"),
        ({"strategy_options": {"bar": {}}}, r"strategy_options\.bar: unknown strategy 'bar'"),
        ({"constraints": {"max_speed": 1.0}}, r"constraints\.max_speed: constraint 'max_speed' is unknown"),
        ({"objectives": ["accuracy", {"metric": "size_kb", "direction": "maximize"}]}, r"objectives\[1\]: size_kb is always minimized; got direction='maximize'"),
        ({"objectives": ["accuracy", "speed"]}, r"objectives\[1\]: unknown metric 'speed'"),
        ({"reference_point": {"bops": 1.0}}, r"reference_point: \['bops'\] are not objectives"),
        ({"objectives": ["accuracy", "latency_ms"]}, r"reference_point\.latency_ms: objective 'latency_ms' has no default"),
        ({"seeds": "many"}, r"seeds: expected a seed count or a list of seeds, got 'many'"),
        ({"seeds": [1, 1]}, r"seeds: \[1, 1\] has duplicates"),
        ({"trials": 0}, r"trials: input should be greater than or equal to 1"),
        ({"model": {"name": "no_such_net"}}, r"model\.name: unknown model 'no_such_net'"),
        ({"data": {"name": "mnist"}}, r"data\.name: unknown dataset 'mnist'; registered: \["),
        ({"space": {"name": "fancy"}}, r"space\.name: unknown space 'fancy'"),
        ({"evaluator": {"criterion": "random"}}, r"evaluator\.criterion: unknown criterion 'random'"),
        ({"evaluator": {"finetune": {"optimizer": "lion"}}}, r"evaluator\.finetune: .*optimizer='lion' is unknown"),
        ({"name": "my run"}, r"name: 'my run' must be folder-safe"),
        ({"model": {"name": "digits_cnn", "checkpoint": "w.pt"}}, r"model\.checkpoint: give either"),
    ],
)
def test_malformed_spec_names_the_key_path(make_spec, override: dict, pattern: str) -> None:
    with pytest.raises(SpecError, match=pattern):
        load_spec(make_spec(**override))


def test_missing_key_and_file_errors(make_spec, tmp_path: Path) -> None:
    spec = make_spec()
    del spec["trials"]
    with pytest.raises(SpecError, match=r"trials: required key is missing"):
        load_spec(spec)
    with pytest.raises(SpecError, match=r"does not exist"):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(bad)


def test_toml_file_errors_name_the_file_and_every_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('name = "x"\nstrategies = ["random"]\ntrials = "ten"\n[model]\nname = "digits_cnn"\nsize = 3\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "trials: expected an integer" in message and "model.size: unknown key" in message


def test_relative_checkpoint_is_relative_to_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.toml"
    path.write_text('name = "x"\nstrategies = ["random"]\ntrials = 2\n[model]\nname = "digits_cnn"\ncheckpoint = "w/base.pt"\n')
    spec = load_spec(path)
    assert spec.model.checkpoint == str(tmp_path / "w" / "base.pt") and spec.base is None


def test_space_blocks_regroup_the_units_of_a_run(make_spec, tmp_path: Path) -> None:
    import torch

    from compsearch.evaluators import DataSplits
    from compsearch.evaluators.models import build_model
    from compsearch.studies.latency_objective import evaluator_factory

    with pytest.raises(SpecError, match=r"space\.blocks: .*'layer\[1' is not a regular expression"):
        load_spec(make_spec(space={"name": "block", "blocks": {"layer[1": "early"}}))
    spec = load_spec(make_spec(space={"name": "block", "blocks": {r"features\.[35]": "body"}}))
    model = build_model("digits_cnn", num_classes=10, width=8, hidden=32)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.arange(8) % 10
    ev = evaluator_factory(model, DataSplits(x, y, x, y, x, y, num_classes=10), spec, tmp_path)(0)
    # discovered: one block per layer of the plain Sequential; the override joins features.3 and features.5
    assert [(u.name, u.block) for u in ev.units] == [("features.0", "features.0"), ("features.3", "body"),
                                                    ("features.5", "body"), ("classifier.1", "classifier.1"),
                                                    ("classifier.3", "classifier.3")]
