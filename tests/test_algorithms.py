"""The algorithms as modules: SCAFFOLD against a hand-written reference, messages counted by hand,
a round loop that names no algorithm, a new algorithm added through the registry alone, and the
committed histories' configs read back."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from emfl.nn import algorithms
from emfl.nn.seeding import derive_seed
from emfl.nn.algorithms.base import Algorithm, ClientResult
from emfl.nn.settings import setting
from emfl.nn.config import RunConfig
from emfl.nn.engine import Engine
from emfl.nn.groups import GroupMap
from emfl.nn.messages import Bundle, Dense, GroupSparse, SubModel, Thresholds, mask_bytes
from emfl.nn.models import make_model
from emfl.nn.state import load_state_vector, state_vector

from nn_helpers import tiny_federation

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- SCAFFOLD


def scaffold_reference(data, config, x, c, c_clients, clients):
    """One SCAFFOLD round (option II) written out in float64 with plain torch: for each client,
    y <- y - lr (g(y) - c_i + c) over its minibatches, c_i+ = c_i - c + (x - y) / (K lr); the server
    x <- x + eta mean(y - x), c <- c + |S|/N mean(c_i+ - c_i).  Returns (x, c, {client: c_i+})."""
    lr = config.client_lr
    dys, dcs, new = [], [], {}
    for s in clients:
        s = int(s)
        model = make_model(config.model, data.input_shape, data.num_classes).double()
        load_state_vector(model, x)
        params = list(model.parameters())
        c_i = c_clients[s]
        # the variates cut into the shapes of the parameters (they lead the state vector)
        shapes, i = [], 0
        for p in params:
            shapes.append((i, i + p.numel(), p.shape))
            i += p.numel()
        gen = torch.Generator().manual_seed(derive_seed(config.seed, "client", 0, s))
        perm = torch.randperm(len(data.train_y[s]), generator=gen)
        steps = 0
        for b in range(0, len(perm), config.batch_size):
            idx = perm[b:b + config.batch_size]
            loss = F.cross_entropy(model(data.normalize(data.train_x[s][idx]).double()), data.train_y[s][idx])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g, (a, e, shape) in zip(params, grads, shapes):
                    p -= lr * (g - c_i[a:e].view(shape) + c[a:e].view(shape))
            steps += 1
        y = state_vector(model)
        c_plus = c_i - c + (x - y) / (steps * lr)
        dys.append(y - x)
        dcs.append(c_plus - c_i)
        new[s] = c_plus
    S, N = len(clients), data.num_clients
    x_new = x + config.server_lr * torch.stack(dys).mean(0)
    c_new = c + S / N * torch.stack(dcs).mean(0)
    return x_new, c_new, new


@pytest.mark.parametrize("clients_per_round", [2, 1])
def test_one_scaffold_round_equals_a_hand_written_reference(clients_per_round):
    """Two clients; both control variates start non-zero, so the corrected steps are exercised;
    with one client a round, |S|/N = 1/2."""
    data = tiny_federation(clients=2, n=12, m=3)  # 12 images, batch 8: K = 2 steps
    config = RunConfig(algo="scaffold", rounds=1, clients_per_round=clients_per_round, batch_size=8,
                       server_opt="sgd", server_lr=0.7)
    e = Engine(config, data)
    gen = torch.Generator().manual_seed(5)
    c0 = 0.1 * torch.randn(e.d, generator=gen)
    c_clients = {0: 0.1 * torch.randn(e.d, generator=gen), 1: 0.1 * torch.randn(e.d, generator=gen)}
    e.server = {**e.server, "c": c0.clone()}
    e.memory = {s: v.clone() for s, v in c_clients.items()}
    x0 = e.w.clone()
    clients = e.sample_clients(0)
    e.run_round()
    x, c, kept = scaffold_reference(data, config, x0.double(), c0.double(),
                                    {s: v.double() for s, v in c_clients.items()}, clients)
    # float32 against float64; c divides by K lr = 0.1, so its round-off is ten times larger
    assert (e.w.double() - x).abs().max() < 1e-4
    assert (e.server["c"].double() - c).abs().max() < 1e-3
    for s in range(2):
        expected = kept.get(s, c_clients[s].double())  # a client not sampled keeps its c_i
        assert (e.memory[s].double() - expected).abs().max() < 1e-3
    assert not torch.allclose(e.w, x0) and not torch.allclose(e.server["c"], c0)
    # both variates are counted: twice FedAvg's bytes, down and up
    assert e.bytes_down == e.bytes_up == clients_per_round * 2 * 4 * e.d
    fedavg = Engine(RunConfig(rounds=1, clients_per_round=clients_per_round, batch_size=8), data)
    fedavg.run_round()
    assert (e.bytes_down, e.bytes_up) == (2 * fedavg.bytes_down, 2 * fedavg.bytes_up)


def test_scaffold_resumes_with_its_control_variates(tmp_path):
    from emfl.nn.runner import checkpoint_path, load_checkpoint, run

    data = tiny_federation(clients=4, n=16, m=4)
    cfg = dict(algo="scaffold", clients_per_round=2, batch_size=8, eval_every=1, checkpoint_every=1)
    straight = run(RunConfig(rounds=3, **cfg), tmp_path / "a.json", data=data, progress=False)
    run(RunConfig(rounds=1, **cfg), tmp_path / "b.json", data=data, progress=False)
    resumed = run(RunConfig(rounds=3, **cfg), tmp_path / "b.json", data=data, resume=True, progress=False)
    a = load_checkpoint(checkpoint_path(tmp_path / "a.json"))
    b = load_checkpoint(checkpoint_path(tmp_path / "b.json"))
    assert torch.equal(a["server"]["w"], b["server"]["w"]) and torch.equal(a["server"]["c"], b["server"]["c"])
    assert a["memory"].keys() == b["memory"].keys() and len(a["memory"]) >= 2
    assert all(torch.equal(a["memory"][s], b["memory"][s]) for s in a["memory"])
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(straight["records"]) == strip(resumed["records"])


def test_scaffold_on_the_command_line(tmp_path, monkeypatch, capsys):
    from emfl.__main__ import main
    from emfl.nn.femnist import make_tiny_femnist

    make_tiny_femnist(tmp_path / "data", writers=4, seed=1)
    monkeypatch.setenv("EMFL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "s.json"
    assert main(["run", "--algo", "scaffold", "--task", "femnist", "--rounds", "2", "--clients-per-round", "2",
                 "--eval-every", "1", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"]) == 0
    assert "scaffold on femnist: round 2" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["config"]["algo"] == "scaffold" and [r["round"] for r in doc["records"]] == [1, 2]
    assert doc["records"][0]["bytes_up"] == 2 * 2 * 4 * doc["model_parameters"]


# --------------------------------------------------------------------------- messages


def tiny_group_map(prune_output=False):
    """fc 3 -> 4 -> 2: four groups of 3 weights + 1 bias; the output layer (4 x 2 + 2 = 10 values)
    is dense unless it is gated too."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return GroupMap(model, prune_output=prune_output), model


