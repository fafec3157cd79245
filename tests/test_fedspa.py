"""FedSpa (emfl.nn.algorithms.fedspa): ERK densities by hand, exact density through every prune
and regrow, masked messages counted by hand, FedAvg recovered by an all-ones mask, and masks
that stay with the clients (and in the checkpoint)."""

import math

import numpy as np
import pytest
import torch

from emfl.nn.algorithms.fedspa import erk_densities, mac_share
from emfl.personal_masks import prune_fraction
from emfl.nn.messages import pack_bits, unpack_bits
from emfl.nn.config import RunConfig
from emfl.nn.engine import Engine
from emfl.nn.seeding import ClientJob
from emfl.nn.runner import checkpoint_path, load_checkpoint, run

from nn_helpers import tiny_federation


def test_erk_densities_by_hand():
    # (4, 2): (4 + 2) / 8 = 0.75;  (8, 8): 16 / 64 = 0.25;  half of 72 weights = 36
    # eps = 36 / (0.75 * 8 + 0.25 * 64) = 36 / 22 puts the first layer at 1.23 > 1: it is dense,
    # then eps = (36 - 8) / (0.25 * 64) = 1.75 and the second layer gets 0.4375 (28 of 64)
    assert erk_densities([(4, 2), (8, 8)], 0.5) == pytest.approx([1.0, 0.4375])
    assert erk_densities([(4, 2), (8, 8)], 1.0) == pytest.approx([1.0, 1.0])
    # no layer over 1: the densities are in the ratio of the raw scores
    d = erk_densities([(10, 10), (20, 20)], 0.1)
    assert d[0] / d[1] == pytest.approx((20 / 100) / (40 / 400))
    assert (d[0] * 100 + d[1] * 400) == pytest.approx(50)


def test_prune_fraction_anneals_by_a_cosine():
    assert prune_fraction(0.5, 0, 100) == 0.5
    assert prune_fraction(0.5, 50, 100) == pytest.approx(0.25)
    assert prune_fraction(0.5, 100, 100) == 0.0 and prune_fraction(0.5, 150, 100) == 0.0


def test_bits_pack_eight_to_a_byte():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.tolist() == [0b10000001, 0b11000000]
    assert torch.equal(unpack_bits(packed, 10), mask)


def _engine(data, **cfg):
    return Engine(RunConfig(algo="fedspa", model="lenet5-classic", rounds=4, clients_per_round=3, batch_size=8,
                            **cfg), data)


def test_density_is_exact_after_every_prune_and_regrow():
    data = tiny_federation(clients=5, n=16, m=4)
    e = _engine(data, density=0.3, prune_alpha=0.5)
    algo = e.algorithm
    first = {s: algo.initial_mask(s) for s in range(5)}
    for _ in range(4):
        e.run_round()
        for s, packed in e.memory.items():
            mask, i = unpack_bits(packed, algo.maskable), 0
            for (_, n, _), k in zip(algo.layers, algo.counts):
                assert int(mask[i:i + n].sum()) == k  # each layer keeps its count
                i += n
    moved = [s for s in e.memory if not torch.equal(unpack_bits(e.memory[s], algo.maskable), first[s])]
    assert moved  # the masks did move
    # the server learnt each moved mask from the replies alone: its record is the client's own mask
    assert set(moved) <= set(e.known)
    assert all(torch.equal(e.known[s], e.memory[s]) for s in moved)
    assert sum(algo.counts) / algo.maskable == pytest.approx(0.3, abs=1e-3)


def test_messages_carry_only_the_masked_values():
    data = tiny_federation(clients=4, n=16, m=4)
    e = _engine(data, density=0.5)
    algo = e.algorithm
    state, down = algo.server_message(e.server)
    job = ClientJob(0, 0, 2)
    msg = algo.message_to(down, job)
    held = int(msg.mask.sum())
    biases = algo.setup.d - algo.maskable  # every value outside the conv and linear weights is held
    assert held == sum(algo.counts) + biases
    assert msg.nbytes == 4 * held  # the server knows the mask: values only
    assert torch.all(msg.values[~msg.mask] == 0)
    result = algo.client_update(msg, job, e.runtime)
    assert result.up.nbytes == 4 * held + math.ceil(algo.maskable / 8)  # the new mask travels up
    local = result.local  # the client's model after training
    assert torch.all(local[~msg.mask] == 0) and torch.count_nonzero(local[msg.mask]) > 0.9 * held  # sparse to sparse


def test_an_all_ones_mask_is_fedavg():
    data = tiny_federation(clients=5, n=16, m=4)
    cfg = dict(model="lenet5-classic", rounds=3, clients_per_round=3, batch_size=8, eval_every=1)
    fedavg = Engine(RunConfig(algo="fedavg", **cfg), data)
    fedspa = Engine(RunConfig(algo="fedspa", density=1.0, **cfg), data)
    for _ in range(3):
        a, b = fedavg.run_round(), fedspa.run_round()
        ra, rb = fedavg.evaluate(a), fedspa.evaluate(b)
        assert rb.pop("density") == 1.0
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    assert torch.equal(fedavg.w, fedspa.w)


