"""The readings of FedSparse that the paper leaves open (issue 26's calibration flags): each one
checked by hand or against a closed form, and each shown to change what it should."""

import math

import numpy as np
import pytest
import torch

from emfl.nn import gates
from emfl.nn.algorithms.fedsparse import T, regulariser_slope
from emfl.nn.engine import Engine
from emfl.nn.config import RunConfig
from emfl.nn.groups import GroupMap
from emfl.nn.algorithms.base import ClientResult
from emfl.nn.messages import Bundle, PerGroup
from emfl.nn.models import make_model
from emfl.nn.runner import load_task_data

from nn_helpers import tiny_federation


# ---------------------------------------------------------------- conv1 without gates
def test_an_ungated_layer_has_no_units_and_stays_dense():
    model = make_model("lenet5", (3, 32, 32), 10)
    full, bare = GroupMap(model), GroupMap(model, ungated=("conv1",))
    assert bare.num_groups == full.num_groups - 32 == 64 + 512
    assert [l.name for l in bare.layers] == ["conv2", "fc1"]
    assert bare.dense == full.dense + 32 * 76  # conv1's 32 x (3 x 5 x 5 + 1) values count as dense
    keep = torch.ones(bare.num_groups)
    keep[:64] = 0  # every conv2 filter off: conv2 and fc1's columns die, conv1 is untouched
    assert bare.values_on(keep) == 32 * 76 + 512 + 10 * 513  # conv1, fc1's biases, fc2
    assert bare.sparsity(keep)["alive_units"] == {"conv2": 0, "fc1": 512}
    with pytest.raises(ValueError, match="no gated layer named conv9: the layers with gates are conv1, conv2, fc1"):
        GroupMap(model, ungated=("conv9",))
    with pytest.raises(ValueError, match="leave at least one layer with gates"):
        GroupMap(model, ungated=("conv1", "conv2", "fc1"))


def test_fedsparse_with_conv1_ungated_never_prunes_it():
    data = tiny_federation(clients=4, n=16, m=4)
    e = Engine(RunConfig(algo="fedsparse", ungated="conv1", rounds=2, clients_per_round=2, batch_size=8), data)
    w0 = e.server["w"][:32 * 75].clone()
    e.server["v"][:32] = 50.0  # half of conv2's thresholds far above its norms: those filters are off
    info = e.run_round()
    assert set(info["alive_units"]) == {"conv2", "fc1"} and info["alive_units"]["conv2"] <= 32
    assert torch.count_nonzero(e.server["w"][:32 * 75]) == 32 * 75  # conv1's weights are still all there
    assert not torch.equal(e.server["w"][:32 * 75], w0)  # and still trained
    with pytest.raises(ValueError, match="no gated layer named conv0"):
        Engine(RunConfig(algo="fedsparse", ungated="conv0", rounds=1, clients_per_round=2), data)


# ---------------------------------------------------------------- theta without float32 saturation
def test_the_complement_of_theta_survives_in_logit_space():
    """At a margin of 20 T, 1 - sigmoid(20) is exactly 0 in float32; sigmoid(-20) = 2.06e-9.  A
    client that kept the gate on then pushes the threshold down by (1 - theta) sigmoid(v) / T."""
    norms, v = torch.tensor([0.5]), gates.softplus_inverse(torch.tensor([0.5 - 20 * T]))
    logit = gates.gate_logit(norms, v, T)
    assert float(logit) == pytest.approx(20.0, rel=1e-4)
    theta = torch.sigmoid(logit)
    assert float(theta) == 1.0  # saturated
    z = torch.tensor([1.0])
    assert float(gates.server_v_gradient(z, theta, v, T)) == 0.0
    exact = (1 / (1 + math.exp(float(logit)))) * (1 / (1 + math.exp(-float(v)))) / T
    got = float(gates.server_v_gradient(z, theta, v, T, one_minus_theta=torch.sigmoid(-logit)))
    assert got == pytest.approx(exact, rel=1e-5) and got > 0


def test_the_regulariser_slope_from_the_logit_is_not_clamped():
    """logit(theta) = 30: clamping theta to 1 - 1e-7 would give at most 16.1 (in float64); from the
    logit the slope is (lam0 |g| - 1e-4 * 30) / n_s exactly."""
    x = torch.tensor([30.0, -2.0], dtype=torch.float64)
    theta, sizes = torch.sigmoid(x), torch.tensor([10.0, 10.0], dtype=torch.float64)
    clamped = regulariser_slope(theta, sizes, lam0=1e-3, n_s=4)
    exact = regulariser_slope(theta, sizes, lam0=1e-3, n_s=4, logit=x)
    assert exact.tolist() == pytest.approx([(1e-2 - 3e-3) / 4, (1e-2 + 2e-4) / 4], rel=1e-12)
    assert float(clamped[0]) == pytest.approx((1e-2 - 1e-4 * math.log((1 - 1e-7) / 1e-7)) / 4, rel=1e-9)
    assert float(clamped[1]) == pytest.approx(float(exact[1]), rel=1e-12)  # unsaturated: the same


