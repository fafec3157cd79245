"""The neural-network engine: models, communication accounting, one round against a hand-written
reference, resume, divergence, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from emfl.nn.seeding import derive_seed
from emfl.nn.engine import Diverged, Engine
from emfl.nn.state import load_state_vector, state_vector
from emfl.nn.algorithms import ALGORITHMS
from emfl.nn.config import RunConfig
from emfl.nn.models import MODELS, make_model, num_parameters
from emfl.nn.runner import RunError, checkpoint_path, load_checkpoint, run, save_checkpoint

from nn_helpers import tiny_federation


def test_paper_lenet5_parameter_counts():
    # conv1 3*32*25+32, conv2 32*64*25+64, fc1 1600*512+512, fc2 512*10+10
    assert num_parameters(make_model("lenet5", (3, 32, 32), 10)) == 2432 + 51264 + 819712 + 5130 == 878_538
    # FEMNIST: conv1 1*32*25+32, conv2 the same, fc1 1024*512+512, fc2 512*62+62
    assert num_parameters(make_model("lenet5", (1, 28, 28), 62)) == 832 + 51264 + 524800 + 31806 == 608_702


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape, classes", [((3, 32, 32), 10), ((1, 28, 28), 62)])
def test_models_run(name, shape, classes):
    model = make_model(name, shape, classes)
    assert model(torch.zeros(2, *shape)).shape == (2, classes)
    v = state_vector(model)
    load_state_vector(model, v * 0 + 1)
    assert torch.equal(state_vector(model), torch.ones_like(v))


def test_resnet20_is_resnet20():
    # 19 3x3 convolutions + 1 linear layer = 20 weight layers; about 0.27M parameters
    model = make_model("resnet20", (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19
    assert 270_000 < num_parameters(model) < 275_000
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        make_model("vgg", (3, 32, 32), 10)


def test_byte_accounting_matches_the_paper_tables():
    for shape, classes, rounds, gib in (((3, 32, 32), 10, 1000, 65.46), ((1, 28, 28), 62, 6000, 272.1)):
        data = tiny_federation(clients=10, n=4, m=2, shape=shape, classes=classes)
        e = Engine(RunConfig(task=data.name, rounds=1, batch_size=4), data)
        e.run_round()
        d = num_parameters(e.model)
        assert e.bytes_down == e.bytes_up == 10 * 4 * d  # 10 clients, one float32 model each way
        assert round((e.bytes_down + e.bytes_up) * rounds / 2**30, 2 if gib < 100 else 1) == gib


def reference_round(data, config):
    """One FedAvg round written out by hand, in float64: the same clients and batches, torch's
    SGD, then the server's plain SGD step on the mean difference (Adam's first step, about
    lr * sign(g), would amplify float32 round-off in near-zero coordinates; its formula is
    tested by hand in test_fedpa.py)."""
    ref = Engine(config, data)  # only for the initial weights, client sampling and batch order
    w = ref.w.double()
    total = torch.zeros_like(w)
    clients = ref.sample_clients(0)
    for s in clients:
        model = make_model(config.model, data.input_shape, data.num_classes).double()
        load_state_vector(model, w)
        opt = torch.optim.SGD(model.parameters(), lr=config.client_lr)
        gen = torch.Generator().manual_seed(derive_seed(config.seed, "client", 0, int(s)))
        perm = torch.randperm(len(data.train_y[s]), generator=gen)
        for b in range(0, len(perm), config.batch_size):
            idx = perm[b:b + config.batch_size]
            x = data.normalize(data.train_x[s][idx]).double()
            loss = F.cross_entropy(model(x), data.train_y[s][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        total += w - state_vector(model)
    return w - config.server_lr * total / len(clients)


@pytest.mark.numeric
def test_one_fedavg_round_equals_a_hand_written_reference():
    data = tiny_federation(clients=5, n=20, m=4)
    # both in float64 (the engine's precision setting): round-off ~1e-15 on any CPU, where a wrong
    # batch order, learning rate or average moves the weights by more than 1e-4
    config = RunConfig(rounds=1, clients_per_round=3, batch_size=8, server_opt="sgd", server_lr=0.5,
                       precision="float64")
    e = Engine(config, data)
    e.run_round()
    expected = reference_round(data, config)
    assert e.w.dtype == torch.float64 and (e.w - expected).abs().max() < 1e-10
    assert not torch.allclose(e.w, Engine(config, data).w)  # the round did move the server


def test_client_sampling_without_replacement_and_seeded():
    data = tiny_federation(clients=20, n=2, m=1)
    e = Engine(RunConfig(rounds=1, clients_per_round=10), data)
    picks = [e.sample_clients(r) for r in range(50)]
    assert all(len(set(p)) == 10 for p in picks)  # within a round: no repeats
    assert len({tuple(sorted(p)) for p in picks}) > 40  # across rounds: fresh draws
    assert np.array_equal(e.sample_clients(7), Engine(RunConfig(rounds=1, clients_per_round=10), data).sample_clients(7))


def test_metrics_and_history(tmp_path):
    data = tiny_federation(clients=4, n=16, m=6)
    doc = run(RunConfig(rounds=3, clients_per_round=2, batch_size=8, eval_every=2), tmp_path / "h.json",
              data=data, progress=False)
    assert [r["round"] for r in doc["records"]] == [2, 3]
    rec = doc["records"][-1]
    assert 0 <= rec["global_acc"] <= 1 and 0 <= rec["local_acc"] <= 1
    assert rec["bytes_down"] == rec["bytes_up"] == 3 * 2 * 4 * doc["model_parameters"]
    assert rec["cum_gib"] == pytest.approx(2 * rec["bytes_up"] / 2**30)
    assert 1 <= rec["local_clients"] <= 4
    on_disk = json.loads((tmp_path / "h.json").read_text())
    assert on_disk["complete"] and on_disk["records"] == doc["records"]
    assert checkpoint_path(tmp_path / "h.json").exists()


def test_checkpoints_go_outside_the_work_tree_and_never_collide(tmp_path, monkeypatch):
    from emfl.nn.runner import checkpoint_dir

    data = tiny_federation(clients=4, n=16, m=4)
    cfg = dict(rounds=2, clients_per_round=2, batch_size=8)
    for folder in ("x", "y"):  # two histories of one name in two folders
        run(RunConfig(**cfg), tmp_path / folder / "h.json", data=data, progress=False)
    found = sorted(p.name for p in checkpoint_dir().iterdir())
    assert len(found) == 2 and all(n.startswith("h.json.") and n.endswith(".ckpt") for n in found)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["h.json"]  # nothing beside the history
    # --checkpoint-dir, then the environment, then the user's cache
    assert checkpoint_path(tmp_path / "h.json", tmp_path / "c").parent == tmp_path / "c"
    monkeypatch.setenv("EMFL_CHECKPOINT_DIR", str(tmp_path / "env"))
    assert checkpoint_dir() == tmp_path / "env"
    monkeypatch.delenv("EMFL_CHECKPOINT_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert checkpoint_dir() == tmp_path / "cache" / "emfl" / "checkpoints"


def test_a_checkpoint_left_beside_the_history_is_moved_and_resumed(tmp_path):
    data = tiny_federation(clients=4, n=16, m=4)
    cfg = dict(clients_per_round=2, batch_size=8, eval_every=1)
    out, elsewhere = tmp_path / "h.json", tmp_path / "ckpts"
    run(RunConfig(rounds=1, **cfg), out, data=data, progress=False, checkpoint_dir=elsewhere)
    old = tmp_path / "h.json.ckpt"  # where earlier versions kept it
    checkpoint_path(out, elsewhere).rename(old)
    doc = run(RunConfig(rounds=2, **cfg), out, data=data, resume=True, progress=False, checkpoint_dir=elsewhere)
    assert [r["round"] for r in doc["records"]] == [1, 2]
    assert not old.exists() and checkpoint_path(out, elsewhere).exists()


def test_global_accuracy_is_on_the_union_of_test_sets():
    data = tiny_federation(clients=3, n=4, m=5)
    e = Engine(RunConfig(rounds=1, clients_per_round=3), data)
    x, y = data.test_union()
    assert len(y) == 15
    load_state_vector(e.model, e.w)
    pred = e.model(data.normalize(x)).argmax(1)
    assert e.evaluate()["global_acc"] == pytest.approx((pred == y).float().mean().item())


def test_resume_is_bit_identical(tmp_path):
    data = tiny_federation(clients=5, n=16, m=4)
    cfg = dict(clients_per_round=2, batch_size=8, eval_every=1, checkpoint_every=1)
    straight = run(RunConfig(rounds=4, **cfg), tmp_path / "a.json", data=data, progress=False)
    run(RunConfig(rounds=2, **cfg), tmp_path / "b.json", data=data, progress=False)
    resumed = run(RunConfig(rounds=4, **cfg), tmp_path / "b.json", data=data, resume=True, progress=False)
    wa = load_checkpoint(checkpoint_path(tmp_path / "a.json"))["server"]["w"]
    wb = load_checkpoint(checkpoint_path(tmp_path / "b.json"))["server"]["w"]
    assert torch.equal(wa, wb)
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(straight["records"]) == strip(resumed["records"])


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = tiny_federation(clients=4, n=8, m=2)
    from emfl.nn.algorithms.fedavg import FedAvg
    from emfl.nn.messages import Dense

    real = FedAvg.client_update

    def poisoned(self, msg, job, rt):
        result = real(self, msg, job, rt)
        return result._replace(up=Dense(result.up.values * float("nan"))) if job.rnd == 2 else result

    monkeypatch.setattr(FedAvg, "client_update", poisoned)
    out = tmp_path / "nan.json"
    with pytest.raises(Diverged, match=r"round 3: .*no longer finite.*last good checkpoint \(round 2\)"):
        run(RunConfig(rounds=5, clients_per_round=2, batch_size=4, eval_every=1, checkpoint_every=1), out,
            data=data, progress=False)
    assert load_checkpoint(checkpoint_path(out))["round"] == 2
    assert [r["round"] for r in json.loads(out.read_text())["records"]] == [1, 2]


def test_fedpa_burn_in_rounds_are_fedavg_and_fedpa_runs():
    data = tiny_federation(clients=4, n=16, m=4)
    base = dict(rounds=1, clients_per_round=2, batch_size=8, local_epochs=3)
    a = Engine(RunConfig(algo="fedavg", **base), data)
    b = Engine(RunConfig(algo="fedpa", fedpa_burnin_rounds=1, **base), data)
    a.run_round()
    b.run_round()
    assert torch.equal(a.w, b.w)
    c = Engine(RunConfig(algo="fedpa", rho=0.5, **base), data)
    c.run_round()
    assert torch.isfinite(c.w).all() and not torch.equal(c.w, a.w)
    p = Engine(RunConfig(algo="fedprox", lam=1.0, **base), data)
    p.run_round()
    assert torch.isfinite(p.w).all() and not torch.equal(p.w, a.w)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(algo="fedsgd"), "unknown algorithm 'fedsgd'; choose one of fedavg, fedprox, fedpa"),
        (dict(task="mnist"), "task must be cifar10 or femnist or bits; got 'mnist'"),
        (dict(server_opt="foo"), "server_opt must be sgd or adam or adamax; got 'foo'"),
        (dict(model="vgg"), "model must be lenet5 or lenet5-classic or resnet20 or mlp-tanh; got 'vgg'"),
        (dict(client_batching="all"), "client_batching must be auto or loop or vmap; got 'all'"),
        (dict(seed=-1), "seed must be a whole number >= 0; got -1"),
        (dict(alpha=float("nan")), "alpha must be a positive number"),
        (dict(rounds=0), "rounds must be a whole number >= 1"),
        (dict(client_lr=-0.1), "client_lr must be a positive number"),
        (dict(algo="fedprox"), "fedprox needs --lam > 0"),
        (dict(algo="fedpa", local_epochs=1), "fedpa needs --local-epochs >= 2"),
        (dict(algo="fedpa", local_epochs=2, rho=-1.0), "rho must be a number >= 0"),
        (dict(rho=0.1), "fedavg has no setting 'rho' .*rho is a setting of fedpa"),
        (dict(device="tpu"), "device must be auto, cpu or cuda"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)


def test_run_refuses_to_lose_work(tmp_path):
    data = tiny_federation(clients=3, n=4, m=2)
    out = tmp_path / "r.json"
    run(RunConfig(rounds=1, clients_per_round=2), out, data=data, progress=False)
    with pytest.raises(RunError, match="already exists: pass --resume"):
        run(RunConfig(rounds=1, clients_per_round=2), out, data=data, progress=False)
    with pytest.raises(RunError, match="other settings \\(seed\\)"):
        run(RunConfig(rounds=2, clients_per_round=2, seed=5), out, data=data, resume=True, progress=False)
    # a history whose checkpoint is gone cannot be continued, and the error says what to do
    lone = tmp_path / "lone.json"
    lone.write_text(out.read_text())
    with pytest.raises(RunError, match="has no checkpoint .* choose another --out"):
        run(RunConfig(rounds=2, clients_per_round=2), lone, data=data, resume=True, progress=False)
    with pytest.raises(RunError, match="must name a .json file"):
        run(RunConfig(rounds=1), tmp_path / "r.txt", data=data, progress=False)
    checkpoint_path(out).write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="cannot be read"):
        run(RunConfig(rounds=2, clients_per_round=2), out, data=data, resume=True, progress=False)


class _Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code from a checkpoint ran')",))


def test_a_checkpoint_cannot_run_code(tmp_path):
    data = tiny_federation(clients=3, n=4, m=2)
    out = tmp_path / "r.json"
    run(RunConfig(rounds=1, clients_per_round=2), out, data=data, progress=False)
    state = load_checkpoint(checkpoint_path(out))
    state["payload"] = _Payload()
    torch.save(state, checkpoint_path(out))  # a bare state (the format before checksums)
    with pytest.raises(RunError, match="cannot be read"):
        run(RunConfig(rounds=2, clients_per_round=2), out, data=data, resume=True, progress=False)
    save_checkpoint(state, checkpoint_path(out))  # a correct checksum does not make code safe to run
    with pytest.raises(RunError, match="cannot be read"):
        run(RunConfig(rounds=2, clients_per_round=2), out, data=data, resume=True, progress=False)


def test_run_settings_are_declared_once():
    """Every run setting's flag, default, choices and check come from its declaration: the flags
    ``emfl run --help`` lists are the declared fields, with the declared defaults, and a value the
    declaration refuses fails when the RunConfig is made with the sentence the command line prints."""
    import argparse
    from dataclasses import fields as dc_fields

    from emfl.__main__ import _run_flags
    from emfl.nn.config import GENERIC_FIELDS
    from emfl.nn.settings import choices_of

    p = argparse.ArgumentParser()
    _run_flags(p)
    by_dest = {a.dest: a for a in p._actions}
    declared = {f.name: f for f in dc_fields(RunConfig) if f.name in GENERIC_FIELDS}
    for name, f in declared.items():
        if name == "preset":
            assert name not in by_dest  # set by --algo NAME-LEVEL, not a flag of its own
            continue
        action = by_dest[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default == f.default, name
        assert action.help and action.help == (f.metadata["help"] if name != "algo" else action.help)
        if "choices" in f.metadata:
            assert tuple(action.choices) == choices_of(f)
    assert by_dest["server_opt"].choices == ("sgd", "adam", "adamax")  # every optimiser emfl.optim has


def test_a_bad_run_setting_fails_where_it_is_made_with_the_cli_sentence(tmp_path, capsys):
    from emfl.__main__ import main

    for flag, value, name in (("--clients-per-round", "0", "clients_per_round"), ("--server-lr", "-1", "server_lr"),
                              ("--max-writers", "-2", "max_writers")):
        with pytest.raises(ValueError) as made:
            RunConfig(**{name: type(getattr(RunConfig(), name))(value)})
        assert main(["run", flag, value, "--out", str(tmp_path / "x.json"), "--data-dir", str(tmp_path)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {made.value}"


def test_cli_errors(tmp_path, capsys):
    from emfl.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--algo", "fedsgd", "--out", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and "invalid choice: 'fedsgd'" in capsys.readouterr().err
    assert main(["run", "--rounds", "-3", "--out", str(tmp_path / "x.json"), "--data-dir", str(tmp_path)]) == 2
    assert "rounds must be a whole number >= 1" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "x.json"), "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "x.json"), "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no usable CIFAR-10" in err and "--download" in err
    # the real entry point, once
    out = subprocess.run([sys.executable, "-m", "emfl", "run", "--task", "svhn", "--out", "x.json"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'svhn'" in out.stderr


@pytest.mark.numeric
@pytest.mark.parametrize("algo", [name for name, a in ALGORITHMS.items() if a.pure_client])
def test_batched_clients_equal_the_loop(algo):
    """The vmap path (used on CUDA) trains the same batches with the same SGD as the loop, for
    every algorithm that declares its client update pure."""
    data = tiny_federation(clients=5, n=20, m=4)
    # float64: the batched and the looped kernels round differently (and differently on each CPU);
    # in float64 that is ~1e-12, far below what a wrong batch, step or control variate would change
    base = dict(algo=algo, rounds=2, clients_per_round=3, batch_size=8, server_opt="sgd", server_lr=1.0,
                precision="float64", **ALGORITHMS[algo].EXAMPLE)
    loop = Engine(RunConfig(client_batching="loop", **base), data)
    vmapped = Engine(RunConfig(client_batching="vmap", **base), data)
    for _ in range(2):  # the second round starts from what the first left (control variates)
        a, b = loop.run_round(), vmapped.run_round()
    assert vmapped.uses_vmap(vmapped.sample_clients(0)) and not loop.uses_vmap(loop.sample_clients(0))
    assert loop.w.dtype == torch.float64 and torch.allclose(loop.w, vmapped.w, rtol=0, atol=1e-10)
    for key, value in loop.server.items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(value, vmapped.server[key], rtol=0, atol=1e-10), key
    assert loop.memory.keys() == vmapped.memory.keys()
    assert all(torch.allclose(loop.memory[s], vmapped.memory[s], rtol=0, atol=1e-9) for s in loop.memory)
    assert np.allclose(loop.local_acc, vmapped.local_acc, equal_nan=True)
    assert (loop.bytes_down, loop.bytes_up) == (vmapped.bytes_down, vmapped.bytes_up)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-10)
    with pytest.raises(ValueError, match="client_batching=vmap needs"):
        Engine(RunConfig(client_batching="vmap", **{**base, "model": "resnet20"}), data).run_round()


def test_batched_clients_refused_where_the_client_is_not_pure():
    data = tiny_federation(clients=4, n=16, m=4)
    impure = [name for name, a in ALGORITHMS.items() if not a.pure_client]
    assert impure  # FedSparse, FedDrop and FedPA train more than a pure loss
    for algo in impure:
        e = Engine(RunConfig(algo=algo, rounds=1, clients_per_round=2, client_batching="vmap",
                             **ALGORITHMS[algo].EXAMPLE), data)
        with pytest.raises(ValueError, match="client_batching=vmap needs an algorithm whose client update is pure"):
            e.run_round()


def test_history_loading_and_plotting(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emfl.nn import history

    data = tiny_federation(clients=3, n=8, m=2)
    run(RunConfig(rounds=2, clients_per_round=2, eval_every=1), tmp_path / "h.json", data=data, progress=False)
    doc = history.load_history(tmp_path / "h.json")
    assert history.column(doc, "round").tolist() == [1.0, 2.0]
    s = history.summary(doc)
    assert s["rounds"] == 2 and s["algo"] == "fedavg" and s["device"] == "cpu"
    fig, ax = plt.subplots()
    line = history.plot_metric(ax, doc, "local_acc", x="cum_gib")
    assert line.get_xdata().tolist() == history.column(doc, "cum_gib").tolist()
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="python -m emfl run"):
        history.load_history(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{]")
    with pytest.raises(ValueError, match="not valid JSON"):
        history.load_history(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a run history"):
        history.load_history(tmp_path / "other.json")
    with pytest.raises(KeyError, match="unknown metric 'accuracy'"):
        history.column(doc, "accuracy")


def test_local_model_ages_by_hand():
    """Two clients, one a round: both are sampled every round, so the last models are 0 rounds
    old; with 10 clients and 1 a round over 3 rounds, 3 clients are seen, 2, 1 and 0 rounds ago."""
    from emfl.nn.seeding import local_model_ages, sample_clients

    assert sorted(local_model_ages(0, 4, 2, 2).tolist()) == [0, 0]
    ages = local_model_ages(0, 3, 10, 1)
    firsts = [int(sample_clients(0, r, 10, 1)[0]) for r in range(3)]
    assert len(set(firsts)) == len(ages) and (len(ages) < 3 or sorted(ages.tolist()) == [0, 1, 2])


class _Softmax(torch.nn.Module):
    """Multinomial logistic regression on 4x4 images: 16 x 3 + 3 = 51 parameters, so that
    FedPA's covariance can be formed and solved directly."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1))


