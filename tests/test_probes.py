"""The 12-bit task, the engine's observers and the information probe, checked by hand."""

import numpy as np
import pytest
import torch

from emfl.nn.bits import bit_patterns, bits_federation
from emfl.nn.config import RunConfig
from emfl.nn.engine import Engine
from emfl.nn.models import TanhMLP
from emfl.nn.state import state_vector
from emfl.nn.probes import InfoProbe, layer_activations, local_steps


def test_the_patterns_are_all_4096_in_counting_order_half_of_them_labelled_one():
    x, y = bit_patterns()
    assert x.shape == (4096, 12) and len(np.unique(x, axis=0)) == 4096
    assert x[5].tolist() == [0] * 9 + [1, 0, 1]  # 5 = 101 in binary
    assert y.sum() == 2048


def test_clients_hold_disjoint_shares_iid_or_skewed():
    iid = bits_federation(10, None, seed=0)
    assert [len(t) for t in iid.train_y] == [(4096 - 819) // 10] * 10  # 819 = round(0.2 * 4096) held out
    seen = torch.cat([x.view(len(x), -1) for x in iid.train_x] + [iid.global_x.view(819, -1)])
    assert len(torch.unique(seen, dim=0)) == len(seen)  # no pattern twice, none both trained on and tested
    assert all(0.35 < float(t.float().mean()) < 0.65 for t in iid.train_y)
    skewed = bits_federation(10, 0.1, seed=0)
    assert sum(float(t.float().mean()) in (0.0, 1.0) for t in skewed.train_y) >= 3  # one label only
    with pytest.raises(ValueError, match="alpha must be None"):
        bits_federation(10, -1.0)


def test_local_steps_count_the_minibatches():
    assert local_steps(327, 32, 1) == 11  # ten full batches and one of 7
    assert local_steps(327, 327, 1) == 1 and local_steps(327, 32, 5) == 55
    from emfl.nn.probes import period_label

    assert period_label(1) == "1 local step a round" and period_label(11) == "11 local steps a round"


class _Count:
    def __init__(self):
        self.calls = []

    def client_model(self, engine, rnd, s, model):
        self.calls.append(("client", rnd, s, state_vector(model).clone()))

    def server_model(self, engine, rnd, model):
        self.calls.append(("server", rnd, None, state_vector(model).clone()))


@pytest.mark.numeric
def test_observers_see_each_clients_model_before_averaging_and_the_servers_after():
    cfg = RunConfig(task="bits", model="mlp-tanh", rounds=2, num_shards=4, clients_per_round=3, alpha=1.0,
                    server_opt="sgd", server_lr=1.0, device="cpu")
    e = Engine(cfg, bits_federation(4, None, seed=0))
    watch = _Count()
    e.observers.append(watch)
    e.run_round()
    e.run_round()
    assert [(who, rnd) for who, rnd, _, _ in watch.calls] == [("client", 1)] * 3 + [("server", 1)] + [("client", 2)] * 3 + [("server", 2)]
    clients = [w for who, rnd, _, w in watch.calls if who == "client" and rnd == 2]
    server = watch.calls[-1][3]
    assert torch.allclose(server, torch.stack(clients).mean(0), atol=1e-6)  # plain averaging: the mean of the clients
    assert torch.equal(server, e.w)


def test_the_probe_reads_one_bit_from_a_layer_that_copies_one_input_bit():
    model = TanhMLP()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.fc1.weight[:, 0] = 10.0  # every unit of act1 is tanh(10 z_0): the first bit, as +-1
    x, y = bit_patterns()
    inputs = torch.from_numpy(2.0 * x - 1.0).float()
    T = layer_activations(model, inputs.view(-1, 1, 1, 12), ["act1", "act2"])
    assert T["act1"].shape == (4096, 10) and T["act2"].shape == (4096, 7)
    assert set(np.round(T["act1"][:, 0], 6)) == {round(np.tanh(10.0), 6), round(np.tanh(-10.0), 6)}
    from emfl import info

    assert info.binning(T["act1"], y, 30, -1, 1).ixt == 1.0  # two symbols, 2,048 patterns each
    assert info.binning(T["act2"], y, 30, -1, 1).ixt == 0.0  # act2's weights are zero: one symbol
    with pytest.raises(ValueError, match="no layers"):
        layer_activations(model, inputs.view(-1, 1, 1, 12), ["act9"])


def test_the_info_probe_records_every_model_and_layer_on_its_rounds():
    cfg = RunConfig(task="bits", model="mlp-tanh", rounds=4, num_shards=4, clients_per_round=2, alpha=1.0,
                    server_opt="sgd", server_lr=1.0, device="cpu")
    e = Engine(cfg, bits_federation(4, None, seed=0))
    x, y = bit_patterns()
    probe = InfoProbe(torch.from_numpy(x * 255).view(-1, 1, 1, 12), y, ("act1", "act3"), every=2, kde_points=200)
    e.observers.append(probe)
    for _ in range(4):
        e.run_round()
    assert len(probe.records) == 2 * (2 + 1) * 2  # rounds 2 and 4; two clients and the server; two layers
    assert {r["round"] for r in probe.records} == {2, 4}
    assert [st["round"] for st in probe.server_states] == [2, 4]
    assert probe.server_states[-1]["w"] == e.w.tolist()
    for r in probe.records:
        assert 0 <= r["ity"] <= 1 + 1e-12 and 0 <= r["ixt"] <= 12 + 1e-12  # I(T;Y) <= H(Y) = 1, I(X;T) <= log2 4096
    with pytest.raises(ValueError, match="every must be"):
        InfoProbe(torch.zeros(1), [0], ("act1",), every=0)


def _probed():
    rec = lambda rnd, who, s, layer, ixt, ity: {"round": rnd, "model": who, "client": s, "layer": layer, "ixt": ixt,
                                                  "ity": ity, "kde_ixt": ixt / 2, "kde_ity": ity / 2}
    return {"probes": [rec(0, "server", None, "act1", 3.0, 0.1),
                       rec(5, "client", 0, "act1", 4.0, 0.2), rec(5, "client", 1, "act1", 6.0, 0.4),
                       rec(5, "server", None, "act1", 5.5, 0.5)]}


def test_probe_points_and_the_jump_at_averaging_by_hand():
    from emfl.nn.probes import averaging_jumps, probe_points

    doc = _probed()
    rounds, ixt, ity = probe_points(doc, "act1", "client")
    assert rounds.tolist() == [5] and ixt.tolist() == [5.0] and ity.tolist() == pytest.approx([0.3])  # the clients' mean
    assert probe_points(doc, "act1", "server", "kde_")[1].tolist() == [1.5, 2.75]
    r, before, after = averaging_jumps(doc, "act1")
    assert r.tolist() == [5] and before.tolist() == pytest.approx([0.3]) and after.tolist() == [0.5]
    with pytest.raises(ValueError, match="no server probes of layer 'act7'"):
        probe_points(doc, "act7")


def test_the_plane_draws_each_layer_in_the_colour_other_figures_read_and_names_it_on_request():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import same_color

    from emfl.nn.probes import layer_colours, plot_info_plane

    doc = _probed()
    doc["probes"] += [{**r, "layer": "act2", "ixt": r["ixt"] / 2} for r in doc["probes"]]
    colours = layer_colours(doc)
    assert list(colours) == ["act1", "act2"] and not same_color(colours["act1"], colours["act2"])
    fig, ax = plt.subplots()
    plot_info_plane(ax, doc, legend=True)
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"act1", "act2"} and all(same_color(lines[k].get_color(), colours[k]) for k in lines)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["act1", "act2"]
    plot_info_plane(ax2 := fig.add_subplot(2, 1, 2), doc)
    assert ax2.get_legend() is None
    plt.close(fig)


