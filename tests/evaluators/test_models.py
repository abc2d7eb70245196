"""Models: built-ins, timm by name, checkpoints, base-model training, weight hashing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compsearch.errors import (
    ConfigError,
    DataError,
    DuplicateNameError,
    ModelError,
    UnknownNameError,
)
from compsearch.evaluators.datasets import load_dataset
from compsearch.evaluators.models import (
    build_model,
    list_models,
    model_hash,
    register_model,
    train_base_model,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("in_chans", "num_classes"), [(1, 10), (3, 5)])
def test_builtin_forward_shapes(name: str, in_chans: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, in_chans=in_chans)
    assert not model.training  # built in eval mode
    out = model(torch.randn(4, in_chans, 8, 8))
    assert out.shape == (4, num_classes)


def test_builtin_parameter_counts_by_hand() -> None:
    # digits_cnn: conv 1->16 (16*9+16=160), conv 16->32 (32*16*9+32=4640),
    # conv 32->32 (32*32*9+32=9248), linear 128->64 (8256), linear 64->10 (650).
    cnn = build_model("digits_cnn", num_classes=10)
    assert sum(p.numel() for p in cnn.parameters()) == 160 + 4640 + 9248 + 8256 + 650
    # digits_mlp: 64->128 (8320), 128->64 (8256), 64->10 (650).
    mlp = build_model("digits_mlp", num_classes=10)
    assert sum(p.numel() for p in mlp.parameters()) == 8320 + 8256 + 650
    assert build_model("digits_cnn", num_classes=10, width=8)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_digits_cnn_accepts_resized_input() -> None:
    model = build_model("digits_cnn", num_classes=10, in_chans=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # adaptive pooling to 2x2


def test_timm_model_by_name() -> None:
    model = build_model("resnet18", num_classes=10, in_chans=3)
    assert model.get_classifier().out_features == 10
    assert model.conv1.in_channels == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pretrained_rejected() -> None:
    with pytest.raises(ConfigError, match=r"pretrained=True is not supported.*never downloads.*checkpoint="):
        build_model("resnet18", num_classes=10, pretrained=True)


def test_unknown_names_and_options() -> None:
    with pytest.raises(UnknownNameError, match=r"'resnt18' is neither a built-in model.*'digits_cnn'.*'resnet18'"):
        build_model("resnt18", num_classes=10)
    with pytest.raises(TypeError, match=r"build_model\('digits_cnn'\) got unexpected keyword argument\(s\) \['depth'\]"):
        build_model("digits_cnn", num_classes=10, depth=3)
    with pytest.raises(ConfigError, match="num_classes=0 must be an integer >= 1"):
        build_model("digits_cnn", num_classes=0)
    with pytest.raises(DuplicateNameError, match="'digits_cnn' is already registered"):
        register_model("digits_cnn")(lambda **kw: None)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_model("digits_mlp", num_classes=10)
    path = tmp_path / "mlp.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build_model("digits_mlp", num_classes=10, checkpoint=path)
    assert model_hash(loaded) == model_hash(source)
    with pytest.raises(ModelError, match=r"checkpoint=.*mlp.pt.* does not fit the model"):
        build_model("digits_cnn", num_classes=10, checkpoint=path)
    with pytest.raises(ModelError, match=r"checkpoint=.*missing.pt.* does not exist"):
        build_model("digits_mlp", num_classes=10, checkpoint=tmp_path / "missing.pt")


def test_model_hash_tracks_every_weight() -> None:
    torch.manual_seed(0)
    a = build_model("digits_mlp", num_classes=10)
    torch.manual_seed(0)
    b = build_model("digits_mlp", num_classes=10)
    assert model_hash(a) == model_hash(b) and len(model_hash(a)) == 64
    with torch.no_grad():
        b.layers[3].weight[0, 0] += 1e-6
    assert model_hash(a) != model_hash(b)


def test_train_base_model_learns_and_is_deterministic(digits) -> None:
    hashes, accs = [], []
    for _ in range(2):
        torch.manual_seed(123)  # same init; training randomness comes from seed=
        model = build_model("digits_mlp", num_classes=10)
        result = train_base_model(model, digits, steps=200, lr=3e-3, seed=7)
        hashes.append(model_hash(model))
        accs.append(result["val_accuracy"])
    assert hashes[0] == hashes[1] and accs[0] == accs[1]
    assert accs[0] > 0.9  # chance is 0.1
    assert result["steps"] == 200 and not model.training


def test_train_base_model_leaves_global_rng_alone(digits) -> None:
    model = build_model("digits_mlp", num_classes=10)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_base_model(model, digits, steps=5, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_train_base_model_epochs_count(digits) -> None:
    # 1079 train samples, batch 100 -> ceil(1079 / 100) = 11 batches per epoch; 0.5 epoch -> 6.
    result = train_base_model(build_model("digits_mlp", num_classes=10), digits, epochs=0.5, batch_size=100)
    assert result["steps"] == 6


def test_train_base_model_rejects_data_that_does_not_fit(digits) -> None:
    big = load_dataset("digits", size=16)
    with pytest.raises(DataError, match=r"sample shape \(1, 16, 16\) does not fit model DigitsMLP.*resize the data"):
        train_base_model(build_model("digits_mlp", num_classes=10), big, steps=1)
    with pytest.raises(DataError, match=r"expected \(2, 10\); build the model with num_classes=10"):
        train_base_model(build_model("digits_mlp", num_classes=3), digits, steps=1)
    with pytest.raises(ConfigError, match=r"steps=0 must be an integer >= 1"):
        train_base_model(build_model("digits_mlp", num_classes=10), digits, steps=0)
