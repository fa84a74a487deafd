"""AdaBN evaluation: BatchNorm layers take the statistics of given images, then are restored."""

from __future__ import annotations

import torch
from torch import nn

from shiftlab.data.tensors import TensorData
from shiftlab.experiment.bn_stats import population_batchnorm


def _images(n: int, shift: float, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, 8, 8, generator=g) * 0.5 + shift).clamp(0, 1)
    return TensorData(x=(x * 255).round().to(torch.uint8), y=torch.zeros(n, dtype=torch.long))


def test_batchnorm_holds_the_images_statistics_inside_and_its_own_after() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.LazyLinear(2))
    net(torch.rand(2, 3, 8, 8))
    bn = net[1]
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(7.0)
    bn.num_batches_tracked.fill_(11)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    data = _images(300, 0.4, 0)
    with torch.no_grad():
        conv = net[0](data.x.float() / 255)
    with population_batchnorm(net, data, batch_size=100, device=torch.device("cpu"), max_images=300) as n:
        assert n == 1 and not bn.training and not net[3].training
        # mean over the 3 batches of the per-batch channel means = the population mean
        assert torch.allclose(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
        per_batch = torch.stack([conv[i:i + 100].var(dim=(0, 2, 3)) for i in range(0, 300, 100)])
        # per-batch unbiased variances over the 100 x 6 x 6 values of a channel
        unbiased = per_batch * (3600 / 3599)
        assert torch.allclose(bn.running_var, unbiased.mean(0), rtol=1e-3)
        assert bn.running_mean.sub(3.0).abs().min() > 1.0
    assert net.training and bn.training and bn.momentum == 0.1
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_only_the_first_max_images_are_read_and_nets_without_batchnorm_are_left_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    dark, bright = _images(50, 0.0, 1), _images(50, 0.5, 2)
    both = TensorData(x=torch.cat([dark.x, bright.x]), y=torch.cat([dark.y, bright.y]))
    with population_batchnorm(net, both, 50, torch.device("cpu"), max_images=50):
        first = net[1].running_mean.clone()
    with population_batchnorm(net, dark, 50, torch.device("cpu")):
        assert torch.allclose(net[1].running_mean, first)
    plain = nn.Sequential(nn.Conv2d(3, 2, 1))
    with population_batchnorm(plain, both, 50, torch.device("cpu")) as n:
        assert n == 0