def test_a_probed_run_keeps_what_the_plane_needs_and_its_weights_reproduce_its_numbers():
    from emfl import info
    from emfl.nn.probes import info_flow, server_activations

    doc = info_flow(rounds=2, every=2, clients=3, batch_size=273, layers=("act1", "act4"))
    assert doc["config"]["local_steps"] == local_steps((4096 - 819) // 3, 273, 1) == 4  # 1,092 patterns each: 4 batches of 273
    assert [r["round"] for r in doc["records"]] == [2]
    assert {(r["round"], r["model"]) for r in doc["probes"]} == {(0, "server"), (2, "client"), (2, "server")}
    T, y = server_activations(doc, 2, ["act4"])
    again = info.binning(T["act4"], y, 30, -1, 1)
    kept = [r for r in doc["probes"] if r["round"] == 2 and r["model"] == "server" and r["layer"] == "act4"][0]
    assert again.ixt == pytest.approx(kept["ixt"], abs=1e-9) and again.ity == pytest.approx(kept["ity"], abs=1e-9)


def test_probed_runs_load_by_split_and_period_and_a_broken_file_says_so(tmp_path):
    import json

    from emfl.nn.probes import load_info_runs

    for name, alpha, steps in (("b", 0.1, 11), ("a", 1000.0, 55), ("c", 1000.0, 1)):
        (tmp_path / f"bits_{name}.json").write_text(json.dumps({"config": {"alpha": alpha, "local_steps": steps}}))
    assert list(load_info_runs(tmp_path)) == [("IID", 1), ("IID", 55), ("Dirichlet 0.1", 11)]
    (tmp_path / "bits_z.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a probed run"):
        load_info_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m emfl info-flow"):
        load_info_runs(tmp_path / "nothing")


def test_a_relu_read_layer_that_is_all_negative_holds_nothing_and_weights_can_be_left_out():
    from emfl.nn.data import generated_federation

    fed = generated_federation(4, 8, 4, (1, 28, 28), 62, 0)
    e = Engine(RunConfig(task="femnist", rounds=1, clients_per_round=2, batch_size=8, device="cpu"), fed)
    with torch.no_grad():
        e.model.fc1.bias.fill_(-100.0)  # pre-activations vary with the input but are all negative
    x, y = fed.test_union()
    on = InfoProbe(x, y.numpy(), ("fc1",), lo=None, hi=None, relu=("fc1",), keep_weights=False)
    off = InfoProbe(x, y.numpy(), ("fc1",), lo=None, hi=None)
    for probe in (on, off):
        probe.server_model(e, 0, e.model)
    assert on.records[0]["ixt"] == 0.0 and on.records[0]["ity"] == 0.0  # after the ReLU: all 0, one symbol
    assert off.records[0]["ixt"] == pytest.approx(np.log2(len(y)))  # before it: every image its own symbol
    assert on.server_states == [] and len(off.server_states) == 1


def test_info_flow_on_a_missing_data_folder_says_what_to_do(tmp_path, capsys):
    from emfl.__main__ import main

    assert main(["info-flow", "--task", "femnist", "--data-dir", str(tmp_path / "nowhere"), "--rounds", "1",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