def test_the_cross_entropy_scale_is_a_setting():
    theta, sizes = torch.tensor([0.9], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    assert float(regulariser_slope(theta, sizes, 0.0, ce_scale=1.0)) == pytest.approx(-math.log(9), rel=1e-12)


# ---------------------------------------------------------------- the server's v-gradient from pi_s
def test_with_pi_uploads_the_thresholds_stand_still_where_theta_is_the_clients_mean():
    """Eq. 20: theta = mean_s pi_s is the stationary point of the gates' likelihood.  Clients whose
    pi_s average theta give a zero v-gradient (the thresholds do not move); binary samples z_s of
    the same pi_s do not."""
    data = tiny_federation(clients=4, n=16, m=4)
    cfg = dict(algo="fedsparse", lam0=0.0, rounds=1, clients_per_round=2, batch_size=8, precision="float64")
    moved = {}
    for v_grad in ("z", "pi"):
        e = Engine(RunConfig(v_grad=v_grad, **cfg), data)
        algo = e.algorithm
        theta = algo.theta(e.server["w"], e.server["v"])
        state, down = algo.server_message(e.server)
        results = []
        for shift in (+0.005, -0.005):  # pi_s = theta +- 0.005: their mean is theta
            pi = (theta + shift).clamp(0, 1)
            up = algo.upload(e.server["w"], pi, torch.Generator().manual_seed(len(results)))
            if v_grad == "pi":
                up = Bundle(w=up, pi=PerGroup(pi, down["w"].mask))
            results.append(ClientResult(up, 0.0, local=None, stats=(pi - theta).abs()))
        new, _ = algo.m_step(state, down, results)
        moved[v_grad] = float((new["v"] - state["v"]).abs().max())
    assert moved["pi"] < 1e-6 < 1e-3 < moved["z"], moved  # Adamax: a step of lr g / (|g| + 1e-8)


def test_pi_uploads_cost_one_value_per_surviving_unit():
    data = tiny_federation(clients=4, n=16, m=4)
    sent = {}
    for v_grad in ("z", "pi"):
        e = Engine(RunConfig(algo="fedsparse", v_grad=v_grad, rounds=1, clients_per_round=2, batch_size=8), data)
        e.server["v"][:16] = 50.0  # half of conv1 pruned: 608 - 16 units survive
        e.run_round()
        sent[v_grad] = e.bytes_up
    # the same samples z_s (same seeds), plus 4 bytes per surviving unit per client
    assert sent["pi"] - sent["z"] == 2 * 4 * (608 - 16)


# ---------------------------------------------------------------- the other settings
@pytest.mark.parametrize("bad, match", [
    (dict(theta0=1.0), "theta0 must be in \\(0.5, 1\\)"), (dict(theta0=0.3), "theta0 must be in"),
    (dict(v_opt="rmsprop"), "v_opt must be adamax or adam or sgd"), (dict(v_grad="mean"), "v_grad must be z or pi"),
    (dict(theta_space="log"), "theta_space must be prob or logit"), (dict(ce_scale=-1.0), "ce_scale must be a number >= 0"),
])
def test_bad_readings_are_refused_with_the_choices(bad, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(algo="fedsparse", **bad)


def test_theta0_sets_the_starting_margin():
    data = tiny_federation(clients=4, n=16, m=4)
    for theta0 in (0.99, 0.9999):
        e = Engine(RunConfig(algo="fedsparse", theta0=theta0, rounds=1, clients_per_round=2), data)
        theta = e.algorithm.theta(e.server["w"], e.server["v"])
        assert torch.allclose(theta, torch.full_like(theta, theta0), rtol=0, atol=2e-4 * (1 - theta0) / 1e-2)


@pytest.mark.parametrize("v_opt", ["adam", "sgd"])
def test_the_thresholds_optimiser_is_used_on_both_sides(v_opt):
    """A round with each optimiser moves the thresholds by a different amount than Adamax's."""
    data = tiny_federation(clients=4, n=16, m=4)
    v = {}
    for name in ("adamax", v_opt):
        e = Engine(RunConfig(algo="fedsparse", lam0=1e-3, sparse_reg="batch", v_opt=name, rounds=1,
                             clients_per_round=2, batch_size=8), data)
        v0 = e.server["v"].clone()
        e.run_round()
        v[name] = e.server["v"] - v0
    assert not torch.allclose(v["adamax"], v[v_opt])


def test_unit_inputs_are_pixels_over_255():
    cfg = RunConfig(task="bits", inputs="unit")
    data = load_task_data(cfg)
    assert data.mean == (0.0,) * len(data.mean) and data.std == (1.0,) * len(data.std)
    x = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8).expand(1, len(data.mean), 1, 3)
    assert data.normalize(x)[0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    with pytest.raises(ValueError, match="inputs must be standard or unit or centered"):
        RunConfig(inputs="01")


def test_centered_inputs_are_pixels_in_minus_one_to_one():
    data = load_task_data(RunConfig(task="bits", inputs="centered"))
    x = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8).expand(1, len(data.mean), 1, 3)
    # 2 * 0 / 255 - 1, 2 * 51 / 255 - 1 = -0.6, 2 * 255 / 255 - 1
    assert data.normalize(x)[0, 0, 0].tolist() == pytest.approx([-1.0, -0.6, 1.0])
    assert data.info["inputs"].startswith("centered")


def test_histories_without_the_new_settings_read_as_the_paper_literally():
    old = {"task": "cifar10", "algo": "fedsparse", "lam0": 5e-6, "sparse_reg": "example", "rounds": 10}
    cfg = RunConfig.from_dict(old)
    assert (cfg.theta0, cfg.ce_scale, cfg.v_opt, cfg.v_grad, cfg.theta_space, cfg.ungated, cfg.inputs) == (
        0.99, 1e-4, "adamax", "z", "prob", "", "standard")
    assert np.isclose(cfg.lam0, 5e-6)
