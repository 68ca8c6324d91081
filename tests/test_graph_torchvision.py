"""Optional: real torchvision architectures (``weights=None``), run in CI's second environment (``-m libraries``).

Reach at 64x64: ``plan(target_params=0.5)`` with the default pruner shrinks at least the listed number of convs;
every conv that keeps its width is one that ``ChannelGraph.fixed_convs`` names, with its reason.
"""

from __future__ import annotations

import pytest
import torch

from reach import assert_reach, measure_reach

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.libraries

# arch -> (at least this many convs shrink, of this many convs)
REACH = {
    "resnext50_32x4d": (53, 53),
    "regnet_y_400mf": (84, 85),  # the one whole conv: an 8-channel squeeze-excitation fc1 at min_channels=8
    # the channel shuffle is pruned through; the 10 whole convs are stage3, where the chunk and the shuffle together
    # tie every position into one unit
    "shufflenet_v2_x0_5": (46, 56),
}


@pytest.mark.parametrize("arch", sorted(REACH))
def test_torchvision_reach_at_half_the_parameters(arch: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    reach = measure_reach(model, torch.randn(1, 3, 64, 64))
    assert_reach(reach, *REACH[arch])
