"""Plugins: a user's own model and dataset named by a spec (and ``--plugin``, and entry points),
run end to end; show and report of the finished run read it without the plugin."""

from __future__ import annotations

import json
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from compsearch import plugins
from compsearch.cli import main
from compsearch.errors import SpecError
from compsearch.evaluators.datasets import DATASETS
from compsearch.evaluators.models import MODELS
from compsearch.search.registry import STRATEGIES
from compsearch.studies.spec import load_spec

# The README's example plugin, word for word.
PLUGIN = textwrap.dedent('''
    """My model and my data for compsearch (imported by `plugins = ["my_compress_plugins"]`)."""
    import torch
    from torch import nn

    from compsearch import DataSplits, register_dataset, register_model


    @register_model("my_net")
    def my_net(*, num_classes: int, in_chans: int, width: int = 8) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, 32), nn.ReLU(), nn.Linear(32, num_classes),
        )


    @register_dataset("my_blobs")
    def my_blobs(*, seed: int = 0, n: int = 240) -> DataSplits:
        """Three classes of noisy 8x8 prototypes, split 60/20/20 (fixed by seed)."""
        g = torch.Generator().manual_seed(seed)
        prototypes = torch.randn(3, 1, 8, 8, generator=g)
        y = torch.arange(n) % 3
        x = prototypes[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g)
        a, b = int(0.6 * n), int(0.8 * n)
        return DataSplits(x_train=x[:a], y_train=y[:a], x_val=x[a:b], y_val=y[a:b],
                          x_test=x[b:], y_test=y[b:], num_classes=3, name="my_blobs")
''')

SPEC = textwrap.dedent('''
    name = "mine"
    plugins = ["my_compress_plugins"]
    strategies = ["random"]
    trials = 3

    [model]
    name = "my_net"
    [base]
    steps = 20
    [data]
    name = "my_blobs"
    [space.choices]
    w_bits = [4, 8, 32]
    keep = [0.5, 1.0]
    [evaluator]
    device = "cpu"
    [evaluator.finetune]
    steps = 3
''')

STRATEGY_PLUGIN = textwrap.dedent('''
    import optuna

    from compsearch.search.registry import register_strategy

    @register_strategy("my-random")
    def my_random(ctx, **options):
        return optuna.samplers.RandomSampler(seed=ctx.seed, **options)
''')


def _forget(*modules: str) -> None:
    """Unregister what the test plugins registered and drop them from ``sys.modules``."""
    for registry, name in ((MODELS, "my_net"), (DATASETS, "my_blobs"), (STRATEGIES, "my-random")):
        if name in registry:
            registry.unregister(name)
    for module in modules:
        sys.modules.pop(module, None)
        plugins._imported.pop(module, None)


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_compress_plugins.py").write_text(PLUGIN)
    (folder / "my_strategy_plugin.py").write_text(STRATEGY_PLUGIN)
    (folder / "mine.toml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)  # not the project folder: the spec's folder is searched
    path = list(sys.path)
    yield folder
    sys.path[:] = path
    _forget("my_compress_plugins", "my_strategy_plugin")


def test_a_spec_names_its_plugin_and_a_finished_run_reads_without_it(user_folder: Path, capsys: Any) -> None:
    out = user_folder.parent / "runs" / "mine"
    spec = str(user_folder / "mine.toml")
    assert main(["check", spec, "--out", str(out), "--plugin", "my_strategy_plugin", "--strategies",
                 "random,my-random"]) == 0
    assert main(["run", spec, "--out", str(out), "--quiet", "--plugin", "my_strategy_plugin",
                 "--strategies", "random,my-random"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["spec"]["plugins"] == ["my_compress_plugins", "my_strategy_plugin"]  # the spec's, then --plugin
    assert set(run["plugins"]["modules"]) >= {"my_compress_plugins", "my_strategy_plugin"}
    assert [u["name"] for u in run["units"]] == ["0", "2", "6", "8"]  # network order, for the heatmaps
    cached = json.loads((out / "test_eval.json").read_text())
    assert len(cached) >= 2  # the baseline and at least one Pareto point, measured at the end of the run
    capsys.readouterr()

    _forget("my_compress_plugins", "my_strategy_plugin")  # a reader on another machine: no plugin
    sys.path[:] = [p for p in sys.path if Path(p).resolve() != user_folder.resolve()]
    assert main(["show", str(out), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["strategy"] for r in shown["pareto"]} >= {"uncompressed", "random", "my-random"}
    assert all(r["test_accuracy"] != "-" for r in shown["pareto"])  # read from test_eval.json
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert "my_compress_plugins" not in sys.modules and "my_net" not in MODELS  # nothing was imported


def test_bad_plugins_are_named_where_they_were_given(user_folder: Path, capsys: Any) -> None:
    (user_folder / "broken_plugin.py").write_text("raise RuntimeError('no GPU driver')\n")
    data = {**load_spec(user_folder / "mine.toml").model_dump(mode="json"), "plugins": ["broken_plugin"]}
    with pytest.raises(SpecError, match=r"plugins\[0\]='broken_plugin': importing it failed: RuntimeError: no GPU driver"):
        load_spec(data)
    with pytest.raises(SpecError, match=r"plugins: \[0\]='my/plugin.py' is not a module name"):
        load_spec({**data, "plugins": ["my/plugin.py"]}, stored=True)
    assert main(["check", str(user_folder / "mine.toml"), "--plugin", "not_there"]) == 2
    assert "--plugin='not_there': no module of that name" in capsys.readouterr().err
    assert main(["spaces", "my_net", "--input-shape", "1,8,8", "--num-classes", "3", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "unit,kind,use,block,weight shape,params,MACs,searched"


def test_entry_points_are_loaded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_plugin.py").write_text("CALLS = []\ndef register():\n    CALLS.append(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points", {})
    found = [metadata.EntryPoint("mine", "ep_plugin:register", plugins.ENTRY_POINT_GROUP),
             metadata.EntryPoint("mod", "ep_plugin", plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: found if group == plugins.ENTRY_POINT_GROUP else [])
    try:
        assert set(plugins.load_entry_points()) == {"mine", "mod"}
        plugins.load_entry_points()
        import ep_plugin  # type: ignore[import-not-found]

        assert ep_plugin.CALLS == [1]  # "module:function" called once; a module entry point imported
        found.append(metadata.EntryPoint("bad", "ep_plugin:missing", plugins.ENTRY_POINT_GROUP))
        with pytest.raises(plugins.PluginError, match="entry point 'bad' = 'ep_plugin:missing'.*COMPSEARCH_NO_ENTRY_POINTS"):
            plugins.load_entry_points()
        monkeypatch.setenv(plugins.NO_ENTRY_POINTS_ENV, "1")
        assert "bad" not in plugins.load_entry_points()
    finally:
        sys.modules.pop("ep_plugin", None)
