"""CompressionEvaluator passes the shipped EvaluatorContract on the digits CNN, a Conv1d model and a
transformer layer whose attention and MLP weights are used functionally."""

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


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.embed(x.transpose(1, 2))).mean(1))


@pytest.fixture(scope="module", params=["digits_cnn", "conv1d", "functional"])
def evaluator(request):
    torch.manual_seed(0)
    if request.param == "conv1d":
        model, data = _conv1d_data()
    elif request.param == "functional":
        model, data = _Encoder(), load_dataset("synthetic", n=256, num_classes=3, shape=(4, 8), seed=0)
    else:
        data = load_dataset("digits", seed=0)
        model = build_model("digits_cnn", num_classes=10, in_chans=1)
    return CompressionEvaluator(model, data, finetune=FineTuneConfig(steps=5), device="cpu")


class TestCompressionEvaluator(EvaluatorContract):
    pass