def test_dense_message_by_hand():
    assert Dense(torch.zeros(10)).nbytes == 40
    assert Dense(torch.zeros(878_538)).nbytes == 4 * 878_538


def test_group_sparse_message_by_hand():
    group_map, model = tiny_group_map()
    assert (group_map.num_groups, group_map.dense) == (4, 10)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    w = torch.ones(26)
    # units 0 and 2 (3 weights + 1 bias each), the output layer's weights that read them (2 x 2)
    # and its 2 biases; 4 mask bits -> 1 byte
    assert GroupSparse(w, mask, group_map).nbytes == 4 * (8 + 4 + 2) + 1
    assert GroupSparse(w, mask, group_map, mask_bits=False).nbytes == 4 * 14
    assert float(GroupSparse(w, mask, group_map).values.sum()) == 14  # the receiver gets zeros elsewhere
    assert mask_bytes(8) == 1 and mask_bytes(9) == 2 and mask_bytes(608) == 76
    lenet = GroupMap(make_model("lenet5", (3, 32, 32), 10))
    one = torch.zeros(lenet.num_groups)
    one[0] = 1  # conv1 filter 0: 3*5*5 weights + 1 bias; nothing reads it but dead units: fc2's 10 biases
    assert GroupSparse(torch.zeros(878_538), one, lenet).nbytes == 4 * (76 + 10) + 76


def test_submodel_message_by_hand():
    group_map, model = tiny_group_map(prune_output=True)
    units = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    # layer 1 keeps 2 units: 2 x 3 weights + 2 biases = 8; layer 2 keeps both units, each reading
    # only the 2 kept inputs: 2 x 2 + 2 = 6
    assert SubModel(torch.zeros(26), units, group_map).nbytes == 4 * 14
    assert SubModel(torch.zeros(26), torch.ones(6), group_map).nbytes == 4 * 26  # nothing dropped


def test_thresholds_and_bundle_by_hand():
    assert Thresholds(torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 0.0])).nbytes == 8
    assert Thresholds(torch.zeros(4)).nbytes == 16
    bundle = Bundle(w=Dense(torch.zeros(10)), c=Dense(torch.zeros(10)))
    assert bundle.nbytes == 80 and bundle["c"].nbytes == 40
    with pytest.raises(ValueError, match="a Bundle needs one or more named messages"):
        Bundle()


