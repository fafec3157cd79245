"""Command line.

``python -m emfl run --task cifar10 --algo fedavg --rounds N --seed S --data-dir D --out run.json``
    a federated training run (checkpoints beside ``--out``; ``--resume`` continues one);
``python -m emfl femnist-npz LEAF_FOLDER OUT.npz``
    converts LEAF's FEMNIST json files into the compact npz the loader reads;
``python -m emfl figures``
    re-runs every tutorial, which rewrites figures/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _figures(args) -> int:
    import nbformat
    from nbclient import NotebookClient

    tutorials = Path(args.tutorials)
    if not tutorials.is_dir():
        print(f"error: no tutorials folder at {tutorials}; pass --tutorials PATH", file=sys.stderr)
        return 2
    notebooks = sorted(tutorials.glob("*.ipynb"))
    if not notebooks:
        print(f"error: no notebooks in {tutorials}", file=sys.stderr)
        return 2
    for path in notebooks:
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=1200, resources={"metadata": {"path": str(tutorials)}}).execute()
        print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    print("figures written to figures/")
    return 0


def _run(args) -> int:
    from emfl.nn.data import DataError
    from emfl.nn.engine import Diverged, RunConfig
    from emfl.nn.runner import RunError, run

    from emfl.nn.engine import PRESETS

    fields = {f: getattr(args, f) for f in RunConfig.__dataclass_fields__ if hasattr(args, f)}
    fields.update(PRESETS.get(args.algo, {}))  # a named preset sets algo and its hyperparameters
    try:
        config = RunConfig(**fields)
        doc = run(config, args.out, data_dir=args.data_dir, resume=args.resume, download=args.download,
                  progress=not args.quiet)
    except (ValueError, DataError, RunError, Diverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, Diverged) else 3
    last = doc["records"][-1] if doc["records"] else {}
    print(f"{config.algo} on {config.task}: round {last.get('round')}, global accuracy "
          f"{last.get('global_acc', float('nan')):.4f}, local accuracy {last.get('local_acc', float('nan')):.4f}, "
          f"{last.get('cum_gib', 0):.3f} GiB communicated; history in {args.out}")
    return 0


def _add_run_parser(sub):
    from emfl.nn.engine import ALGORITHMS, PRESETS, TASKS, RunConfig
    from emfl.nn.models import MODELS

    d = RunConfig()
    p = sub.add_parser("run", help="a federated training run on CIFAR-10 or FEMNIST",
                       description="Train with the EM paper's protocol; see emfl.nn.engine.")
    p.add_argument("--task", choices=list(TASKS), default=d.task)
    p.add_argument("--algo", choices=list(ALGORITHMS) + list(PRESETS), default=d.algo,
                   help="an algorithm, or a preset: fedsparse-low/mid/high (lam0 = 5e-7, 5e-6, 5e-5)")
    p.add_argument("--model", choices=list(MODELS), default=d.model)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data-dir", default=None, help="folder with the data (default: $EMFL_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 (md5-checked) if not found")
    p.add_argument("--out", required=True, help="run history (.json); the checkpoint goes to OUT.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt")
    p.add_argument("--clients-per-round", dest="clients_per_round", type=int, default=d.clients_per_round)
    p.add_argument("--local-epochs", dest="local_epochs", type=int, default=d.local_epochs)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=0, help="0: 64 (CIFAR-10), 20 (FEMNIST)")
    p.add_argument("--client-lr", dest="client_lr", type=float, default=d.client_lr)
    p.add_argument("--server-opt", dest="server_opt", choices=["adam", "sgd"], default=d.server_opt)
    p.add_argument("--server-lr", dest="server_lr", type=float, default=d.server_lr)
    p.add_argument("--lam", type=float, default=d.lam, help="FedProx: proximal strength; FedL1: group-L1 strength")
    p.add_argument("--rho", type=float, default=d.rho, help="FedPA: shrinkage")
    p.add_argument("--drop-conv", dest="drop_conv", type=float, default=d.drop_conv, help="FedDrop: conv drop rate")
    p.add_argument("--drop-fc", dest="drop_fc", type=float, default=d.drop_fc, help="FedDrop: hidden fc drop rate")
    p.add_argument("--drop-io", dest="drop_io", type=float, default=d.drop_io, help="FedDrop: input/output layer drop rate")
    p.add_argument("--lam0", type=float, default=d.lam0, help="FedSparse: L0 strength (5e-7 low, 5e-6 mid, 5e-5 high)")
    p.add_argument("--sparse-reg", dest="sparse_reg", choices=["batch", "example"], default=d.sparse_reg,
                   help="FedSparse: lam0 and the gate cross-entropy added to the mean batch loss (batch) "
                        "or divided by the client's size (example, Eq. 41 / N_s)")
    p.add_argument("--fedpa-burnin-rounds", dest="fedpa_burnin_rounds", type=int, default=d.fedpa_burnin_rounds)
    p.add_argument("--alpha", type=float, default=d.alpha, help="CIFAR-10 split: Dirichlet alpha (Hsu et al.)")
    p.add_argument("--test-split", dest="test_split", choices=["matched", "disjoint"], default=d.test_split,
                   help="CIFAR-10 shard test sets: matched to each shard's classes, or the earlier disjoint draw")
    p.add_argument("--num-shards", dest="num_shards", type=int, default=d.num_shards)
    p.add_argument("--shard-size", dest="shard_size", type=int, default=d.shard_size)
    p.add_argument("--max-writers", dest="max_writers", type=int, default=d.max_writers, help="FEMNIST: first k writers (0: all)")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=d.eval_every)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=d.checkpoint_every)
    p.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--client-batching", dest="client_batching", choices=["auto", "loop", "vmap"],
                   default=d.client_batching, help="train a round's clients one by one or batched (auto: batched on CUDA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _femnist_npz(args) -> int:
    from emfl.nn.data import DataError
    from emfl.nn.femnist import json_to_npz, load_npz

    try:
        out = json_to_npz(args.leaf_folder, args.out)
        a = load_npz(out)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {len(a['writers'])} writers, {len(a['y'])} samples")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="emfl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    conv = sub.add_parser("femnist-npz", help="convert LEAF's FEMNIST json into the compact npz")
    conv.add_argument("leaf_folder", help="folder with all_data/*.json (or train/ and test/)")
    conv.add_argument("out", help="the .npz to write, e.g. DATA/femnist_leaf_by_writer.npz")
    conv.set_defaults(func=_femnist_npz)
    fig = sub.add_parser("figures", help="re-run every tutorial so that figures/ is rewritten")
    fig.add_argument("--tutorials", default="tutorials", help="folder of the notebooks")
    fig.set_defaults(func=_figures)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
