"""CompressionEvaluator passes the shipped EvaluatorContract on the digits CNN and on a Conv1d model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compsearch.evaluators import CompressionEvaluator, FineTuneConfig, build_model, load_dataset
from compsearch.testing import EvaluatorContract


def _conv1d_data():
    data = load_dataset("synthetic", n=256, num_classes=3, shape=(2, 16), seed=0)
    model = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 6, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 3))
    return model, data


@pytest.fixture(scope="module", params=["digits_cnn", "conv1d"])
def evaluator(request):
    torch.manual_seed(0)
    if request.param == "conv1d":
        model, data = _conv1d_data()
    else:
        data = load_dataset("digits", seed=0)
        model = build_model("digits_cnn", num_classes=10, in_chans=1)
    return CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=5), device="cpu")


class TestCompressionEvaluator(EvaluatorContract):
    pass
