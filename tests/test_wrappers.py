import pytest
import torch
from torch import nn

from grouppruner._utils.wrappers import unwrap


class HasModuleChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Conv2d(3, 4, 1)  # a user's own child that happens to be called "module"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


@pytest.mark.slow
def test_unwrap_sees_through_dataparallel_and_compile_but_not_user_children():
    net = HasModuleChild()
    assert unwrap(net) is net
    assert unwrap(nn.DataParallel(net)) is net
    compiled = torch.compile(net)
    assert unwrap(compiled) is net
    assert unwrap(nn.DataParallel(compiled)) is net
