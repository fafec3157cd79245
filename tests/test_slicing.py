"""Clients that compute only what survives (emfl.nn.slicing): the smaller model's shapes counted
by hand, its outputs equal to the masked dense model's, and every algorithm that cuts its
clients' models giving the same rounds as with the masked dense model (client_compute=dense)."""

import numpy as np
import pytest
import torch

from emfl.nn.config import RunConfig
from emfl.nn.engine import Engine
from emfl.nn.groups import GroupMap
from emfl.nn.models import LeNet5, ResNet20
from emfl.nn.state import load_state_vector, state_vector
from emfl.nn.slicing import WIDTH_STEP, Subnet, Subnets, held_units

from nn_helpers import tiny_federation


def _keep(group_map, per_layer):
    """A unit mask that keeps the listed units of each layer (one list per layer)."""
    keep = torch.zeros(group_map.num_groups)
    for (a, b), idx in zip(group_map.layer_slices, per_layer):
        keep[a + torch.tensor(idx, dtype=torch.long)] = 1
    return keep


def test_the_smaller_lenet_by_hand():
    torch.manual_seed(0)
    model = LeNet5((3, 32, 32), 10)
    group_map = GroupMap(model)  # conv1 (32), conv2 (64), fc1 (512); fc2 is the dense output layer
    conv1 = [0, 1, 2, 3, 28, 29, 30, 31]
    conv2 = list(range(1, 16)) + [60]
    keep = _keep(group_map, [conv1, conv2, list(range(104))])  # 8, 16 and 104 units: multiples of 8
    sub = Subnet(model, group_map, keep)
    shapes = {n: tuple(p.shape) for n, p in sub.model.named_parameters()}
    assert shapes == {"conv1.weight": (8, 3, 5, 5), "conv1.bias": (8,),
                      "conv2.weight": (16, 8, 5, 5), "conv2.bias": (16,),
                      "fc1.weight": (104, 16 * 25), "fc1.bias": (104,),  # 16 channels of 5 x 5 after pooling
                      "fc2.weight": (10, 104), "fc2.bias": (10,)}
    by_hand = 8 * 76 + 16 * (8 * 25 + 1) + 104 * (400 + 1) + 10 * 105
    assert sub.d == by_hand == group_map.values_on(keep)  # what the server counts as alive
    assert (sub.model.conv2.in_channels, sub.model.conv2.out_channels, sub.model.fc1.in_features) == (8, 16, 400)
    # the values it holds are the full model's, in place: conv2's unit 60 reading conv1's unit 31
    w = state_vector(model)
    sub.load(w)
    assert torch.equal(sub.model.conv2.weight[15, 7], model.conv2.weight[60, 31])
    assert torch.equal(sub.model.fc1.weight[7, 25 * 15:25 * 16], model.fc1.weight[7, 25 * 60:25 * 61])
    assert torch.equal(sub.model.fc2.weight[:, 103], model.fc2.weight[:, 103])
    assert sub.units.tolist() == conv1 + [32 + u for u in conv2] + list(range(96, 200))


def test_cut_layers_hold_a_multiple_of_eight_units_putting_back_the_first_off_ones():
    assert WIDTH_STEP == 8
    group_map = GroupMap(LeNet5((3, 32, 32), 10))
    held = held_units(group_map, _keep(group_map, [[0, 5, 31], [], list(range(9))]))
    (a1, b1), (a2, b2), (a3, b3) = group_map.layer_slices
    assert torch.nonzero(held[a1:b1]).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 31]  # 1, 2, 3, 4, 6 put back
    assert torch.nonzero(held[a2:b2]).flatten().tolist() == list(range(8))  # none on: one step of off units
    assert torch.nonzero(held[a3:b3]).flatten().tolist() == list(range(16))
    # a layer short of its full width by less than a step is held whole
    assert bool(held_units(group_map, _keep(group_map, [range(30), range(64), range(512)])).all())


@pytest.mark.numeric
def test_the_smaller_model_computes_what_the_masked_one_computes():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)  # float64: round-off 1e-15, on any CPU
    for model in (LeNet5((3, 32, 32), 10).double(), ResNet20((3, 32, 32), 10).double()):
        group_map = GroupMap(model)
        keep = (torch.rand(group_map.num_groups) < 0.4).float()
        sub = Subnet(model, group_map, keep)
        masked = state_vector(model) * group_map.expand(keep)  # the off units' own groups zeroed
        load_state_vector(model, masked)
        sub.load(masked)
        for train in (False, True):
            model.train(train), sub.model.train(train)
            assert torch.allclose(sub.model(x), model(x), rtol=0, atol=1e-10), (type(model).__name__, train)
        if isinstance(model, ResNet20):  # BatchNorm statistics updated in place, then merged back
            merged = sub.merge(masked)
            assert torch.allclose(merged, state_vector(model), rtol=0, atol=1e-12)


def test_merge_writes_back_only_what_the_smaller_model_holds():
    model = LeNet5((1, 28, 28), 62)
    group_map = GroupMap(model)
    keep = torch.ones(group_map.num_groups)
    keep[:16] = 0  # half of conv1's units
    sub = Subnet(model, group_map, keep)
    w = torch.arange(group_map.d, dtype=torch.float32)
    assert torch.equal(sub.merge(w, sub.values(w)), w)
    bumped = sub.merge(w, sub.values(w) + 1)
    changed = int((bumped != w).sum())
    assert changed == sub.d == group_map.d - 16 * (25 + 1) - 64 * 16 * 25  # off: 16 filters and their readers
    assert torch.equal(group_map.alive(keep) > 0, bumped != w)


