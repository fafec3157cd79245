"""FedNova (emfl.nn.algorithms.fednova) against a float64 replay by hand: two clients of 3 and 12
examples with batch 3 take 1 and 4 local steps, so normalised averaging and FedAvg's part ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from emfl.nn import models
from emfl.nn.config import RunConfig
from emfl.nn.engine import Engine
from emfl.nn.seeding import ClientJob
from emfl.nn.state import load_state_vector, state_vector

from nn_helpers import tiny_federation


class _Softmax(torch.nn.Module):
    """Multinomial logistic regression on 4x4 images: 16 x 3 + 3 = 51 parameters."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


@pytest.mark.numeric
def test_fednova_against_a_replay_by_hand(monkeypatch):
    monkeypatch.setitem(models.MODELS, "softmax", _Softmax)
    sizes = (3, 12)
    data = tiny_federation(clients=2, n=12, m=4, shape=(1, 4, 4), classes=3)
    data.train_x = [x[:n] for x, n in zip(data.train_x, sizes)]
    data.train_y = [y[:n] for y, n in zip(data.train_y, sizes)]
    e = Engine(RunConfig(algo="fednova", model="softmax", rounds=1, clients_per_round=2, batch_size=3, client_lr=0.1,
                         server_opt="sgd", server_lr=1.0, precision="float64"), data)
    w0 = e.w.clone()
    info = e.run_round()

    # the replay: plain SGD on each client's minibatches, in the engine's order for (seed 0, round 0, s)
    ends, steps = {}, {}
    for s in range(2):
        model = _Softmax((1, 4, 4), 3).double()
        load_state_vector(model, w0)
        steps[s] = 0
        for x, y in e.batches(s, ClientJob(0, 0, s).gen):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= 0.1 * g
            steps[s] += 1
        ends[s] = state_vector(model)
    assert steps == {0: 1, 1: 4}  # unequal local work: the case FedNova is for
    p = {0: 3 / 15, 1: 12 / 15}  # p_s = n_s / sum n
    tau_eff = 3 / 15 * 1 + 12 / 15 * 4  # 3.4
    d = {s: (w0 - ends[s]) / steps[s] for s in range(2)}
    expected = w0 - tau_eff * (p[0] * d[0] + p[1] * d[1])
    assert info["tau_eff"] == pytest.approx(3.4, rel=1e-12)
    assert torch.allclose(e.w, expected, rtol=0, atol=1e-12)
    # FedAvg weighted by examples, w0 - sum_s p_s (w0 - w_s), is another point: normalising matters here
    fedavg = w0 - (p[0] * (w0 - ends[0]) + p[1] * (w0 - ends[1]))
    assert (e.w - fedavg).abs().max() > 1e-4
    assert e.bytes_up == 2 * (8 * 51 + 4 + 4)  # the update in float64, n_s and tau_s as 4-byte counts
