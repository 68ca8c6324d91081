"""Optional: real timm architectures (``pretrained=False``), run in CI's second environment (``-m libraries``).

Each model is traced at 64x64, planned to 0.6 of its parameters and pruned; outputs keep their shapes. The reach
test plans 0.5 of the parameters and counts the convs that shrink; every conv that keeps its width is one that
``ChannelGraph.fixed_convs`` names, with its reason.
"""

from __future__ import annotations

import pytest
import torch

from grouppruner.graph import ChannelGraph
from grouppruner.pruning import GroupPruner
from reach import assert_reach, measure_reach

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.libraries

ARCHS = [
    "cspdarknet53",
    "cspresnet50",
    "ghostnet_100",
    "efficientnet_lite0",
    "rexnet_100",
    "dla34",
    "convnext_atto",
    "resnext50_32x4d",
    "regnety_004",
    "mobilenetv3_small_100",
    "shufflenet_v2_x1_0",
]

# arch -> (at least this many convs shrink, of this many convs)
REACH = {
    # CrossStage splits with a constant size (x.split(self.expand_chs // 2)): its stream stays whole
    "cspdarknet53": (39, 67),
    "hrnet_w18_small": (91, 91),
    # LinearSelfAttention splits qkv with constant sizes ([1, embed_dim, embed_dim]); F.unfold into patches
    "mobilevitv2_050": (34, 64),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_timm_prunes_to_0_6(arch: str) -> None:
    if arch not in timm.list_models():
        pytest.skip(f"{arch} not in this timm version")
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    shape = model(x).shape
    graph = ChannelGraph(model, x)
    pruner = GroupPruner(graph)
    pruner.apply(pruner.plan(target_params=0.6))
    assert model(x).shape == shape


@pytest.mark.parametrize("arch", sorted(REACH))
def test_timm_reach_at_half_the_parameters(arch: str) -> None:
    if arch not in timm.list_models():
        pytest.skip(f"{arch} not in this timm version")
    torch.manual_seed(0)
    reach = measure_reach(timm.create_model(arch, pretrained=False), torch.randn(1, 3, 64, 64))
    assert_reach(reach, *REACH[arch])
