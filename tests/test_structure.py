"""Structural accounting: a unit that is off removes its own group and every weight that reads it.

The expected counts are written layer by layer from the model's shapes (not from the index
arrays of :class:`GroupMap`); "dead" is checked on the model itself: values counted dead change
nothing it computes, values counted alive do.
"""

import numpy as np
import pytest
import torch
from torch import nn

from emfl.nn import groups
from emfl.nn.groups import GateHooks, GroupMap
from emfl.nn.messages import GroupSparse
from emfl.nn.models import make_model
from emfl.nn.state import load_state_vector, state_vector


def lenet_count(a1, a2, a3, c_in=3, side=5, classes=10):
    """Values alive in the paper's LeNet-5 when a1 conv1, a2 conv2 and a3 fc1 units are on:
    each unit's weights from the units alive before it (5x5 kernels; fc1 reads side x side
    positions of every conv2 channel) and its bias; fc2 reads the a3 fc1 units."""
    return (a1 * (c_in * 25 + 1) + a2 * (a1 * 25 + 1) + a3 * (a2 * side * side + 1) + classes * (a3 + 1))


def random_mask(group_map, p, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(group_map.num_groups, generator=g) < p).float()


def kept(group_map, mask):
    return [int(mask[a:b].sum()) for a, b in group_map.layer_slices]


@pytest.mark.parametrize("task", ["cifar10", "femnist"])
def test_lenet5_structural_count_by_hand(task):
    shape, classes, side = ((3, 32, 32), 10, 5) if task == "cifar10" else ((1, 28, 28), 62, 4)
    group_map = GroupMap(make_model("lenet5", shape, classes))
    everything = torch.ones(group_map.num_groups)
    assert group_map.values_on(everything) == lenet_count(32, 64, 512, shape[0], side, classes) == group_map.d
    for seed, p in enumerate([0.9, 0.5, 0.1]):
        mask = random_mask(group_map, p, seed)
        a1, a2, a3 = kept(group_map, mask)
        assert group_map.values_on(mask) == lenet_count(a1, a2, a3, shape[0], side, classes)
    # one conv1 filter: conv2 reads only it (25 weights and a bias per filter), and so on
    one = torch.zeros(group_map.num_groups)
    one[0] = 1
    assert group_map.values_on(one) == (shape[0] * 25 + 1) + classes  # conv1 filter 0 and fc2's biases
    # the count the old records used: only the off units' own groups removed
    assert group_map.values_own(one) == group_map.d - (31 * (shape[0] * 25 + 1) + 64 * 801 + 512 * (64 * side * side + 1))


def test_the_review_example_is_two_thirds_sparse():
    """The server model found in review (18/32 conv1, 34/64 conv2, 323/512 fc1 units alive):
    66.4 % sparse structurally; 37.3 % when only the pruned units' own groups count
    (14 x 76 + 30 x 801 + 189 x 1,601 = 327,683 of 878,538 values)."""
    group_map = GroupMap(make_model("lenet5", (3, 32, 32), 10))
    mask = torch.zeros(group_map.num_groups)
    for (a, b), n in zip(group_map.layer_slices, (18, 34, 323)):
        mask[a:a + n] = 1
    s = group_map.sparsity(mask)
    assert s["alive_units"] == {"conv1": 18, "conv2": 34, "fc1": 323}  # the output layer is not gated
    assert s["sparsity"] == pytest.approx(1 - lenet_count(18, 34, 323) / 878_538) and round(100 * s["sparsity"], 1) == 66.4
    assert s["sparsity_own"] == pytest.approx(327_683 / 878_538)


def _perturb(model, positions, scale=1.0, seed=0):
    w = state_vector(model)
    g = torch.Generator().manual_seed(seed)
    w[positions] += scale * (1 + torch.rand(int(positions.sum()) if positions.dtype == torch.bool else len(positions),
                                            generator=g))
    load_state_vector(model, w)


@pytest.mark.numeric
@pytest.mark.parametrize("name,shape", [("lenet5", (3, 32, 32)), ("lenet5-classic", (1, 28, 28))])
def test_dead_values_change_nothing_and_alive_ones_do(name, shape):
    torch.manual_seed(0)
    model = make_model(name, shape, 10).eval()
    group_map = GroupMap(model)
    mask = random_mask(group_map, 0.6, 1)
    with torch.no_grad():  # positive biases: the ReLUs pass, so that every alive value shows
        for layer in group_map.layers:
            layer.module.bias.uniform_(0.5, 1.0)
    load_state_vector(model, state_vector(model) * group_map.expand(mask))  # the off units' own groups zeroed
    x = torch.randn(16, *shape).abs()
    out = model(x)
    alive = group_map.alive(mask) > 0
    reads_dead = ~alive & (group_map.expand(mask) > 0)  # alive own group, reads an off unit
    assert reads_dead.sum() > 0
    _perturb(model, reads_dead)
    assert torch.equal(model(x), out)  # every weight counted dead multiplies an exact zero
    _perturb(model, reads_dead, scale=-1.0)
    rng = np.random.default_rng(0)
    for i in rng.choice(np.flatnonzero(alive.numpy()), size=25, replace=False):
        w0 = state_vector(model)
        _perturb(model, torch.tensor([int(i)]), scale=10.0)
        assert not torch.allclose(model(x), out), f"value {i} is counted alive but changes nothing"
        load_state_vector(model, w0)


