"""Run histories compared in the paper's form: names, rounds, the table, plots, quick mode."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from emfl.nn import history  # noqa: E402


def _doc(algo, records, **cfg):
    return {"config": {"algo": algo, "task": "cifar10", "rounds": 20, **cfg}, "records": records}


def _rec(rnd, g, l, gib, **extra):
    return {"round": rnd, "global_acc": g, "local_acc": l, "cum_gib": gib, **extra}


FEDAVG = _doc("fedavg", [_rec(10, 0.30, 0.70, 0.5), _rec(20, 0.40, 0.80, 1.0)])
MID = _doc("fedsparse", [_rec(10, 0.28, 0.72, 0.4, sparsity=0.25), _rec(20, 0.38, 0.82, 0.7, sparsity=0.5)], lam0=5e-6, sparse_reg="example")


def test_method_names_follow_the_paper():
    assert history.method_name(FEDAVG) == "FedAvg"
    assert history.method_name(MID) == "FedSparse mid"
    assert history.method_name(_doc("fedsparse", [], lam0=5e-5, sparse_reg="example")) == "FedSparse high"
    assert history.method_name(_doc("fedsparse", [], lam0=1e-4, sparse_reg="example")) == "FedSparse (lam0 = 0.0001)"
    assert history.method_name(_doc("feddrop", [])) == "FedDrop"
    assert history.method_name(_doc("fedspa", [], density=0.2)) == "FedSpa D = 0.2"  # one name per density


def test_record_at_takes_the_last_evaluation_up_to_the_round():
    assert history.record_at(FEDAVG, 20)["global_acc"] == 0.40
    assert history.record_at(FEDAVG, 15)["round"] == 10
    with pytest.raises(ValueError, match="no evaluated round <= 5"):
        history.record_at(FEDAVG, 5)


def test_comparison_by_hand_and_beside_the_paper():
    rows = history.comparison({"FedAvg": FEDAVG, "FedSparse mid": MID}, 20)
    assert rows[1]["comm_vs_fedavg"] == pytest.approx(0.7)  # 0.7 GiB against FedAvg's 1.0
    assert rows[1]["sparsity"] == pytest.approx(50.0) and rows[0]["sparsity"] is None
    assert rows[1]["local_acc"] == pytest.approx(82.0)
    text = history.format_comparison(rows, "cifar10")
    mid_line = text.splitlines()[3]
    assert mid_line.split()[:2] == ["FedSparse", "mid"]
    assert "46.8" in mid_line and "0.54" in mid_line  # the paper: 46.8 % sparse, 35 / 65 GB


def test_load_runs_keeps_the_longest_history_of_each_method(tmp_path):
    (tmp_path / "cifar10_fedavg_seed0.json").write_text(json.dumps(FEDAVG))  # to round 20
    (tmp_path / "schedule").mkdir()
    longer = _doc("fedavg", FEDAVG["records"] + [_rec(30, 0.45, 0.85, 1.5)])
    (tmp_path / "schedule" / "cifar10_fedavg_seed0.json").write_text(json.dumps(longer))
    (tmp_path / "schedule" / "cifar10_fedsparse-mid_seed0.json").write_text(json.dumps(_doc("fedsparse", MID["records"][:1], lam0=5e-6, sparse_reg="example")))
    (tmp_path / "cifar10_fedsparse-mid_seed0.json").write_text(json.dumps(MID))  # the longer one beside
    assert history.summary(history.load_runs(tmp_path, "cifar10")["FedAvg"])["rounds"] == 20
    both = history.load_runs(tmp_path, "cifar10", subdirs=("schedule",))
    assert [history.record_at(d, 100)["round"] for d in both.values()] == [30, 20]


def test_load_runs_orders_rows_like_the_paper(tmp_path):
    (tmp_path / "cifar10_fedsparse-mid_seed0.json").write_text(json.dumps(MID))
    (tmp_path / "cifar10_fedavg_seed0.json").write_text(json.dumps(FEDAVG))
    assert list(history.load_runs(tmp_path, "cifar10")) == ["FedAvg", "FedSparse mid"]
    with pytest.raises(FileNotFoundError, match="no run histories femnist_"):
        history.load_runs(tmp_path, "femnist")


def test_plot_runs_skips_runs_without_the_metric_and_cuts_rounds():
    fig, ax = plt.subplots()
    history.plot_runs(ax, {"FedAvg": FEDAVG, "FedSparse mid": MID}, "sparsity", max_round=10)
    assert [line.get_label() for line in ax.lines] == ["FedSparse mid"]
    assert ax.lines[0].get_xdata().tolist() == [10.0]
    plt.close(fig)


def test_quick_mode_is_on_unless_switched_off(monkeypatch):
    monkeypatch.delenv("EMFL_QUICK", raising=False)
    assert history.quick_mode()
    monkeypatch.setenv("EMFL_QUICK", "0")
    assert not history.quick_mode()


def test_live_runs_fall_back_to_generated_data_and_write_nothing(tmp_path):
    from emfl.nn.config import RunConfig
    from emfl.nn.runner import data_or_generated, run_in_memory

    cfg = RunConfig(task="femnist", algo="fedsparse", rounds=2, eval_every=1, clients_per_round=2)
    data, source = data_or_generated(cfg, tmp_path)  # an empty folder: no FEMNIST here
    assert source.startswith("generated images (") and data.input_shape == (1, 28, 28)
    records = run_in_memory(cfg, data)
    assert [r["round"] for r in records] == [1, 2] and "sparsity" in records[-1]
    assert list(tmp_path.iterdir()) == []


def test_gib_to_reach_reads_the_first_evaluation_at_the_level():
    assert history.gib_to_reach(FEDAVG, "local_acc", 0.75) == 1.0  # 0.70 at 0.5 GiB, 0.80 at 1.0
    assert history.gib_to_reach(MID, "local_acc", 0.72) == 0.4
    assert history.gib_to_reach(MID, "global_acc", 0.9) is None


def test_cut_keeps_the_rounds_up_to_the_limit():
    assert [r["round"] for r in history.cut(FEDAVG, 10)["records"]] == [10]
    assert history.cut(FEDAVG, None) is FEDAVG
    assert history.gib_to_reach(history.cut(FEDAVG, 10), "local_acc", 0.75) is None


def test_a_shorter_run_is_compared_with_fedavg_over_its_own_rounds():
    short = _doc("feddrop", [_rec(10, 0.3, 0.7, 0.25)])
    rows = history.comparison({"FedAvg": FEDAVG, "FedDrop": short}, 20)
    assert rows[1]["round"] == 10 and rows[1]["comm_vs_fedavg"] == pytest.approx(0.5)  # 0.25 / 0.5


def _study_doc(level, reading, sparsity, own, gib, task="cifar10"):
    """A FedSparse history of 100 rounds of a 1,000-value model, 10 clients a round: FedAvg would
    send 2 x 10 x 4 x 1,000 bytes x 100 rounds = 8e6 bytes."""
    return {"config": {"algo": "fedsparse", "task": task, "rounds": 100, "clients_per_round": 10,
                       "lam0": history.LAM0_LEVELS[level], "sparse_reg": reading},
            "model_parameters": 1000,
            "records": [_rec(100, 0.5, 0.8, gib, sparsity=sparsity, sparsity_own=own)]}


def test_the_lam0_study_by_hand():
    fedavg = 8e6 / 2**30
    runs = [_study_doc("high", "batch", 0.70, 0.40, 0.5 * fedavg), _study_doc("high", "example", 0.40, 0.20, 0.8 * fedavg),
            _study_doc("low", "batch", 0.30, 0.10, 0.9 * fedavg), _study_doc("low", "example", 0.0, 0.0, fedavg),
            _study_doc("low", "example", 0.0, 0.0, fedavg, task="femnist"), FEDAVG]
    rows = history.lam0_study(runs, "cifar10")
    assert [(r["reading"], r["level"]) for r in rows] == [("batch", "low"), ("batch", "high"), ("example", "low"),
                                                         ("example", "high")]
    high = rows[1]
    assert high["sparsity"] == pytest.approx(70) and high["sparsity_own"] == pytest.approx(40)
    assert high["comm_vs_fedavg"] == pytest.approx(0.5)
    assert high["paper_sparsity"] == 66.5 and high["paper_comm_vs_fedavg"] == pytest.approx(23 / 65)
    fit = history.reading_fit(rows)
    # batch: |70 - 66.5| and |30 - 21.4| -> 6.05; example: |40 - 66.5| and |0 - 21.4| -> 23.95
    assert fit["batch"]["sparsity_gap"] == pytest.approx(6.05) and fit["example"]["sparsity_gap"] == pytest.approx(23.95)
    assert fit["batch"]["comm_gap"] == pytest.approx((abs(0.5 - 23 / 65) + abs(0.9 - 52 / 65)) / 2)
    text = history.format_lam0_study(rows)
    assert "batch    high    100 |     70.0  40.0      0.50" in text
    fig, ax = plt.subplots()
    history.plot_lam0_study(ax, rows, "CIFAR-10")
    assert len(ax.lines) == 5 and ax.get_xscale() == "log"  # 2 readings x (structural, own) + the paper
    plt.close(fig)


def test_the_reading_that_is_not_the_default_is_named():
    from emfl.nn.algorithms.fedsparse import Params

    other = "example" if Params.sparse_reg == "batch" else "batch"
    assert history.method_name(_doc("fedsparse", [], lam0=5e-5, sparse_reg=Params.sparse_reg)) == "FedSparse high"
    assert history.method_name(_doc("fedsparse", [], lam0=5e-5, sparse_reg=other)) == f"FedSparse high, {other}"
    # histories from before the setting existed used the batch scale
    assert history.method_name(_doc("fedsparse", [], lam0=5e-5)) == "FedSparse high, batch"


def _bytes_rec(rnd, down, up):
    return {"round": rnd, "global_acc": 0.5, "local_acc": 0.5, "bytes_down": down, "bytes_up": up,
            "cum_gib": (down + up) / 2 ** 30}


def test_communication_extrapolates_exactly_once_each_round_sends_the_same():
    # 100 rounds a record; from round 100 on each round sends 3 MiB down and 1 MiB up
    recs = [_bytes_rec(100, 500 * 2 ** 20, 200 * 2 ** 20)]
    for k in range(1, 4):
        recs.append(_bytes_rec(100 + 100 * k, (500 + 300 * k) * 2 ** 20, (200 + 100 * k) * 2 ** 20))
    doc = _doc("fedavg", recs)
    gib, spread = history.extrapolate_gib(doc, 6000)
    assert spread == 0.0
    assert gib == (1900 + 4 * (6000 - 400)) / 1024  # 1,400 + 500 MiB by round 400, then 4 MiB a round
    assert history.extrapolate_gib(doc, 300) == (recs[2]["cum_gib"], 0.0)  # reached: read, not extrapolated
    recs[-1] = _bytes_rec(400, 1500 * 2 ** 20, 500 * 2 ** 20)  # the last interval sends 5 MiB a round
    gib, spread = history.extrapolate_gib(_doc("fedavg", recs), 500)
    assert spread == pytest.approx((5 - 4) / (13 / 3))  # rates 4, 4, 5 MiB: mean 13/3
    assert gib == pytest.approx((2000 + 13 / 3 * 100) / 1024)  # 2,000 MiB by round 400, then the mean rate
    with pytest.raises(ValueError, match="need 4 evaluated rounds"):
        history.extrapolate_gib(_doc("fedavg", recs[:2]), 500)


def test_the_seed_spread_by_hand_and_runs_that_differ_in_more_than_the_seed():
    docs = [_doc("fedavg", [_rec(200, g, 0.8, 1.0)], seed=s) for s, g in ((0, 0.60), (1, 0.58), (2, 0.65))]
    spread = history.seed_spread(docs, 200)
    assert spread["min"] == 0.58 and spread["max"] == 0.65 and spread["n"] == 3 and spread["seeds"] == [0, 1, 2]
    assert spread["mean"] == pytest.approx(0.61)
    with pytest.raises(ValueError, match="differ in lam0"):
        history.seed_spread([_doc("fedsparse", [_rec(200, 0.5, 0.8, 1.0)], lam0=5e-6, seed=0),
                             _doc("fedsparse", [_rec(200, 0.5, 0.8, 1.0)], lam0=5e-5, seed=1)], 200)


def test_the_table_at_each_runs_last_round_names_a_run_still_going():
    fedavg = _doc("fedavg", [_rec(10, 0.30, 0.70, 0.5), _rec(20, 0.40, 0.80, 1.0)])
    short = _doc("fedsparse", [_rec(10, 0.28, 0.72, 0.4, sparsity=0.25)], lam0=5e-6, sparse_reg="example")
    rows = history.comparison({"FedAvg": fedavg, "FedSparse mid": short})
    assert [(r["round"], r["planned"]) for r in rows] == [(20, 20), (10, 20)]
    assert rows[1]["comm_vs_fedavg"] == pytest.approx(0.4 / 0.5)  # FedAvg at the same round, 10
    text = history.format_comparison(rows, "cifar10")
    assert " 10/20 |" in text and " 20 |" in text and "20/20" not in text
    text = history.format_comparison(history.comparison({"FedAvg": fedavg, "FedSparse mid": short}, planned=100), "cifar10")
    assert " 10/100 |" in text and " 20/100 |" in text  # against the schedule, not each run's own plan


def test_what_an_accuracy_costs_by_hand():
    doc = _doc("fedavg", [_rec(10, 0.30, 0.70, 0.5), _rec(20, 0.40, 0.80, 1.0), _rec(30, 0.38, 0.85, 1.5)])
    assert history.first_reach(doc, "global_acc", 0.35)["round"] == 20
    assert history.first_reach(doc, "global_acc", 0.45) is None
    text = history.reach_table({"FedAvg": doc}, [("global_acc", 0.40), ("local_acc", 0.9)])
    row = text.splitlines()[-1].split()
    assert row == ["FedAvg", "30", "|", "1.00", "(20)", "-"]


def test_the_round_from_which_sparsity_stays_put():
    sp = [0.10, 0.30, 0.35, 0.352, 0.352]
    doc = _doc("fedsparse", [_rec(10 * (k + 1), 0.3, 0.7, 0.1 * k, sparsity=s) for k, s in enumerate(sp)], lam0=5e-6)
    assert history.settled_round(doc, "sparsity", tol=0.005) == 30  # 0.35 is within 0.005 of 0.352
    assert history.settled_round(doc, "sparsity", tol=0.0) == 40
    assert history.settled_round(FEDAVG, "sparsity") is None


def test_the_extrapolation_table_reads_exact_rates_and_leaves_short_runs_out():
    mib = 2 ** 20
    fedavg = _doc("fedavg", [_bytes_rec(100 * k, 4 * mib * 100 * k, 4 * mib * 100 * k) for k in range(1, 5)])
    short = _doc("fedavg", [_bytes_rec(100, 400 * mib, 400 * mib)])
    text = history.extrapolation_table({"FedAvg": fedavg, "FedDrop": short}, 1000, "femnist")
    fed, drop = text.splitlines()[2].split(), text.splitlines()[3].split()
    assert fed[:7] == ["FedAvg", "400", f"{3200 / 1024:.2f}", "|", f"{8000 / 1024:.2f}", "0.0%", "1.00"]
    assert drop[3:7] == ["|", "-", "-", "-"]
    assert fed[-2:] == ["272", "1.00"] and drop[-2:] == ["168", f"{168 / 272:.2f}"]


def test_a_setting_an_older_history_does_not_record_is_no_difference():
    old = _doc("fedavg", [_rec(200, 0.58, 0.8, 1.0)], seed=1)
    new = _doc("fedavg", [_rec(200, 0.60, 0.8, 1.0)], seed=0, rho=0.01, preset=None)
    old["config"]["preset"] = ""
    assert history.seed_spread([new, old], 200)["n"] == 2
    with pytest.raises(ValueError, match="differ in rho"):
        history.seed_spread([new, _doc("fedavg", [_rec(200, 0.6, 0.8, 1.0)], seed=2, rho=0.5)], 200)


def test_one_line_per_seed_and_one_label_per_method():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = {"FedAvg": [_doc("fedavg", [_rec(10, 0.3, 0.7, 0.5), _rec(20, 0.4, 0.8, 1.0)], seed=s) for s in (0, 1)],
             "FedSparse mid": [_doc("fedsparse", [_rec(10, 0.2, 0.7, 0.5)], lam0=5e-6, seed=s) for s in (0, 1, 2)]}
    fig, ax = plt.subplots()
    history.plot_seeds(ax, seeds, max_round=10)
    assert len(ax.lines) == 5
    assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] == [
        "FedAvg, seeds 0, 1", "FedSparse mid, seeds 0, 1, 2"]
    assert list(ax.lines[0].get_xdata()) == [10]  # cut at round 10
    assert ax.lines[2].get_color() == history.COLOURS["FedSparse mid"]
    plt.close(fig)


def test_the_rerun_spread_by_hand(tmp_path):
    # the committed run and two re-runs of it under other CPU kernels: same config, other last digits
    a = _doc("fedsparse", [_rec(10, 0.25, 0.70, 0.5, sparsity=0.30), _rec(20, 0.40, 0.80, 1.0, sparsity=0.35)],
             lam0=5e-6, rounds=1000, eval_every=10)
    b = _doc("fedsparse", [_rec(10, 0.27, 0.71, 0.5, sparsity=0.28), _rec(20, 0.36, 0.79, 1.1, sparsity=0.35)],
             lam0=5e-6, rounds=20, eval_every=10, precision="float32")  # a setting the older run lacks
    rows = history.rerun_spread({"committed": a, "default": b}, (10, 20))
    assert [(r["round"], r["metric"]) for r in rows] == [(10, "global_acc"), (10, "local_acc"), (10, "sparsity"),
                                                           (10, "cum_gib"), (20, "global_acc"), (20, "local_acc"),
                                                           (20, "sparsity"), (20, "cum_gib")]
    assert rows[0]["values"] == {"committed": 0.25, "default": 0.27} and rows[0]["range"] == pytest.approx(0.02)
    assert rows[4]["range"] == pytest.approx(0.04) and rows[6]["range"] == 0.0
    table = history.format_rerun_spread(rows).splitlines()
    assert table[0].split() == ["round", "metric", "committed", "default", "range"]
    assert table[2].split() == ["10", "global_acc", "25.00", "27.00", "2.00"]  # in %
    assert table[5].split() == ["10", "cum_gib", "0.500", "0.500", "0.000"]  # GiB as they are
    # FedAvg records no sparsity: that row is left out, not filled with None
    plain = [_doc("fedavg", [_rec(10, 0.3, 0.7, 0.5)]), _doc("fedavg", [_rec(10, 0.31, 0.7, 0.5)])]
    assert [r["metric"] for r in history.rerun_spread(dict(enumerate(plain)), (10,))] == ["global_acc", "local_acc", "cum_gib"]
    with pytest.raises(ValueError, match="the runs differ in lam0: they do not compute the same rounds"):
        history.rerun_spread({"a": a, "b": _doc("fedsparse", b["records"], lam0=5e-5)}, (10,))
    with pytest.raises(ValueError, match="run 'a' has no record at round 15"):
        history.rerun_spread({"a": a, "b": b}, (15,))
    with pytest.raises(ValueError, match="two runs or more"):
        history.rerun_spread({"a": a}, (10,))
    # load_reruns reads the files of one configuration by label
    for label, doc in (("default", a), ("avx2", b)):
        (tmp_path / f"cifar10_fedsparse-mid_seed0_{label}.json").write_text(json.dumps(doc))
    (tmp_path / "cifar10_fedavg_seed0_default.json").write_text(json.dumps(plain[0]))
    assert list(history.load_reruns(tmp_path, "cifar10", "fedsparse-mid")) == ["avx2", "default"]
    with pytest.raises(FileNotFoundError, match="no re-runs femnist_fedavg_seed0_LABEL.json"):
        history.load_reruns(tmp_path, "femnist", "fedavg")


def test_alive_units_per_layer_over_a_run():
    old = _rec(10, 0.3, 0.7, 0.5, sparsity=0.2)  # written before records held alive_units
    doc = _doc("fedsparse", [old, _rec(20, 0.4, 0.8, 1.0, sparsity=0.3, alive_units={"conv1": 20, "conv2": 60, "fc1": 400}),
                             _rec(30, 0.5, 0.8, 1.4, sparsity=0.3, alive_units={"conv1": 18, "conv2": 60, "fc1": 390})],
               lam0=5e-6)
    alive = history.alive_units(doc)
    assert list(alive) == ["conv1", "conv2", "fc1"]
    assert np.isnan(alive["conv1"][0]) and alive["conv1"][1:].tolist() == [20, 18] and alive["fc1"][2] == 390
    assert history.alive_units(FEDAVG) == {}


def _abl(algo, seed, g, l, gib, alive=None, sparsity=0.0, **cfg):
    rec = _rec(20, g, l, gib, sparsity=sparsity, **({"alive_units": alive} if alive else {}))
    return _doc(algo, [rec], seed=seed, alpha=1.0, test_split="disjoint", **cfg)


def test_an_ablation_row_by_hand():
    """Two seeds of one reading against FedAvg on each seed: survivors 20 and 23 average 21.5;
    bytes (0.8 / 1.0 + 0.9 / 1.2) / 2 = 0.775; gap ((0.50 - 0.55) + (0.52 - 0.53)) / 2 = -0.03."""
    fedavg = [_abl("fedavg", 0, 0.55, 0.80, 1.0), _abl("fedavg", 1, 0.53, 0.82, 1.2),
              _abl("fedavg", 0, 0.50, 0.70, 1.0, inputs="unit")]
    runs = [_abl("fedsparse", 0, 0.50, 0.81, 0.8, {"conv1": 20, "fc1": 500}, 0.1, lam0=0.0),
            _abl("fedsparse", 1, 0.52, 0.83, 0.9, {"conv1": 23, "fc1": 505}, 0.2, lam0=0.0),
            _abl("fedsparse", 0, 0.45, 0.69, 0.5, {"conv1": 30, "fc1": 400}, 0.4, inputs="unit", v_grad="pi")]
    rows = {r["reading"]: r for r in history.ablation_rows(runs, fedavg, rnd=20)}
    assert list(rows) == ["FedAvg", "FedAvg, inputs = unit", "lam0 = 0", "v_grad = pi, inputs = unit"]
    row = rows["lam0 = 0"]
    assert row["seeds"] == [0, 1] and row["alive"] == {"conv1": 21.5, "fc1": 502.5}
    assert row["bytes"] == pytest.approx(0.775) and row["gap"] == pytest.approx(-0.03)
    assert row["sparsity"] == pytest.approx(0.15) and row["local_acc"] == pytest.approx(0.82)
    assert rows["v_grad = pi, inputs = unit"]["gap"] == pytest.approx(-0.05)  # against the unit-input FedAvg
    assert rows["FedAvg"]["global_acc"] == pytest.approx(0.54)
    text = history.format_ablation(list(rows.values()))
    assert "lam0 = 0" in text and "21.5" in text and "-3.0" in text
    with pytest.raises(ValueError, match="no FedAvg run on the data of 'inputs = unit'"):
        history.ablation_rows([_abl("fedsparse", 1, 0.4, 0.6, 0.5, inputs="unit")], fedavg, rnd=20)
    with pytest.raises(ValueError, match="a reading is a FedSparse run's"):
        history.reading(fedavg[0])
    assert history.reading(_abl("fedsparse", 0, 0, 0, 0, lam0=5e-6)) == "reference"


def test_screening_rows_need_no_fedavg():
    runs = [_abl("fedsparse", 0, 0.30, 0.70, 0.1, {"conv1": 29}, 0.05, lam0=0.0, inputs="unit")]
    (row,) = history.ablation_rows(runs, None, rnd=20)
    assert row["reading"] == "lam0 = 0, inputs = unit" and row["alive"] == {"conv1": 29.0}
    assert np.isnan(row["bytes"]) and np.isnan(row["gap"])
    line = history.format_ablation([row]).splitlines()[-1]
    assert line.split()[-5:] == ["5.0", "30.0", "-", "70.0", "-"]
