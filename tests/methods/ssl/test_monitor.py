"""k-NN and linear-probe monitors on hand-made features."""

from __future__ import annotations

import math

import pytest
import torch

from shiftlab.backbones import create_backbone
from shiftlab.methods.ssl.monitor import extract_features, knn_accuracy, knn_predict, linear_probe


def test_weighted_knn_votes_by_exp_cosine_over_temperature() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    bank_y = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.6, 0.4]])
    assert knn_predict(bank, bank_y, query, k=2).tolist() == [0, 1, 0]
    # k = 5 with a flat temperature: class 1 has three voters and wins the ambiguous query
    assert knn_predict(bank, bank_y, query[2:], k=5, temperature=100.0).tolist() == [1]
    # hand-computed weighted vote for the ambiguous query with k = 5, T = 0.5
    q = query[2] / query[2].norm()
    s = torch.nn.functional.normalize(bank, dim=1) @ q
    w0 = sum(math.exp(s[i].item() / 0.5) for i in (0, 1))
    w1 = sum(math.exp(s[i].item() / 0.5) for i in (2, 3, 4))
    assert knn_predict(bank, bank_y, query[2:], k=5, temperature=0.5).item() == int(w1 > w0)
    assert knn_accuracy(bank, bank_y, query[:2], torch.tensor([0, 1]), k=2) == 1.0
    with pytest.raises(ValueError):
        knn_predict(bank, bank_y[:3], query)


def test_linear_probe_separates_linearly_separable_features_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(4).repeat_interleave(50)
    x = centres[y] + torch.randn(200, 16, generator=g)
    y_test = torch.arange(4).repeat_interleave(25)
    x_test = centres[y_test] + torch.randn(100, 16, generator=g)
    a = linear_probe(x * 1000.0, y, x_test * 1000.0, y_test, steps=200)  # scale-free (standardised)
    b = linear_probe(x * 1000.0, y, x_test * 1000.0, y_test, steps=200)
    assert a.accuracy > 0.95 and a.train_accuracy > 0.95
    assert a.accuracy == b.accuracy and torch.equal(a.linear.weight, b.linear.weight)
    assert a.logits(x_test[:3] * 1000.0).shape == (3, 4)


def test_extract_features_runs_in_eval_mode_and_restores_the_flag() -> None:
    net = create_backbone("dann_cnn", in_chans=1, num_classes=0, image_size=16, norm=True)
    net.train()
    x = (torch.rand(10, 1, 16, 16) * 255).to(torch.uint8)
    f1 = extract_features(net, x, batch_size=4)
    f2 = extract_features(net, x[:3], batch_size=4)
    assert f1.shape == (10, net.num_features) and net.training
    torch.testing.assert_close(f1[:3], f2)  # eval mode: an image's features do not depend on its batch
