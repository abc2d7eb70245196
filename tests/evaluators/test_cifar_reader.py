"""The CIFAR-10 reader unpickles nothing but data: a crafted batch file runs no code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compsearch.errors import DataError
from compsearch.evaluators.datasets import read_cifar_batch


class _Runs:
    """Unpickles to ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_real_batch_layout_reads_in_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 9], b"data": data,
             b"filenames": [b"a.png", b"b.png"]}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    images, labels = read_cifar_batch(tmp_path / "data_batch_1")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [3, 9]
    assert images[0, 1, 0, 0] == 1024 % 256  # channel-major: green starts at byte 1024


@pytest.mark.parametrize("payload", ["reduce", "object array", "eval"])
def test_a_crafted_batch_is_refused_and_runs_nothing(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    evil: Any = _Runs(f"touch {marker}")
    content: Any = {
        "reduce": {b"data": evil, b"labels": [0]},
        "object array": {b"data": np.array([evil], dtype=object), b"labels": [0]},
        "eval": {b"data": _Eval(f"open({str(marker)!r}, 'w')"), b"labels": [0]},
    }[payload]
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=r"refused global (posix|os|builtins)\.(system|eval)"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


class _Eval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (self.code,))
