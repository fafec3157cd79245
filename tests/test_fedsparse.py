"""FedSparse on the engine: group bookkeeping, gate hooks, sparse byte accounting, pruning."""

import numpy as np
import pytest
import torch

from emfl.nn import groups
from emfl.nn.algorithms.fedsparse import PRUNE
from emfl.nn.engine import Engine
from emfl.nn.state import state_vector
from emfl.nn.config import RunConfig
from emfl.nn.seeding import ClientJob
from emfl.nn.groups import GateHooks, GroupMap
from emfl.nn.models import make_model
from emfl.nn.runner import checkpoint_path, load_checkpoint, run

from nn_helpers import tiny_federation


def theta(e):
    """The server's gate probabilities now."""
    return e.algorithm.theta(e.server["w"], e.server["v"])


def test_group_map_matches_the_layers():
    model = make_model("lenet5", (3, 32, 32), 10)
    gmap = GroupMap(model)
    assert gmap.num_groups == 32 + 64 + 512 and gmap.dense == 5130  # fc2 stays dense
    assert int(gmap.sizes.sum()) + gmap.dense == 878_538
    w = state_vector(model)
    expected = torch.cat([groups.group_norms(l) for l in groups.prunable_layers(model)])
    assert torch.allclose(gmap.norms(w), expected.detach(), atol=1e-6)
    mask = torch.zeros(gmap.num_groups)
    mask[0] = 1  # conv1 filter 0 only: 3*5*5 weights + 1 bias
    assert gmap.values_own(mask) == 5130 + 76  # own groups only: fc2 (dense) and the filter
    assert gmap.values_on(mask) == 76 + 10  # structurally: nothing reads a live unit but fc2's biases
    full = gmap.expand(mask)
    assert int(full.sum()) == 5130 + 76


def test_gate_hooks_switch_channels_off():
    model = make_model("lenet5", (3, 32, 32), 10)
    gmap = GroupMap(model)
    hooks = GateHooks(gmap)
    x = torch.randn(2, 3, 32, 32)
    dense = model(x)
    hooks.z = torch.ones(gmap.num_groups)
    assert torch.allclose(model(x), dense)
    hooks.z = torch.zeros(gmap.num_groups)  # every hidden unit off: only fc2's bias is left
    assert torch.allclose(model(x), model.fc2.bias.expand(2, 10))
    hooks.remove()
    assert torch.allclose(model(x), dense)


def _capture_uploads(e):
    """Record every client's message of the engine's next rounds."""
    sent, update = [], e.algorithm.client_update

    def client_update(msg, job, rt):
        result = update(msg, job, rt)
        sent.append((msg, result.up))
        return result

    e.algorithm.client_update = client_update
    return sent


def lenet_alive(mask, group_map):
    """Values alive in the paper's LeNet-5 (3x32x32, 10 classes) from the units kept per layer."""
    a1, a2, a3 = [int(mask[a:b].sum()) for a, b in group_map.layer_slices]
    return a1 * 76 + a2 * (a1 * 25 + 1) + a3 * (a2 * 25 + 1) + 10 * (a3 + 1)


def test_a_fedsparse_round_accounts_what_is_sent():
    data = tiny_federation(clients=4, n=16, m=4)
    e = Engine(RunConfig(algo="fedsparse", lam0=1e-3, sparse_reg="batch", rounds=3, clients_per_round=2, batch_size=8),
               data)
    group_map = e.algorithm.group_map
    G = group_map.num_groups
    assert torch.allclose(theta(e), torch.full((G,), 0.99), atol=1e-4)  # starts dense
    sent = _capture_uploads(e)
    for rnd in range(3):
        down_before, up_before = e.bytes_down, e.bytes_up
        info = e.run_round()
        ups = [up for _, up in sent[-2:]]
        for up in ups:  # counted from the tensors on the wire, and by hand from the units kept
            assert up.nbytes == len(up.encode()) == 4 * lenet_alive(up.mask, group_map) + 608 // 8
            assert int(torch.count_nonzero(up.values)) <= lenet_alive(up.mask, group_map)
        assert e.bytes_up - up_before == sum(len(up.encode()) for up in ups)
        down = sent[-1][0]
        keep = down["w"].mask
        # the surviving values, a mask bit per unit, a threshold and an unsent norm per surviving unit
        assert e.bytes_down - down_before == 2 * (len(down["w"].encode()) + 4 * 2 * int(keep.sum()))
        assert len(down["w"].encode()) == 4 * lenet_alive(keep, group_map) + 76
    assert 0 < info["sparsity"] and info["sparsity_own"] < info["sparsity"]
    assert 0 <= info["tv_mean"] <= info["tv_max"] <= 1


