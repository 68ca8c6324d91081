"""The data-parallel helpers in one process: identities, the augmentation stream, the environment.

The multi-process behaviour (equality with one process) is tested in ``test_recipe_ddp.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from grouppruner.detection import VOCDetection, collate, make_synthetic_voc
from grouppruner.detection.synthetic import SYNTHETIC_CLASSES
from grouppruner.recipe.distributed import Distributed, RankShard


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("voc")
    make_synthetic_voc(folder, 8, image_size=48, seed=3, split_fractions=(1.0, 0.0, 0.0))
    return folder


def _augmented(root: Path, seed: int) -> VOCDetection:
    generator = torch.Generator().manual_seed(seed)
    return VOCDetection(root, "train", 48, augment=True, classes=SYNTHETIC_CLASSES, generator=generator)


def test_skip_draws_the_numbers_that_loading_would(root: Path) -> None:
    loaded, skipping = _augmented(root, 5), _augmented(root, 5)
    items = [loaded[i] for i in range(4)]
    skipping.skip(0)
    second = skipping[1]
    skipping.skip(2)
    fourth = skipping[3]
    for (image, target), (ref_image, ref_target) in ((second, items[1]), (fourth, items[3])):
        assert torch.equal(image, ref_image)
        assert torch.equal(target["boxes"], ref_target["boxes"])
    # Without skip(), the later items would get other augmentations.
    assert not torch.equal(_augmented(root, 5)[1][0], items[0][0])


def test_rank_shard_of_one_process_yields_the_plain_batches(root: Path) -> None:
    def batches(dataset: object) -> list[torch.Tensor]:
        loader = DataLoader(
            dataset,  # type: ignore[arg-type]
            batch_size=3,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(1),
        )
        return [images for images, _ in loader]

    plain = batches(_augmented(root, 2))
    sharded = batches(RankShard(_augmented(root, 2), Distributed()))
    assert [b.shape[0] for b in sharded] == [3, 3, 2]
    assert all(torch.equal(a, b) for a, b in zip(plain, sharded, strict=True))


def test_one_process_is_the_identity() -> None:
    distributed = Distributed()
    assert (distributed.rank, distributed.world_size, distributed.active, distributed.is_main) == (0, 1, False, True)
    assert distributed.shard(5) == slice(0, 5)
    x = torch.randn(4, 3, requires_grad=True)
    assert distributed.gather(x) is x
    mean = x.mean()
    assert distributed.batch_mean(mean, 4) is mean
    targets = [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1, dtype=torch.int64)}]
    assert distributed.gather_targets(targets) == targets
    module = nn.Conv2d(3, 4, 1)
    assert distributed.wrap(module) is module
    bn = nn.BatchNorm2d(4)
    with distributed.synchronized_batchnorm(nn.Sequential(bn)):
        assert type(bn) is nn.BatchNorm2d
    distributed.barrier()
    distributed.check_same({"plan": 1}, "the plan")


def test_several_processes_need_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="process group"):
        Distributed(1, 2)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        Distributed(2, 2)


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = Distributed.from_environment(torch.device("cpu"))
    assert not single.active and single.device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE, RANK and LOCAL_RANK must be integers"):
        Distributed.from_environment(torch.device("cpu"))
