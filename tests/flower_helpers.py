"""What the Flower tests share: one torch thread in every process of a compared run, the server
weights of a run, and the comparison of two runs."""

import pytest
import torch

from emfl.nn.runner import checkpoint_path, load_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """Every process of these runs computes on one torch thread (the Flower nodes do, by
    ``threads``), so that the engine and Flower do the same float operations in the same order,
    whatever OMP_NUM_THREADS says."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def server_weights(out, ckpt_dir) -> torch.Tensor:
    return load_checkpoint(checkpoint_path(out, ckpt_dir))["server"]["w"]


def assert_same_run(a: dict, b: dict, wa: torch.Tensor, wb: torch.Tensor) -> None:
    """Same records (every field but the seconds), same bytes, same server weights."""
    assert len(a["records"]) == len(b["records"]) > 0
    for ra, rb in zip(a["records"], b["records"]):
        assert set(ra) == set(rb)
        for k in ra:
            if k == "seconds":
                continue
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-10, abs=1e-12), k
            else:
                assert rb[k] == ra[k], k  # counts and bytes: exactly
    last = a["records"][-1]
    t = b["transport"]
    assert t["name"] == "flower"
    # what went over Flower's wire is what the engine counts
    assert (t["wire_bytes_down"], t["wire_bytes_up"]) == (last["bytes_down"], last["bytes_up"])
    assert t["wire_first_round"] == 1  # every round of the run went over Flower
    assert wa.dtype == wb.dtype == torch.float64  # compared in float64: round-off ~1e-12 on any CPU
    assert torch.allclose(wa, wb, atol=1e-10, rtol=0)