def test_no_algorithm_counts_bytes_by_hand():
    """Byte sizes come from the messages: no algorithm module multiplies by a value's 4 bytes,
    rounds mask bits up or reads a size."""
    import ast

    for path in sorted((ROOT / "emfl" / "nn" / "algorithms").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.FloorDiv)):
                consts = [n.value for n in (node.left, node.right) if isinstance(n, ast.Constant)]
                assert 4 not in consts and 8 not in consts, f"{path.name}:{node.lineno} counts bytes"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("nbytes", "ceil", "values_on", "submodel_values"), \
                    f"{path.name}:{node.lineno} counts bytes ({node.attr})"


# --------------------------------------------------------------------------- the loop and the registry


def test_the_round_loop_names_no_algorithm():
    text = (ROOT / "emfl" / "nn" / "engine.py").read_text().lower()
    names = set(algorithms.ALGORITHMS) | set(algorithms.PRESETS)
    names |= {a.title.lower() for a in algorithms.ALGORITHMS.values()}
    assert "scaffold" in names and "fedsparse-high" in names
    found = sorted(n for n in names if n.lower() in text)
    assert not found, f"the round loop names {found}"


@dataclass(frozen=True)
class ShrinkParams:
    factor: float = setting(0.5, "how much each client shrinks the model")


class Shrink(Algorithm):
    """A test algorithm: every client sends back the model times ``factor``; the server takes
    the mean of what it got."""

    name = "shrink-test"
    title = "Shrink"
    Params = ShrinkParams
    PRESETS = {"quarter": {"factor": 0.25}}

    def client_update(self, msg, job, rt):
        return ClientResult(Dense(msg.values * self.params.factor), loss=0.0, local=msg.values * self.params.factor)

    def m_step(self, state, down, results):
        w = torch.stack([r.up.values for r in results]).mean(0)
        return {**state, "w": w}, {"clients": len(results)}


@pytest.fixture
def shrink():
    algorithms.register(Shrink)
    yield Shrink
    algorithms.unregister(Shrink.name)
    assert Shrink.name not in algorithms.ALGORITHMS and "shrink-test-quarter" not in algorithms.PRESETS


@pytest.mark.numeric
def test_an_algorithm_added_through_the_registry_runs_without_loop_edits(shrink, tmp_path, capsys):
    from emfl.__main__ import main
    from emfl.nn.config import make_config
    from emfl.nn.runner import run

    data = tiny_federation(clients=4, n=8, m=2)
    e = Engine(RunConfig(algo="shrink-test", factor=0.5, rounds=1, clients_per_round=3), data)
    w0 = e.w.clone()
    info = e.run_round()
    assert torch.allclose(e.w, w0 * 0.5, rtol=1e-6, atol=0) and info == {"round": 1, "train_loss": 0.0, "clients": 3}
    assert e.bytes_down == e.bytes_up == 3 * 4 * e.d
    config = make_config("shrink-test-quarter", rounds=2, clients_per_round=2, eval_every=1)
    assert (config.algo, config.factor, config.preset) == ("shrink-test", 0.25, "shrink-test-quarter")
    doc = run(config, tmp_path / "s.json", data=data, progress=False)
    assert doc["config"]["factor"] == 0.25 and doc["records"][-1]["clients"] == 2
    # the command line offers it, its preset and its setting
    assert main(["run", "--algo", "shrink-test", "--factor", "0.1", "--out", str(tmp_path / "x.json"),
                 "--data-dir", str(tmp_path), "--quiet"]) == 2
    assert "no usable CIFAR-10" in capsys.readouterr().err  # it got as far as the data
    with pytest.raises(ValueError, match="shrink-test has no setting 'lam0'.*lam0 is a setting of fedsparse"):
        RunConfig(algo="shrink-test", lam0=1e-3)
    with pytest.raises(ValueError, match="registered already"):
        algorithms.register(Shrink)


def test_every_algorithm_runs_a_round_and_counts_its_messages():
    data = tiny_federation(clients=4, n=8, m=2)
    for name, algorithm in algorithms.ALGORITHMS.items():
        e = Engine(RunConfig(algo=name, rounds=1, clients_per_round=2, batch_size=4, **algorithm.EXAMPLE), data)
        info = e.run_round()
        assert info["round"] == 1 and math.isfinite(info["train_loss"]), name
        assert 0 < e.bytes_down and 0 < e.bytes_up, name
        assert 0 <= e.evaluate(info)["global_acc"] <= 1, name


# --------------------------------------------------------------------------- the committed histories


def test_committed_histories_load_and_are_named():
    from emfl.nn import history

    paths = sorted((ROOT / "results").glob("*.json"))
    assert len(paths) >= 13
    names = set()
    for path in paths:
        doc = history.load_history(path)
        config = RunConfig.from_dict(doc["config"])
        assert config.algo == doc["config"]["algo"]
        own = config.to_dict()
        assert all(doc["config"][k] == v for k, v in own.items() if k in doc["config"]), path.name
        names.add(history.method_name(doc))
    assert set(history.ORDER) <= names
    assert history.method_name({"config": {"algo": "scaffold"}}) == "SCAFFOLD"