def test_server_pruning_zeroes_groups_and_shrinks_the_download():
    data = tiny_federation(clients=4, n=16, m=4)
    e = Engine(RunConfig(algo="fedsparse", rounds=2, clients_per_round=2, batch_size=8), data)
    e.server["v"][:32] = 50.0  # thresholds far above the norms: every conv1 filter is off (theta ~ 0)
    info = e.run_round()
    assert (theta(e)[:32] <= PRUNE).all()
    a, b = e.algorithm.group_map.layer_slices[0]
    in_conv1 = (e.algorithm.group_map.group_of >= a) & (e.algorithm.group_map.group_of < b)
    assert int(in_conv1.sum()) == 32 * 76 and torch.count_nonzero(e.w[in_conv1]) == 0
    # structurally conv2 loses every weight too (all read conv1), its 64 biases stay alive
    dead = 32 * 76 + 64 * 32 * 25
    assert info["sparsity"] == pytest.approx(dead / e.d, rel=1e-6)
    assert info["sparsity_own"] == pytest.approx(32 * 76 / e.d, rel=1e-6)
    assert info["alive_units"]["conv1"] == 0 and info["alive_units"]["conv2"] <= 64  # per layer, by name
    before = e.bytes_down
    e.run_round()
    G = e.algorithm.group_map.num_groups
    assert e.bytes_down - before == 2 * (4 * (e.d - dead) + G // 8 + 4 * 2 * (G - 32))


@pytest.mark.numeric
def test_the_client_gets_the_server_norms_from_what_is_sent():
    """A pruned unit's readers are not sent; the unsent squares per unit restore the norms, so
    the client's theta equals the server's."""
    data = tiny_federation(clients=4, n=16, m=4)
    e = Engine(RunConfig(algo="fedsparse", rounds=2, clients_per_round=2, batch_size=8, precision="float64"), data)
    e.server["v"][:16] = 50.0  # half of conv1 off: conv2's rows lose half their columns on the wire
    e.run_round()
    algo = e.algorithm
    state, down = algo.server_message(e.server)
    server = algo.theta(state["w"], state["v"])
    client = algo.theta(down["w"].values, down["v"].values, down["unsent"].values)
    # float64: the norms' round-off (~1e-16), amplified by 1 / T = 1e3, stays far below 1e-9
    assert torch.allclose(client, server, rtol=0, atol=1e-9)
    assert not torch.allclose(algo.theta(down["w"].values, down["v"].values), server, atol=0.1)


def test_the_upload_is_a_bernoulli_sample_of_pi():
    """z_s ~ Bern(pi_s): each unit's frequency over 2,000 uploads passes a two-sided binomial test."""
    from scipy.stats import binomtest

    data = tiny_federation(clients=4, n=16, m=4, shape=(1, 28, 28))
    algo = Engine(RunConfig(algo="fedsparse", model="lenet5-classic", rounds=1, clients_per_round=4), data).algorithm
    pi = torch.linspace(0.02, 0.98, algo.group_map.num_groups)
    w = torch.randn(algo.group_map.d)
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([algo.upload(w, pi, gen).mask for _ in range(2000)])
    counts = draws.sum(0)
    for k in range(0, algo.group_map.num_groups, 7):
        assert binomtest(int(counts[k]), 2000, float(pi[k])).pvalue > 1e-4, (k, float(pi[k]), int(counts[k]))
    up = algo.upload(w, pi, gen)
    assert torch.equal(up.values, w * algo.group_map.alive(up.mask))


def test_more_lam0_gives_more_sparsity():
    """On generated data (LeNet-5 classic, 28x28): 6 rounds at lam0 = 1e-6, 3e-6 and 1e-3 (added to
    the mean batch loss); the server model's sparsity grows with lam0 (none is pruned at the smallest)."""
    data = tiny_federation(clients=4, n=32, m=4, shape=(1, 28, 28), seed=3)
    out = []
    for lam0 in (1e-6, 3e-6, 1e-3):
        e = Engine(RunConfig(algo="fedsparse", model="lenet5-classic", lam0=lam0, sparse_reg="batch", rounds=6,
                             clients_per_round=2, batch_size=8), data)
        for _ in range(6):
            info = e.run_round()
        out.append(info["sparsity"])
    assert out[0] < 0.01 and out[0] < out[1] < out[2], out


def test_the_gate_cross_entropy_pulls_pi_toward_theta():
    """With lam0 = 0 the prior's part of the loss is -1e-4 CE(pi, theta): a gradient step on the
    client's thresholds moves pi from 1/2 up where theta = 0.9 and down where theta = 0.1."""
    from emfl.nn import gates
    from emfl.nn.algorithms.fedsparse import T, regulariser

    norms = torch.tensor([1.0, 1.0])
    v = gates.softplus_inverse(norms).clone().requires_grad_(True)  # tau = ||w||: pi = 1/2
    pi = gates.gate_prob(norms, v, T)
    assert torch.allclose(pi, torch.full((2,), 0.5))
    theta = torch.tensor([0.9, 0.1])
    regulariser(pi, theta, torch.tensor([3.0, 3.0]), lam0=0.0).backward()
    with torch.no_grad():
        after = gates.gate_prob(norms, v - 1e-3 * v.grad / v.grad.abs(), T)
    assert after[0] > 0.5 > after[1]
    # lam0 alone pulls every pi down, the larger group the harder
    v2 = v.detach().clone().requires_grad_(True)
    regulariser(gates.gate_prob(norms, v2, T), torch.full((2,), 0.5), torch.tensor([3.0, 30.0]), lam0=1.0).backward()
    assert (v2.grad < 0).all() and v2.grad[1] < v2.grad[0]


def test_fedsparse_resume_is_bit_identical(tmp_path):
    data = tiny_federation(clients=4, n=16, m=4)
    cfg = dict(algo="fedsparse", lam0=1e-3, clients_per_round=2, batch_size=8, eval_every=1, checkpoint_every=1)
    run(RunConfig(rounds=3, **cfg), tmp_path / "a.json", data=data, progress=False)
    run(RunConfig(rounds=1, **cfg), tmp_path / "b.json", data=data, progress=False)
    run(RunConfig(rounds=3, **cfg), tmp_path / "b.json", data=data, resume=True, progress=False)
    a = load_checkpoint(checkpoint_path(tmp_path / "a.json"))
    b = load_checkpoint(checkpoint_path(tmp_path / "b.json"))
    assert torch.equal(a["server"]["w"], b["server"]["w"]) and torch.equal(a["server"]["v"], b["server"]["v"])


def test_fedsparse_bad_input():
    with pytest.raises(ValueError, match="lam0 must be a number >= 0"):
        RunConfig(algo="fedsparse", lam0=-1e-6)


def test_fedl1_thresholds_both_ways_and_counts_bytes():
    data = tiny_federation(clients=4, n=16, m=4)
    probe = Engine(RunConfig(algo="fedl1", lam=1.0, rounds=2, clients_per_round=4), data)
    lam = float(probe.algorithm.group_map.norms(probe.w).median())  # half of the groups start below it
    e = Engine(RunConfig(algo="fedl1", lam=lam, rounds=2, clients_per_round=2, batch_size=8), data)
    group_map = e.algorithm.group_map
    norms = group_map.norms(e.w)
    keep = (norms > lam).float()
    assert 0 < keep.sum() < group_map.num_groups  # some groups start below the threshold
    info = e.run_round()
    G = group_map.num_groups
    # two clients, each sent the alive values (4 bytes each), a mask bit per unit and an unsent norm per kept unit
    assert e.bytes_down == 2 * (4 * lenet_alive(keep, group_map) + (G + 7) // 8 + 4 * int(keep.sum()))
    assert e.bytes_up < 2 * 4 * e.d
    assert info["sparsity"] == pytest.approx(1 - lenet_alive(keep, group_map) / e.d)
    assert info["sparsity_own"] == pytest.approx(float((group_map.sizes * (1 - keep)).sum()) / e.d)
    with pytest.raises(ValueError, match="fedl1 needs --lam > 0"):
        RunConfig(algo="fedl1")


def test_presets_on_the_command_line(tmp_path, capsys):
    from emfl.__main__ import main
    from emfl.nn.algorithms import PRESETS

    assert PRESETS["fedsparse-mid"] == {"algo": "fedsparse", "lam0": 5e-6}
    assert [PRESETS[f"fedsparse-{k}"]["lam0"] for k in ("low", "mid", "high")] == [5e-7, 5e-6, 5e-5]
    # a preset is accepted by the parser and reaches the config (here it stops at the missing data)
    assert main(["run", "--algo", "fedsparse-high", "--out", str(tmp_path / "x.json"),
                 "--data-dir", str(tmp_path), "--quiet"]) == 2
    assert "no usable CIFAR-10" in capsys.readouterr().err


def test_feddrop_submodel_size_by_hand():
    data = tiny_federation(clients=4, n=16, m=4)
    e = Engine(RunConfig(algo="feddrop", rounds=1, clients_per_round=2, batch_size=8), data)
    z = e.algorithm.units(ClientJob(0, 0, 0))
    # kept units: conv1 round(32 * 0.99) = 32, conv2 round(64 * 0.9) = 58, fc1 256, fc2 round(10 * 0.99) = 10
    group_map = e.algorithm.group_map
    kept = [int(z[a:b].sum()) for a, b in group_map.layer_slices]
    assert kept == [32, 58, 256, 10]
    # conv1 32 * (3*25) + 32; conv2 58 * (32*25) + 58; fc1 256 * (58*25) + 256; fc2 10 * 256 + 10
    expected = 32 * 75 + 32 + 58 * 800 + 58 + 256 * 1450 + 256 + 10 * 256 + 10
    assert group_map.submodel_values(z) == expected
    assert group_map.submodel_values(torch.ones(group_map.num_groups)) == e.d  # nothing dropped: the full model
    e.run_round()
    assert e.bytes_down == e.bytes_up == 2 * 4 * expected  # every client's sub-model has that size
    assert not torch.equal(e.algorithm.units(ClientJob(0, 0, 0)), e.algorithm.units(ClientJob(0, 0, 1)))  # a draw per client


def test_feddrop_only_updates_the_submodel():
    data = tiny_federation(clients=3, n=16, m=4)
    e = Engine(RunConfig(algo="feddrop", rounds=1, clients_per_round=1, batch_size=8, drop_conv=0.5,
                         server_opt="sgd", server_lr=1.0), data)
    s = int(e.sample_clients(0)[0])
    z = e.algorithm.units(ClientJob(0, 0, s))
    w0 = e.w.clone()
    e.run_round()
    group_map = e.algorithm.group_map
    a, b = group_map.layer_slices[1]  # conv2: half its filters dropped
    dropped = torch.isin(group_map.group_of, torch.nonzero(z[a:b] == 0).flatten() + a)
    assert dropped.sum() > 0 and torch.equal(e.w[dropped], w0[dropped])
    with pytest.raises(ValueError, match="drop_fc must be a rate"):
        RunConfig(algo="feddrop", drop_fc=1.0)
    with pytest.raises(ValueError, match="feddrop builds sub-models"):
        Engine(RunConfig(algo="feddrop", model="resnet20"), data)


@pytest.mark.numeric
def test_sparse_regulariser_by_hand_and_its_two_scales():
    """Two groups of 3 and 5 weights: lam0 * (3 * 0.5 + 5 * 1.0) = 6.5 lam0; the cross-entropy
    term is 1e-4 * -(0.5 log 0.5 + 0.5 log 0.5 + log 0.9) for theta = (0.5, 0.9)."""
    from emfl.nn.algorithms.fedsparse import regulariser as sparse_regulariser

    f64 = dict(dtype=torch.float64)
    pi, theta, sizes = torch.tensor([0.5, 1.0], **f64), torch.tensor([0.5, 0.9], **f64), torch.tensor([3.0, 5.0], **f64)
    ce = 0.5 * np.log(0.5) + 0.5 * np.log(0.5) + np.log(0.9)
    batch = float(sparse_regulariser(pi, theta, sizes, lam0=0.1))
    assert batch == pytest.approx(0.65 - 1e-4 * ce, rel=1e-12)
    assert float(sparse_regulariser(pi, theta, sizes, lam0=0.1, n_s=500)) == pytest.approx(batch / 500, rel=1e-12)
    with pytest.raises(ValueError, match="sparse_reg must be batch or example"):
        RunConfig(algo="fedsparse", sparse_reg="per-client")
    assert RunConfig(algo="fedsparse").sparse_reg == "example"  # closer to Tables 1 and 3 (notebook 05)


def test_the_regulariser_slope_by_hand_and_as_a_gradient():
    """theta = (0.5, 0.9), sizes (3, 5), lam0 = 0.1, n_s = 2: c = (0.3 - 1e-4 logit 0.5) / 2 =
    0.15 and (0.5 - 1e-4 log 9) / 2; and c is the regulariser's gradient in pi (it is linear)."""
    from emfl.nn.algorithms.fedsparse import regulariser, regulariser_slope

    theta, sizes = torch.tensor([0.5, 0.9], dtype=torch.float64), torch.tensor([3.0, 5.0], dtype=torch.float64)
    c = regulariser_slope(theta, sizes, lam0=0.1, n_s=2)
    assert c.tolist() == pytest.approx([0.15, (0.5 - 1e-4 * np.log(9)) / 2], rel=1e-12)
    pi = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(regulariser(pi, theta, sizes, 0.1, 2), pi)
    assert torch.allclose(g, c, rtol=1e-10)
    other = torch.tensor([0.9, 0.1], dtype=torch.float64)  # linear: differences are c . (pi - pi')
    diff = regulariser(pi.detach(), theta, sizes, 0.1, 2) - regulariser(other, theta, sizes, 0.1, 2)
    assert float(diff) == pytest.approx(float(c @ (pi.detach() - other)), rel=1e-10)


@pytest.mark.numeric
@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_gates_on_parameters_compute_what_gates_on_outputs_compute(name):
    """Gates on the outputs (GateHooks.z), on the parameters (gated_parameters) and each where it
    costs least (GateHooks.forward, the client's training): the same loss and the same gradients in
    z and in every parameter, with some gates off and some partly on (in float64: in float32
    ResNet-20's BatchNorm leaves the gates' gradients ~1e-3 apart)."""
    from torch.func import functional_call
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = make_model(name, (3, 32, 32), 10).double()
    gmap = GroupMap(model)
    hooks = GateHooks(gmap)
    assert len(hooks.on_parameters) == (2 if name == "lenet5" else 9)  # conv layers; fc1 is gated on its output
    z = torch.rand(gmap.num_groups, dtype=torch.float64)
    z[::3] = 0
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (6,))
    params = list(model.parameters())
    grads = []
    for way in ("outputs", "parameters", "cheapest"):
        zz = z.clone().requires_grad_(True)
        if way == "outputs":
            hooks.z = zz
            out = model(x)
            hooks.z = None
        elif way == "parameters":
            out = functional_call(model, gmap.gated_parameters(zz), (x,))
        else:
            out = hooks.forward(model, x, zz)
            assert hooks.z is None  # left as it was
        loss = F.cross_entropy(out, y)
        grads.append([loss.detach()] + list(torch.autograd.grad(loss, [zz] + params)))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert float(grads[0][1].abs().sum()) > 0  # the gates get a gradient
    hooks.remove()


@pytest.mark.numeric
def test_lenet_pools_before_the_relu_with_the_same_values_and_gradients():
    """relu(maxpool(a)) = maxpool(relu(a)) (a ReLU is monotone), and the gradients agree bit for bit."""
    from torch.nn import functional as F

    torch.manual_seed(1)
    model = make_model("lenet5", (3, 32, 32), 10)
    x = torch.randn(4, 3, 32, 32)

    def relu_first(m, x):
        x = F.max_pool2d(F.relu(m.conv1(x)), 2)
        x = F.max_pool2d(F.relu(m.conv2(x)), 2)
        return m.fc2(F.relu(m.fc1(torch.flatten(x, 1))))

    outs, grads = [], []
    for f in (model, lambda x: relu_first(model, x)):
        out = f(x)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), list(model.parameters())))
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_fedl1_records_the_units_alive_per_layer():
    data = tiny_federation(clients=4, n=16, m=4)
    probe = Engine(RunConfig(algo="fedl1", lam=1.0, rounds=1, clients_per_round=4), data)
    group_map = probe.algorithm.group_map
    norms = group_map.norms(probe.w)
    lam = float(norms.median())  # about half of the units start below it and are not sent
    e = Engine(RunConfig(algo="fedl1", lam=lam, rounds=1, clients_per_round=2, batch_size=8), data)
    info = e.run_round()
    want = {l.name: int((norms[a:b] > lam).sum()) for l, (a, b) in zip(group_map.layers, group_map.layer_slices)}
    assert info["alive_units"] == want and sum(want.values()) < group_map.num_groups  # the server's own count
