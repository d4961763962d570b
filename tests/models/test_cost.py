"""models.cost: the one measurement of parameters, FLOPs, weight size and CPU latency, checked on
a model whose numbers can be worked out by hand."""

from __future__ import annotations

import torch
from torch import nn

from fetalplanes.models import cost


def _tiny() -> nn.Module:
    # conv 3->4, 3x3, padding 1 on 8x8: 4*3*9 weights + 4 biases; linear 4->2: 8 + 2
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def test_param_counts_total_and_trainable() -> None:
    model = _tiny()
    assert cost.param_counts(model) == {"total": 4 * 3 * 9 + 4 + 4 * 2 + 2, "trainable": 4 * 3 * 9 + 4 + 4 * 2 + 2}
    model[0].requires_grad_(False)
    assert cost.param_counts(model) == {"total": 122, "trainable": 10}


def test_flops_are_two_per_multiply_accumulate_of_conv_and_matmul() -> None:
    # conv: 8*8 outputs x 4 channels x (3*3*3) MACs; linear: 4*2 MACs (pooling and bias not counted)
    assert cost.flops_per_image(_tiny(), 8) == 2 * (8 * 8 * 4 * 27 + 4 * 2)
    assert cost.flops_per_image(_tiny(), 16) == 2 * (16 * 16 * 4 * 27 + 4 * 2)


def test_weights_bytes_hold_every_parameter() -> None:
    model = _tiny()
    n = cost.weights_bytes(model)
    assert n > 122 * 4  # float32 values plus torch.save's container
    assert n == cost.weights_bytes(model)


def test_latency_runs_and_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    times = cost.latency_ms(_tiny(), 8, runs=3, threads=1)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert torch.get_num_threads() == before
    assert len(cost.latency_ms(_tiny(), 8, runs=0)) == 1


def test_the_classifier_counts_through_the_cost_module() -> None:
    from fetalplanes.models import create_model

    model = create_model("paper_lite0", 6, pretrained=False, finetune="frozen")
    assert model.param_counts() == cost.param_counts(model)
    assert 0 < model.param_counts()["trainable"] < model.param_counts()["total"]
