"""Protocols (online / episodic / single), corruption streams, and test-batch BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tta_support import SIZE, small_bn_cnn

from shiftlab.data.shifts import apply_shift
from shiftlab.data.tensors import TensorData
from shiftlab.errors import RecipeError
from shiftlab.losses.entropy import marginal_entropy, soft_cross_entropy
from shiftlab.methods import base, create_method
from shiftlab.methods.tta import BatchNormAdapter, StreamSegment, corruption_stream, run_protocol


class Recorder(base.TestTimeMethod):
    """Predicts class 0 and records the calls it receives."""

    Hparams = object

    def __init__(self) -> None:
        super().__init__(nn.Linear(1, 1), 10, None)  # type: ignore[arg-type]
        self.calls: list[tuple[str, int]] = []

    def forward_and_adapt(self, x: Tensor) -> Tensor:
        self.calls.append(("adapt", x.shape[0]))
        return F.one_hot(torch.zeros(x.shape[0], dtype=torch.long), 10).float()

    def reset(self) -> None:
        self.calls.append(("reset", 0))


def _stream() -> list[StreamSegment]:
    y = torch.tensor([0, 0, 1, 0, 2])
    return [StreamSegment("a", torch.rand(5, 1, 4, 4), y), StreamSegment("b", torch.rand(3, 1, 4, 4), y[:3])]


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ("online", [("reset", 0), ("adapt", 2), ("adapt", 2), ("adapt", 1), ("adapt", 2), ("adapt", 1)]),
        ("episodic", [("reset", 0)] + [("reset", 0), ("adapt", 2)] * 2 + [("reset", 0), ("adapt", 1)]
         + [("reset", 0), ("adapt", 2), ("reset", 0), ("adapt", 1)]),
        ("single", [("reset", 0)] + [("reset", 0), ("adapt", 1)] * 8),
    ],
)
def test_protocols_reset_and_batch_as_specified(protocol: str, expected: list) -> None:
    rec = Recorder()
    res = run_protocol(rec, _stream(), protocol, batch_size=2)  # type: ignore[arg-type]
    assert rec.calls == expected
    assert res.n == 8 and res.batch_size == (1 if protocol == "single" else 2)
    assert res.per_segment == {"a": pytest.approx(3 / 5), "b": pytest.approx(2 / 3)}
    assert res.accuracy == pytest.approx(5 / 8) and res.error == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="unknown protocol"):
        run_protocol(rec, _stream(), "continual")  # type: ignore[arg-type]


def test_online_tent_carries_state_episodic_does_not() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, SIZE, SIZE, generator=g)
    stream = [StreamSegment("s", x, torch.zeros(64, dtype=torch.long))]
    tent = create_method("tent", backbone=small_bn_cnn(), num_classes=10)
    source = {k: v.clone() for k, v in tent.state_dict().items()}
    run_protocol(tent, stream, "episodic", 32)
    episodic_state = {k: v.clone() for k, v in tent.state_dict().items()}
    tent.reset()
    tent.forward_and_adapt(x[32:])  # one step from the source on the last batch only
    assert all(torch.equal(tent.state_dict()[k], episodic_state[k]) for k in source)
    run_protocol(tent, stream, "online", 32)  # two consecutive steps
    assert any(not torch.equal(tent.state_dict()[k], episodic_state[k]) for k in source)


def test_corruption_stream_is_seeded_and_matches_apply_shift() -> None:
    x = (torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = TensorData(x, torch.arange(10) % 3, name="toy")
    s1 = corruption_stream(data, ["gaussian_noise", "contrast"], [1, 5], torch.Generator().manual_seed(3), limit=8)
    s2 = corruption_stream(data, ["gaussian_noise", "contrast"], [1, 5], torch.Generator().manual_seed(3), limit=8)
    assert [s.name for s in s1] == ["gaussian_noise-1", "gaussian_noise-5", "contrast-1", "contrast-5"]
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, data.y[:8]) for a, b in zip(s1, s2, strict=True))
    ref = apply_shift("gaussian_noise", data.float_x(slice(0, 8)), 1, torch.Generator().manual_seed(3))
    assert torch.equal(s1[0].x, ref)
    # severity 5 changes the images more than severity 1
    clean = data.float_x(slice(0, 8))
    assert (s1[3].x - clean).abs().mean() > (s1[2].x - clean).abs().mean()


def test_batchnorm_adapter_statistics_and_gradients() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    bn.eval()
    net = nn.Sequential(bn)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    eval_out = net(x)
    adapter = BatchNormAdapter(net, strength=0.0)
    stats_before = (bn.running_mean.clone(), bn.running_var.clone())
    ref = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)  # Tent's BatchNorm
    assert torch.allclose(net(x), ref, atol=1e-6)
    assert torch.equal(bn.running_mean, stats_before[0]) and torch.equal(bn.running_var, stats_before[1])
    # prior N = 16, n = 4: w = 16/20 on the source statistics (Schneider et al. 2020, eq. 2)
    adapter.strength = 16.0
    w = 0.8
    mu = w * bn.running_mean + (1 - w) * x.mean(dim=(0, 2, 3))
    var = w * bn.running_var + (1 - w) * x.var(dim=(0, 2, 3), unbiased=False)
    manual = F.batch_norm(x, mu, var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert torch.allclose(net(x), manual, atol=1e-5)
    adapter.strength = 1e9  # an overwhelming prior is the source model
    assert torch.allclose(net(x), eval_out, atol=1e-4)
    adapter.active = False
    assert torch.equal(net(x), eval_out)
    adapter.active, adapter.strength = True, 0.0
    xg = x.clone().requires_grad_(True)
    net(xg).sum().backward()  # gradients flow through the batch statistics
    assert xg.grad is not None and xg.grad.abs().max() < 1e-4  # d/dx sum(BN(x)) = 0 per channel
    adapter.remove()
    assert "forward" not in bn.__dict__ and torch.equal(net(x), eval_out)
    with pytest.raises(RecipeError, match="has none"):
        BatchNormAdapter(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_marginal_entropy_and_soft_cross_entropy() -> None:
    confident_same = torch.tensor([[10.0, 0.0], [10.0, 0.0]])
    confident_split = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert marginal_entropy(confident_same) < 1e-3
    assert marginal_entropy(confident_split) == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-3)
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    p_bar = torch.softmax(logits, 1).mean(0)
    assert marginal_entropy(logits) == pytest.approx(-(p_bar * p_bar.log()).sum().item(), rel=1e-5)
    student = logits.clone().requires_grad_(True)
    ce = soft_cross_entropy(student, logits)
    ent = -(torch.softmax(logits, 1) * torch.log_softmax(logits, 1)).sum(1)
    assert torch.allclose(ce, ent, atol=1e-6)  # CE to itself is the entropy
    ce.sum().backward()
    assert student.grad is not None