def _softmax_world(monkeypatch, clients=3, sizes=None):
    from emfl.nn import models

    monkeypatch.setitem(models.MODELS, "softmax", _Softmax)
    data = tiny_federation(clients=clients, n=12, m=4, shape=(1, 4, 4), classes=3)
    if sizes is not None:  # clients of unequal sizes
        data.train_x = [x[:n] for x, n in zip(data.train_x, sizes)]
        data.train_y = [y[:n] for y, n in zip(data.train_y, sizes)]
    return data


@pytest.mark.numeric
def test_fedpa_client_delta_is_the_exact_shrinkage_solve(monkeypatch):
    """The engine's client (IASG samples, then the O(l^2 d) delta) against a replay by hand: plain
    SGD on the same minibatches, one average of the iterates per epoch after the first, and
    ``fedpa.delta_exact`` (forming Sigma and solving) in float64."""
    from torch.nn import functional as F

    from emfl import fedpa
    from emfl.nn.seeding import ClientJob
    from emfl.nn.state import load_state_vector, state_vector

    data = _softmax_world(monkeypatch)
    e = Engine(RunConfig(algo="fedpa", model="softmax", local_epochs=4, batch_size=4, rho=0.5, rounds=1,
                         client_lr=0.1, clients_per_round=data.num_clients, precision="float64"), data)
    algo = e.algorithm
    _, down = algo.server_message(e.server)
    up = algo.client_update(down, ClientJob(0, 0, 1), e.runtime).up
    model = _Softmax((1, 4, 4), 3).double()
    load_state_vector(model, down.values)
    gen = ClientJob(0, 0, 1).gen
    samples = []
    for epoch in range(4):
        iterates = []
        for x, y in e.batches(1, gen):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= 0.1 * g
            iterates.append(state_vector(model).double())
        if epoch >= 1:
            samples.append(torch.stack(iterates).mean(0).numpy())
    expected = fedpa.delta_exact(np.stack(samples), down.values.double().numpy(), 0.5)
    # both float64: the engine's Sherman-Morrison updates against an explicit solve, to round-off
    np.testing.assert_allclose(up["delta"].values.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert up["n"].value == 12 and up.nbytes == 8 * 51 + 4  # 51 float64 values and a 4-byte count
    fedavg_delta = down.values.double().numpy() - samples[-1]
    assert not np.allclose(expected, fedavg_delta, rtol=1e-2)


@pytest.mark.numeric
def test_fedpa_weights_the_deltas_by_example_counts(monkeypatch):
    """Clients of 3, 6 and 12 examples; with server SGD at rate 1 the new model is
    w - sum_s q_s Delta_s, q = (3, 6, 12) / 21, or q = 1/3 each with --fedpa-weighting uniform."""
    data = _softmax_world(monkeypatch, sizes=[3, 6, 12])
    runs = {}
    for weighting in ("examples", "uniform"):
        e = Engine(RunConfig(algo="fedpa", model="softmax", local_epochs=2, batch_size=3, rounds=1, clients_per_round=3,
                             server_opt="sgd", server_lr=1.0, fedpa_weighting=weighting, precision="float64"), data)
        sent = []
        update = e.algorithm.client_update
        e.algorithm.client_update = lambda msg, job, rt: sent.append((job.s, update(msg, job, rt))) or sent[-1][1]
        w0 = e.w.clone()
        e.run_round()
        runs[weighting] = (w0, e.w.clone(), {s: r.up["delta"].values for s, r in sent})
    for weighting, q in (("examples", {0: 3 / 21, 1: 6 / 21, 2: 12 / 21}), ("uniform", {0: 1 / 3, 1: 1 / 3, 2: 1 / 3})):
        w0, w1, deltas = runs[weighting]
        expected = w0 - sum(q[s] * deltas[s] for s in range(3))
        assert torch.allclose(w1, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(runs["examples"][1], runs["uniform"][1], atol=1e-4)