def test_a_client_never_sampled_keeps_its_first_mask_and_masks_resume_from_the_checkpoint(tmp_path):
    data = tiny_federation(clients=6, n=16, m=4)
    cfg = dict(algo="fedspa", model="lenet5-classic", clients_per_round=2, batch_size=8, density=0.4)
    e = Engine(RunConfig(rounds=2, **cfg), data)
    for _ in range(2):
        e.run_round()
    never = [s for s in range(6) if s not in e.memory]
    assert never
    again = Engine(RunConfig(rounds=2, **cfg), data).algorithm
    for s in never:  # drawn from the client's own seed: the same whenever it is needed
        assert torch.equal(e.algorithm.mask_of(None, s), again.initial_mask(s))
    # the masks are part of the checkpoint, packed: a resumed run equals the straight one
    straight = run(RunConfig(rounds=3, eval_every=1, **cfg), tmp_path / "a.json", data=data, progress=False)
    run(RunConfig(rounds=1, eval_every=1, **cfg), tmp_path / "b.json", data=data, progress=False)
    resumed = run(RunConfig(rounds=3, eval_every=1, **cfg), tmp_path / "b.json", data=data, resume=True,
                  progress=False)
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(straight["records"]) == strip(resumed["records"])
    saved = load_checkpoint(checkpoint_path(tmp_path / "b.json"))
    memory = saved["memory"]
    assert saved["known"].keys() <= memory.keys() and saved["known"]  # the server's copies, for the masks that moved
    assert all(m.dtype == torch.uint8 and m.numel() == math.ceil(e.algorithm.maskable / 8) for m in memory.values())


def test_a_checkpoint_without_the_servers_masks_is_refused():
    data = tiny_federation(clients=4, n=16, m=4)
    e = _engine(data, density=0.5)
    e.run_round()
    state = e.state_dict()
    del state["known"]  # a checkpoint written before the server kept the clients' masks
    with pytest.raises(ValueError, match="start the run again without --resume"):
        _engine(data, density=0.5).load_state_dict(state)
    fedavg = Engine(RunConfig(algo="fedavg", model="lenet5-classic", clients_per_round=2, batch_size=8), data)
    old = fedavg.state_dict()
    del old["known"]  # an algorithm whose server keeps nothing of its clients reads it as before
    fedavg.load_state_dict(old)
    assert fedavg.known == {}


def test_fedspa_bad_input():
    with pytest.raises(ValueError, match="density must be in"):
        RunConfig(algo="fedspa", density=0.0)
    with pytest.raises(ValueError, match="density must be in"):
        RunConfig(algo="fedspa", density=1.5)
    with pytest.raises(ValueError, match="prune_alpha must be in"):
        RunConfig(algo="fedspa", prune_alpha=-0.1)
    assert np.isclose(RunConfig(algo="fedspa").density, 0.5)


def test_the_server_averages_each_weight_over_the_clients_that_hold_it():
    from emfl.nn.algorithms.base import ClientResult
    from emfl.nn.messages import Bundle, Masked

    data = tiny_federation(clients=4, n=16, m=4)
    e = Engine(RunConfig(algo="fedspa", model="lenet5-classic", server_opt="sgd", server_lr=1.0,
                         clients_per_round=4), data)
    algo, d = e.algorithm, e.d
    w = torch.zeros(d)
    a = torch.zeros(d, dtype=torch.bool)
    a[:3] = True  # client A holds values 0, 1, 2
    b = torch.zeros(d, dtype=torch.bool)
    b[1:4] = True  # client B holds 1, 2, 3
    ups = [ClientResult(Bundle(w=Masked(torch.full((d,), 2.0), a)), 0.0, None),
           ClientResult(Bundle(w=Masked(torch.full((d,), 4.0), b)), 0.0, None)]
    state, _ = algo.m_step({**e.server, "w": w}, None, ups)
    assert state["w"][:5].tolist() == [2.0, 3.0, 3.0, 4.0, 0.0]  # held by A; both; both; B; nobody


def test_layer_macs_of_the_papers_lenet_by_hand():
    from emfl.nn.models import make_model, layer_macs

    # CIFAR-10: conv1 3->32 5x5 on a 28x28 output, conv2 32->64 5x5 on 10x10, fc 1600->512, 512->10
    macs = layer_macs(make_model("lenet5", (3, 32, 32), 10), (3, 32, 32))
    assert macs == [32 * 3 * 25 * 28 * 28, 64 * 32 * 25 * 10 * 10, 1600 * 512, 512 * 10]
    assert sum(macs) == 7_825_920


def test_the_mac_share_weighs_each_layers_density_by_its_positions():
    fed = tiny_federation()
    e = Engine(RunConfig(algo="fedspa", rounds=1, clients_per_round=2, batch_size=8, density=0.3), fed)
    alg = e.algorithm
    shape = fed.input_shape
    # positions by hand for the tiny LeNet-5 (5x5 convs without padding, a 2x2 pool after each)
    h1 = shape[1] - 4
    h2 = h1 // 2 - 4
    positions = [h1 * h1, h2 * h2, 1, 1]
    sizes = [n for _, n, _ in alg.layers]
    want = sum(k * p for k, p in zip(alg.counts, positions)) / sum(n * p for n, p in zip(sizes, positions))
    share = mac_share(e.model, shape, 0.3)
    assert share == pytest.approx(want, rel=1e-12)
    assert 0.3 < share < 1  # the dense first conv layer weighs more than its share of weights
    assert mac_share(e.model, shape, 1.0) == 1.0
