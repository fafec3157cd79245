"""Run histories compared in the paper's form: names, rounds, the table, plots, quick mode."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from emfl.nn import history  # noqa: E402


def _doc(algo, records, **cfg):
    return {"config": {"algo": algo, "task": "cifar10", "rounds": 20, **cfg}, "records": records}


def _rec(rnd, g, l, gib, **extra):
    return {"round": rnd, "global_acc": g, "local_acc": l, "cum_gib": gib, **extra}


FEDAVG = _doc("fedavg", [_rec(10, 0.30, 0.70, 0.5), _rec(20, 0.40, 0.80, 1.0)])
MID = _doc("fedsparse", [_rec(10, 0.28, 0.72, 0.4, sparsity=0.25), _rec(20, 0.38, 0.82, 0.7, sparsity=0.5)], lam0=5e-6)


def test_method_names_follow_the_paper():
    assert history.method_name(FEDAVG) == "FedAvg"
    assert history.method_name(MID) == "FedSparse mid"
    assert history.method_name(_doc("fedsparse", [], lam0=5e-5)) == "FedSparse high"
    assert history.method_name(_doc("fedsparse", [], lam0=1e-4)) == "FedSparse (lam0 = 0.0001)"
    assert history.method_name(_doc("feddrop", [])) == "FedDrop"


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
    from emfl.nn.engine import RunConfig
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
