"""NNI's pruning metrics as criteria: they agree with ours where they should, FPGM by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compsearch.errors import ConfigError
from compsearch.evaluators import CompressionEvaluator, FineTuneConfig
from compsearch.evaluators.masks import compute_mask, get_criterion, list_criteria
from compsearch.evaluators.types import DataSplits
from compsearch.spaces import Policy, UnitPolicy

pytest.importorskip("nni", reason="NNI is optional (pip install 'compsearch[nni]')")


def _channels(mask: torch.Tensor | None) -> list[int]:
    assert mask is not None
    return mask.reshape(mask.shape[0], -1)[:, 0].int().tolist()


def test_nni_criteria_are_registered_channel_only() -> None:
    assert {"nni-l1", "nni-l2", "nni-fpgm"} <= set(list_criteria())
    assert all(get_criterion(n).channel_only for n in ("nni-l1", "nni-l2", "nni-fpgm"))
    assert not get_criterion("l1").channel_only


@pytest.mark.parametrize("shape", [(12, 3, 3, 3), (10, 7), (6, 1, 3, 3)])
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75, 1 / 3])
def test_nni_l1_and_l2_keep_the_same_channels_as_ours(shape: tuple[int, ...], keep: float) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    for ours, theirs in (("l1", "nni-l1"), ("l2", "nni-l2")):
        a = compute_mask(weight, keep=keep, structure="channel", criterion=ours)
        b = compute_mask(weight, keep=keep, structure="channel", criterion=theirs)
        assert _channels(a) == _channels(b), (ours, shape, keep)


def test_nni_l1norm_pruner_itself_prunes_the_channels_we_prune(tiny_cnn: nn.Module) -> None:
    from nni.compression.pruning import L1NormPruner

    convs = {name: m.weight.detach().clone() for name, m in tiny_cnn.named_modules() if isinstance(m, nn.Conv2d)}
    pruner = L1NormPruner(tiny_cnn, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert sorted(masks) == sorted(convs) == ["0", "2", "4"]
    for name, weight in convs.items():  # 8 filters each: NNI prunes int(8 * 0.5) = 4, we keep round(4) = 4
        ours = compute_mask(weight, keep=0.5, structure="channel", criterion="l1")
        assert _channels(ours) == masks[name]["weight"][:, 0, 0, 0].int().tolist(), name
        assert sum(_channels(ours)) == 4


def test_fpgm_prunes_the_filter_nearest_the_geometric_median() -> None:
    from compsearch.evaluators.nni_criteria import nni_channel_metric

    # filters (one weight each) 0, 1, 10: summed distances to the others 1+10=11, 1+9=10, 10+9=19
    weight = torch.tensor([[0.0], [1.0], [10.0]])
    assert nni_channel_metric("FPGMPruner", weight).tolist() == [11.0, 10.0, 19.0]
    assert _channels(compute_mask(weight, keep=2 / 3, structure="channel", criterion="nni-fpgm")) == [1, 0, 1]
    assert _channels(compute_mask(weight, keep=2 / 3, structure="channel", criterion="l1")) == [0, 1, 1]


def test_nni_criteria_refuse_unstructured_pruning() -> None:
    with pytest.raises(ConfigError, match="criterion 'nni-l1' scores whole channels only, but structure='unstructured'"):
        compute_mask(torch.randn(4, 4), keep=0.5, structure="unstructured", criterion="nni-l1")


def test_evaluator_prunes_with_nni_fpgm(tiny_cnn: nn.Module, tiny_data: DataSplits) -> None:
    ev = CompressionEvaluator(tiny_cnn, tiny_data, finetune=FineTuneConfig(steps=2, batch_size=16), criterion="nni-fpgm")
    result = ev.evaluate(Policy({"4": UnitPolicy(keep=0.5, structure="channel")}))
    rows = ev.effective_weights()["4"].reshape(8, -1)
    assert int((rows.abs().sum(dim=1) == 0).sum()) == 4  # 4 of 8 filters removed, and kept removed after fine-tuning
    assert 0.0 <= result.accuracy <= 1.0