def test_subnets_are_built_once_per_mask_and_not_at_all_when_nothing_is_off():
    model = LeNet5((3, 32, 32), 10)
    group_map = GroupMap(model)
    subnets = Subnets(model, group_map)
    assert subnets(torch.ones(group_map.num_groups)) is None
    keep = torch.ones(group_map.num_groups)
    keep[3] = 0
    assert subnets(keep) is None  # 31 of conv1's 32 units: held whole (a multiple of 8), nothing to cut
    keep[:8] = 0
    first = subnets(keep)
    assert first is subnets(keep.clone()) and first is not subnets(torch.flip(keep, [0]))
    none_left = torch.zeros(group_map.num_groups)  # every unit off: one per layer stays, computing 0
    assert [l.groups for l in Subnet(model, group_map, none_left).group_map.layers] == [8, 8, 8]
    with pytest.raises(ValueError, match="unit mask for this model has shape"):
        Subnet(model, group_map, keep[:-1])


def _engines(data, **cfg):
    # float64: two computations of the same maths agree to ~1e-12 on any CPU's kernels, where a real
    # difference (a unit computed that should be off, a weight written back to the wrong place) is
    # of the order of the weights; the server steps by plain SGD: Adam would magnify the round-off
    # of a difference that is about 0 into a step of its learning rate
    cfg = {"server_opt": "sgd", "server_lr": 1.0, "precision": "float64", **cfg}
    return (Engine(RunConfig(client_compute="dense", **cfg), data),
            Engine(RunConfig(client_compute="sliced", **cfg), data))


def _assert_same_rounds(dense, sliced, rounds=2, atol=1e-10):
    for _ in range(rounds):
        a, b = dense.run_round(), sliced.run_round()
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10)
    for key, value in dense.server.items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(value, sliced.server[key], rtol=0, atol=atol), key
    assert np.allclose(dense.local_acc, sliced.local_acc, equal_nan=True)
    assert (dense.bytes_down, dense.bytes_up) == (sliced.bytes_down, sliced.bytes_up)


def _prune(engine, units):
    """Start the server of a FedSparse engine with ``units`` pruned (thresholds far above the norms)."""
    v = engine.server["v"].clone()
    v[units] = 50.0
    engine.server = {**engine.server, "v": v}


@pytest.mark.numeric
@pytest.mark.parametrize("model, readings", [("lenet5", {}), ("resnet20", {}),
                                             ("lenet5", {"ungated": "conv1", "v_grad": "pi", "theta_space": "logit"})])
def test_fedsparse_rounds_on_the_smaller_model_equal_the_masked_dense_rounds(model, readings):
    data = tiny_federation(clients=4, n=16, m=4)
    dense, sliced = _engines(data, algo="fedsparse", model=model, lam0=1e-3, sparse_reg="batch", rounds=2,
                             clients_per_round=2, batch_size=8, **readings)
    group_map = dense.algorithm.group_map
    # over half of each layer, so that the smaller model holds some pruned units back (widths of 8k)
    off = torch.cat([torch.arange(a, a + (b - a) // 2 + 3) for a, b in group_map.layer_slices])
    _prune(dense, off), _prune(sliced, off)
    _assert_same_rounds(dense, sliced)
    sub = sliced.algorithm.subnets.current
    assert sub is not None and sub.d < 0.6 * group_map.d  # the clients did train the smaller model
    assert dense.algorithm.subnets.current is None  # and dense never built one


@pytest.mark.numeric
def test_feddrop_clients_on_their_sub_models_equal_the_masked_dense_clients():
    data = tiny_federation(clients=4, n=16, m=4, shape=(1, 28, 28), classes=62)  # drop_io drops 1 of 62 classes
    dense, sliced = _engines(data, algo="feddrop", rounds=2, clients_per_round=2, batch_size=8, drop_conv=0.3,
                             drop_fc=0.5)
    _assert_same_rounds(dense, sliced)
    sub = sliced.algorithm.subnets.current
    assert sub.model.fc2.weight.shape[0] == 62  # the output layer keeps its rows: a dropped class is gated
    assert sub.model.conv2.weight.shape[:2] == (48, 32)  # 45 of 64 kept, held as 48


@pytest.mark.numeric
@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_fedl1_clients_on_the_switched_on_units_equal_the_masked_dense_clients(batching):
    data = tiny_federation(clients=4, n=16, m=4)
    probe = Engine(RunConfig(algo="fedl1", lam=1.0, clients_per_round=4), data)
    lam = float(probe.algorithm.group_map.norms(probe.w).median())  # about half of the units off
    dense, sliced = _engines(data, algo="fedl1", lam=lam, rounds=2, clients_per_round=3, batch_size=8,
                             client_batching=batching)
    _assert_same_rounds(dense, sliced)
    sub = sliced.algorithm.subnets.current
    assert sub is not None and sub.d < 0.8 * dense.d


def test_client_compute_is_checked_and_resumable():
    with pytest.raises(ValueError, match="client_compute must be sliced or dense"):
        RunConfig(client_compute="smaller")
    assert "client_compute" in RunConfig.RESUMABLE and RunConfig().client_compute == "sliced"
