"""emfl's algorithms on Flower's simulation (emfl.flower.simulate, the Ray backend): the server
weights, records and byte counts of `emfl run`, compared in float64.

Needs the extra (`pip install -e '.[flower]'`; `./dev test` installs it)."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is an optional extra: pip install -e '.[flower]'")

from emfl.flower import FlowerError  # noqa: E402
from emfl.flower.apps import simulate  # noqa: E402
from emfl.nn.cifar import TARBALL  # noqa: E402
from emfl.nn.config import make_config  # noqa: E402
from emfl.nn.engine import Engine  # noqa: E402
from emfl.nn.runner import run  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from flower_helpers import assert_same_run, one_thread, server_weights  # noqa: E402,F401
from nn_helpers import tiny_federation  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_CIFAR = (DATA / TARBALL).exists()


def test_waves_give_each_node_one_client_at_a_time():
    from emfl.flower.apps import node_for, waves

    assert [node_for(s, [30, 10, 20]) for s in range(5)] == [10, 20, 30, 10, 20]  # s mod 3, ids sorted
    sent = [(5, "a"), (7, "b"), (5, "c"), (5, "d"), (7, "e")]
    assert waves(sent, node=lambda m: m[0]) == [[(5, "a"), (7, "b")], [(5, "c"), (7, "e")], [(5, "d")]]


def test_a_simulation_needs_a_supernode(tmp_path):
    with pytest.raises(FlowerError, match="--supernodes must be at least 1; got 0"):
        simulate(make_config(task="cifar10", rounds=1), tmp_path / "run.json", supernodes=0)
    assert not (tmp_path / "run.json").exists()


@pytest.mark.numeric
@pytest.mark.parametrize("algo", ["fedsparse-mid", "feddrop", "scaffold", "fednova", "fedspa"])
def test_simulation_gives_the_engines_run_on_generated_data(tmp_path, algo):
    # 6 clients of 48 random images, 4 a round, 3 rounds: group-sparse with thresholds (FedSparse),
    # sub-models drawn per client (FedDrop), dense bundles and client memory (SCAFFOLD), counts
    # beside a dense update (FedNova: the example and step counts), masked values with new masks
    # that the server must remember and the client keep (FedSpa: 12 draws of 6 clients); dense
    # models alone (FedAvg) on CIFAR-10 below
    data = tiny_federation(clients=6, n=48, m=8)
    config = make_config(algo, task="cifar10", rounds=3, clients_per_round=4, eval_every=1, device="cpu",
                         precision="float64")
    ck = tmp_path / "ck"
    a = run(config, tmp_path / "engine.json", data=data, progress=False, checkpoint_dir=ck)
    b = simulate(config, tmp_path / "flower.json", supernodes=2, data=data, checkpoint_dir=ck)
    wa, wb = server_weights(tmp_path / "engine.json", ck), server_weights(tmp_path / "flower.json", ck)
    assert_same_run(a, b, wa, wb)
    # the run moved the server: a transport that delivered nothing would leave the first weights
    assert float((wb - Engine(config, data).w).abs().max()) > 1e-4


@pytest.mark.numeric
def test_a_resumed_simulation_gives_its_clients_their_memory_back(tmp_path):
    # SCAFFOLD's c_i stay on the nodes (in the checkpoint folder, not the server's checkpoint): a
    # simulation of 2 rounds continued to 3 equals 3 engine rounds; 6 clients, 4 a round, so that
    # round 3 brings back clients of rounds 1 and 2
    import dataclasses

    data = tiny_federation(clients=6, n=48, m=8)
    config = make_config("scaffold", task="cifar10", rounds=3, clients_per_round=4, eval_every=1, device="cpu",
                         precision="float64")
    ck = tmp_path / "ck"
    a = run(config, tmp_path / "engine.json", data=data, progress=False, checkpoint_dir=ck)
    simulate(dataclasses.replace(config, rounds=2), tmp_path / "flower.json", supernodes=2, data=data, checkpoint_dir=ck)
    b = simulate(config, tmp_path / "flower.json", supernodes=2, data=data, checkpoint_dir=ck, resume=True)
    assert b["transport"]["wire_first_round"] == 3  # round 3 went over Flower after the resume
    assert [r["round"] for r in b["records"]] == [1, 2, 3]
    for ra, rb in zip(a["records"], b["records"]):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-10) and rb["local_acc"] == ra["local_acc"]
    wa, wb = server_weights(tmp_path / "engine.json", ck), server_weights(tmp_path / "flower.json", ck)
    assert torch.allclose(wa, wb, atol=1e-10, rtol=0)


@pytest.mark.numeric
@pytest.mark.skipif(not HAS_CIFAR, reason=f"CIFAR-10 is not in {DATA} (the generated-data tests above still run)")
def test_simulation_gives_the_engines_run_on_cifar10(tmp_path):
    # every node reads CIFAR-10 from the data folder and draws the same split; the classic LeNet-5
    # (62k weights) keeps float64 affordable: 2 rounds of 4 of the 100 clients, evaluated on the
    # union of the test sets after each
    algo = "fedavg"
    config = make_config(algo, task="cifar10", model="lenet5-classic", rounds=2, clients_per_round=4, eval_every=1,
                         device="cpu", precision="float64")
    ck = tmp_path / "ck"
    a = run(config, tmp_path / "engine.json", data_dir=DATA, progress=False, checkpoint_dir=ck)
    b = simulate(config, tmp_path / "flower.json", supernodes=2, data_dir=str(DATA), checkpoint_dir=ck)
    assert_same_run(a, b, server_weights(tmp_path / "engine.json", ck), server_weights(tmp_path / "flower.json", ck))
    assert a["data"] == b["data"] and a["data"]["source"] != "generated"  # the same real split on every side