def test_group_sparse_wire_format_round_trip():
    group_map = GroupMap(make_model("lenet5", (3, 32, 32), 10))
    w = torch.randn(group_map.d)
    mask = random_mask(group_map, 0.7, 2)
    msg = GroupSparse(w, mask, group_map)
    blob = msg.encode()
    a1, a2, a3 = kept(group_map, mask)
    assert len(blob) == msg.nbytes == 4 * lenet_count(a1, a2, a3) + 608 // 8
    back = GroupSparse.decode(blob, group_map)
    assert torch.equal(back.mask, mask) and torch.equal(back.values, msg.values)
    assert torch.equal(msg.values[group_map.alive(mask) > 0], w[group_map.alive(mask) > 0])
    assert int(torch.count_nonzero(msg.values)) == lenet_count(a1, a2, a3)  # nothing else survives
    quiet = GroupSparse(w, mask, group_map, mask_bits=False)
    assert len(quiet.encode()) == quiet.nbytes == msg.nbytes - 76
    assert torch.equal(GroupSparse.decode(quiet.encode(), group_map, mask=mask).values, msg.values)
    with pytest.raises(ValueError, match="holds .* values; got"):
        GroupSparse.decode(blob[:-4], group_map)


@pytest.mark.numeric
def test_unsent_squares_give_the_receiver_the_exact_norms():
    """fc 3 -> 4 -> 3 -> 2 with unit 1 of the first layer off: the second layer's rows lose their
    column 1 on the wire; sending its square per unit restores ||w_g||."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    group_map = GroupMap(model)
    assert group_map.num_groups == 7 and [l.values_read for l in group_map.layers] == [3, 2]
    w = state_vector(model)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    unsent = group_map.unsent_sq(w, mask)
    col1 = model[2].weight[:, 1].detach()
    assert torch.allclose(unsent, torch.cat([torch.zeros(4), col1 ** 2]))
    received = GroupSparse(w, mask, group_map).values
    full = group_map.norms(w)
    assert not torch.allclose(group_map.norms(received)[4:], full[4:])
    assert torch.allclose(group_map.norms(received, unsent)[mask > 0], full[mask > 0])


def _conv2_inputs(model):
    """The inputs of every block's conv2 (the gated units' outputs) in the next forward pass."""
    seen, handles = [], []
    for blk in model.layers:
        handles.append(blk.conv2.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach())))
    return seen, handles


@pytest.mark.numeric
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_resnet20_gates_sit_after_batchnorm(mode):
    torch.manual_seed(0)
    model = make_model("resnet20", (3, 32, 32), 10)
    with torch.no_grad():  # a BatchNorm with a shift: before the fix a closed gate left relu(beta)
        for blk in model.layers:
            blk.bn1.bias.uniform_(0.2, 1.0)
            blk.bn1.running_mean.uniform_(-1, 1)
    group_map = GroupMap(model)
    assert group_map.num_groups == 3 * 16 + 3 * 32 + 3 * 64
    assert [l.values_per_group for l in group_map.layers][::3] == [16 * 9 + 4, 16 * 9 + 4, 32 * 9 + 4]
    getattr(model, mode)()
    x = torch.randn(4, 3, 32, 32)
    z = random_mask(group_map, 0.5, 3)
    hooks = GateHooks(group_map)
    hooks.z = z
    seen, handles = _conv2_inputs(model)
    model(x)
    for (a, b), inp in zip(group_map.layer_slices, seen):
        off = z[a:b] == 0
        assert torch.count_nonzero(inp[:, off]) == 0 and torch.count_nonzero(inp[:, ~off]) > 0
    hooks.remove()
    # pruned without gates (the server's model): own groups zeroed, BatchNorm included
    model.eval()
    load_state_vector(model, state_vector(model) * group_map.expand(z))
    seen.clear()
    out = model(x)
    for (a, b), inp in zip(group_map.layer_slices, seen):
        assert torch.count_nonzero(inp[:, z[a:b] == 0]) == 0
    reads_dead = (group_map.alive(z) == 0) & (group_map.expand(z) > 0)
    assert int(reads_dead.sum()) == sum(
        int((z[a:b] == 0).sum()) * l.values_read for (a, b), l in zip(group_map.layer_slices, group_map.layers))
    _perturb(model, reads_dead)
    assert torch.equal(model(x), out)
    for h in handles:
        h.remove()


def test_gating_the_conv_before_batchnorm_would_not_prune():
    """The fault the group map avoids: a conv filter switched off before its BatchNorm still
    sends relu(beta) on."""
    torch.manual_seed(0)
    blk = make_model("resnet20", (3, 32, 32), 10).layers[0]
    with torch.no_grad():
        blk.conv1.weight[0] = 0
        blk.bn1.bias[0] = 0.76
    blk.eval()
    out = torch.relu(blk.bn1(blk.conv1(torch.randn(2, 16, 8, 8))))
    assert torch.all(out[:, 0] > 0.5)


def test_models_without_a_known_layout_are_refused():
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    with pytest.raises(ValueError, match="cannot place gates in ConvBN.*gated_units"):
        GroupMap(ConvBN())
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        groups.prunable_layers(nn.ReLU())
    with pytest.raises(ValueError, match="ResNet20 cannot gate its output layer"):
        GroupMap(make_model("resnet20", (3, 32, 32), 10), prune_output=True)


def test_fedsparse_runs_on_resnet20_and_counts_its_structure():
    from emfl.nn.engine import Engine
    from emfl.nn.config import RunConfig

    from nn_helpers import tiny_federation

    data = tiny_federation(clients=3, n=8, m=4)
    e = Engine(RunConfig(algo="fedsparse", model="resnet20", rounds=1, clients_per_round=2, batch_size=8), data)
    group_map = e.algorithm.group_map
    assert group_map.num_groups == 336
    info = e.run_round()
    # round 1 starts dense: every value, a mask bit per unit, a threshold and an unsent norm per unit
    assert e.bytes_down == 2 * (4 * e.d + 336 // 8 + 4 * 2 * 336)
    assert {"sparsity", "sparsity_own"} <= set(info)
