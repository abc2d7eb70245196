"""NNI's channel-pruning metrics as compsearch importance criteria (``nni-l1``, ``nni-l2``,
``nni-fpgm``; registered in :mod:`compsearch.evaluators.masks`).

NNI is imported on first use only. The metric is NNI's own code: its pruner is built on
a one-layer stand-in holding the weight (rows = output channels, flattened, which is how
NNI scores a convolution's filters too) and asked for its metrics; no mask of NNI's is
used, so the kept count follows compsearch's exact rounding.
"""

from __future__ import annotations

import torch

PRUNERS = ("L1NormPruner", "L2NormPruner", "FPGMPruner")


def nni_channel_metric(pruner: str, weight: torch.Tensor) -> torch.Tensor:
    """NNI's importance of every output channel of ``weight`` (``out x ...``), shape ``out``.

    Args:
        pruner: one of :data:`PRUNERS`.
        weight: any layer's weight; axis 0 = output channels.

    Raises:
        ImportError: NNI is not installed.
        ValueError: unknown ``pruner``.
    """
    if pruner not in PRUNERS:
        raise ValueError(f"pruner={pruner!r} is not supported; choose one of {list(PRUNERS)}")
    try:
        from nni.compression import pruning
    except ImportError as e:
        raise ImportError(f"the nni-* criteria need NNI ({e}); install it with: pip install \"compsearch[nni]\"") from None
    rows = weight.detach().reshape(weight.shape[0], -1).float().cpu()
    layer = torch.nn.Linear(rows.shape[1], rows.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(rows)
    stand_in = torch.nn.Sequential(layer)
    nni_pruner = getattr(pruning, pruner)(stand_in, [{"op_names": ["0"], "sparse_ratio": 0.5}])
    try:
        metrics = nni_pruner._calculate_metrics(nni_pruner._collect_data())
    finally:
        nni_pruner.unwrap_model()
    return metrics["0"]["weight"].reshape(-1)
