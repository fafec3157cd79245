"""Figures: where they are written, and that their bytes do not depend on the run.

What is claimed (README, "Tutorials"): a figure's PNG is byte-identical on every run on the same
machine, whatever the number of threads.  The figures are drawn from NumPy computations (BLAS and
LAPACK through OpenBLAS, NumPy's own vector loops) and from committed histories; none passes
through a reduction that is split between threads, so nothing needs pinning for this.  Another
CPU can move a few anti-aliased pixels: NumPy's OpenBLAS picks its kernels by CPU when it loads,
and a different kernel changes the last bits of a solve or a product.  The thread-count check
below compares whole PNGs, so it sees such last bits: forcing another kernel on one of its two runs
(``OPENBLAS_CORETYPE=Sandybridge`` on an AVX2 machine) makes it fail.
"""

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import emfl  # noqa: E402
from emfl import viz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# A figure drawn from the computations behind the notebooks' figures that depend on floating-point
# detail: notebook 03's FedAvg and FedPA server trajectories over the contours of a quadratic
# (SGD, LAPACK solves, Adam), notebook 01's effective prior precision (eigh, powers), the
# hard-concrete gate curve of notebook 04 (torch).  Prints the PNG's SHA-256 and the threads used.
DRAW = r"""
import hashlib, sys
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import emfl
from emfl import em, fedpa, linreg, optim
from emfl.nn import gates

emfl.setup_notebook(seed=0)
c1 = linreg.anisotropic_client([2.0, 0.0], [1.5, 0.5], 0.0, 50, 2.0, seed=1)
c2 = linreg.anisotropic_client([-1.0, 2.0], [1.5, 0.5], np.pi / 2.5, 50, 2.0, seed=2)
pair = emfl.FederatedLinReg((c1, c2))
mus = [linreg.local_least_squares(c) for c in pair.clients]
opt = fedpa.global_optimum([c.A for c in pair.clients], mus)
lr = 0.5 / max(np.linalg.eigvalsh(c.A).max() for c in pair.clients)
h_avg = em.run(fedpa.fedavg_sgd(lr, 100, 5, optim.adam(0.1), seed=0), pair, np.zeros(2), 12)
h_pa = em.run(fedpa.fedpa(lr, 8, 10, 20, 100.0, 5, optim.adam(0.1), seed=0), pair, np.zeros(2), 12)

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
xs, ys = np.linspace(-2.5, 3.0, 60), np.linspace(-0.8, 2.6, 60)
G = np.stack(np.meshgrid(xs, ys), axis=-1)
A = sum(c.A for c in pair.clients)
F = 0.5 * np.einsum("...i,ij,...j->...", G - opt, A, G - opt)
axes[0].contour(xs, ys, F, levels=np.quantile(F, np.linspace(0.01, 0.6, 8)), colors="0.6")
emfl.viz.plot_points(axes[0], np.array(mus), color="0.3", marker="s")
emfl.viz.plot_trajectory(axes[0], h_avg.w, color="tab:red")
emfl.viz.plot_trajectory(axes[0], h_pa.w, color="tab:blue")
Ks = np.unique(np.logspace(0, 3, 40).astype(int))
eigs = np.array([np.linalg.eigvalsh(linreg.effective_precision(c1, K, lr / 10)) for K in Ks])
axes[1].loglog(Ks, eigs)
norms = torch.linspace(0.9, 1.1, 401)
v = gates.softplus_inverse(torch.tensor([1.0]))
axes[2].plot(norms, gates.gate_prob(norms, v.expand_as(norms), 1e-2))
path = emfl.save_figure(fig, "threads", sys.argv[1])
print(hashlib.sha256(path.read_bytes()).hexdigest(), torch.get_num_threads())
"""


def _draw_in_subprocess(tmp_path, name, threads, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and k != "OPENBLAS_CORETYPE"}
    env.update({k: str(threads) for k in THREAD_VARS}, MPLBACKEND="Agg", **(extra_env or {}))
    out = subprocess.run([sys.executable, "-c", DRAW, str(tmp_path / name)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    digest, used = out.stdout.split()
    return digest, int(used)


def _png_chunks(data: bytes) -> list:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


@pytest.mark.numeric
def test_figures_are_byte_identical_with_one_and_two_threads(tmp_path):
    one, used_one = _draw_in_subprocess(tmp_path, "one", 1)
    two, used_two = _draw_in_subprocess(tmp_path, "two", 2)
    assert (used_one, used_two) == (1, 2)  # the thread settings reached the computation
    assert one == two


def test_save_figure_bytes_carry_no_time_or_version(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 0, 2])
    data = viz.save_figure(fig, "a", tmp_path).read_bytes()
    chunks = _png_chunks(data)
    assert b"tIME" not in [kind for kind, _ in chunks]  # no timestamp
    text = b"".join(body for kind, body in chunks if kind in (b"tEXt", b"iTXt", b"zTXt"))
    assert b"Software" not in text and matplotlib.__version__.encode() not in text
    assert viz.save_figure(fig, "b", tmp_path / "elsewhere").read_bytes() == data  # name and folder stay out
    plt.close(fig)


def test_figures_go_to_emfl_figures_dir_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("EMFL_FIGURES_DIR", str(tmp_path / "figs"))
    assert viz.figures_dir() == tmp_path / "figs"
    fig, ax = plt.subplots()
    path = emfl.save_figure(fig, "here")
    assert path == tmp_path / "figs" / "here.png" and path.is_file()
    monkeypatch.delenv("EMFL_FIGURES_DIR")
    assert viz.figures_dir() == ROOT / "figures"  # the repository's, next to tutorials/
    with pytest.raises(ValueError, match="plain file stem"):
        emfl.save_figure(fig, ".hidden", tmp_path)
    plt.close(fig)
