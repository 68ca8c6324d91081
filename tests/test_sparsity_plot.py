"""grouppruner.plot: gamma histograms per layer group, written as PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from grouppruner.plot import gamma_histograms
from grouppruner.sparsity import BNSparsity


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 16, 3),
        nn.BatchNorm2d(16),
        nn.Conv2d(16, 4, 1),
        nn.BatchNorm2d(4),
    )


@pytest.mark.slow
def test_png_with_one_panel_per_layer_group(tmp_path: Path) -> None:
    sparsity = BNSparsity(_model(), schedule=1e-3, layer_groups=lambda name: f"layer{name}")
    before = sparsity.gammas()
    after = {name: g * torch.linspace(0.0, 1.0, g.numel()) for name, g in before.items()}
    path = tmp_path / "plots" / "gammas.png"
    fig = gamma_histograms({"before": before, "after": after}, path, columns=2, threshold=0.01)
    assert [ax.get_title() for ax in fig.axes] == ["layer1", "layer3", "layer5"]
    # both snapshots and the labelled threshold line in every panel's legend, which lies beside the data
    fig.canvas.draw()
    for ax in fig.axes:
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts[-1] == "|gamma| = 0.01" and [t.split(" (")[0] for t in texts[:2]] == ["before", "after"]
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 600)  # 2 columns x 2 rows of 4x3 in at 100 dpi
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed, none left behind


def test_single_snapshot_and_sparsity_object() -> None:
    sparsity = BNSparsity(_model(), schedule=1e-3)
    fig = gamma_histograms(sparsity)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "all"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["gamma (28 ch)"]
    assert len(gamma_histograms(sparsity.gammas()).axes) == 1


def test_mismatched_snapshots_are_rejected() -> None:
    with pytest.raises(ValueError, match="snapshot 'b'"):
        gamma_histograms({"a": {"g1": torch.ones(3)}, "b": {"g2": torch.ones(3)}})
    with pytest.raises(ValueError, match="no snapshot"):
        gamma_histograms({})
