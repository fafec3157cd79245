"""Command line.

``python -m emfl run --task cifar10 --algo fedavg --rounds N --seed S --data-dir D --out run.json``
    a federated training run (checkpoints beside ``--out``; ``--resume`` continues one);
``python -m emfl femnist-npz LEAF_FOLDER OUT.npz``
    converts LEAF's FEMNIST json files into the compact npz the loader reads;
``python -m emfl info-flow --local-epochs E --batch-size B --alpha A --rounds R --out F.json``
    a FedAvg run of the tanh network on the 12-bit task with information probes (tutorial 08);
``python -m emfl figures``
    re-runs every tutorial, which rewrites figures/;
``python -m emfl exercises [NOTEBOOK ...]``
    lists the tutorials' exercises, or executes students' notebooks and tallies their checks.
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


def _explicit(argv, parser) -> set:
    """The destinations of the options written out in ``argv`` (the parser allows no abbreviations)."""
    given = set()
    for action in parser._actions:
        for opt in action.option_strings:
            if any(a == opt or a.startswith(opt + "=") for a in argv):
                given.add(action.dest)
    return given


def _run(args) -> int:
    from emfl.flower import FlowerError
    from emfl.nn.config import GENERIC_FIELDS, make_config
    from emfl.nn.data import DataError
    from emfl.nn.engine import Diverged
    from emfl.nn.runner import Interrupted, RunError, checkpoint_path, run

    # run settings go as parsed; an algorithm's settings only when written out, so that a setting
    # the algorithm does not have, or one that contradicts a preset, can be seen
    settings = {f: getattr(args, f) for f in GENERIC_FIELDS if hasattr(args, f) and f != "algo"}
    settings.update({f: getattr(args, f) for f in args.algorithm_settings if f in args.explicit})
    try:
        config = make_config(args.algo, **settings)
        ckpt = checkpoint_path(args.out, args.checkpoint_dir)
        if args.resume and not ckpt.exists() and not Path(args.out).exists():
            print(f"no checkpoint {ckpt} yet: starting from round 0", file=sys.stderr)
        if args.command == "flower":
            doc = _flower(config, args)
        else:
            doc = run(config, args.out, data_dir=args.data_dir, resume=args.resume, download=args.download,
                      progress=not args.quiet, checkpoint_dir=args.checkpoint_dir)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except Stopped as err:
        print(f"stopped by {err}: every process of the deployment is stopped; what finished is in {args.out} "
              "and its checkpoint: continue with --resume", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"interrupted; what finished is in {args.out} and its checkpoint: continue with --resume",
              file=sys.stderr)
        return 130
    except (ValueError, DataError, RunError, Diverged, FlowerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, Diverged) else 3
    last = doc["records"][-1] if doc["records"] else {}
    print(f"{config.preset or config.algo} on {config.task}: round {last.get('round')}, global accuracy "
          f"{last.get('global_acc', float('nan')):.4f}, local accuracy {last.get('local_acc', float('nan')):.4f}, "
          f"{last.get('cum_gib', 0):.3f} GiB communicated; history in {args.out}")
    return 0


def _flower(config, args) -> dict:
    """``emfl flower``: the run on Flower (a deployment, or the simulation with --simulation).
    SIGTERM and SIGHUP (a closed terminal) stop the deployment in order, as Ctrl-C does."""
    from emfl.flower import FlowerError, require_flower

    require_flower()
    if args.download:
        raise FlowerError("--download is for `emfl run`; download the data once with it, then pass --data-dir")
    common = dict(supernodes=args.supernodes, data_dir=args.data_dir, resume=args.resume,
                  checkpoint_dir=args.checkpoint_dir, round_timeout=args.round_timeout)
    if args.simulation:
        import os

        from emfl.flower.apps import simulate
        from emfl.flower.guard import GuardClient, stop_tree

        guard = GuardClient()  # if this command is killed (kill -9), the guard stops Ray's processes
        guard.watch(os.getpid())
        try:
            with _signals_stop():
                return simulate(config, args.out, threads_per_node=args.threads, **common)
        finally:  # Ray's processes (its agents outlive a Ctrl-C during its start by 30-90 s) go with the command
            guard.stop()
            stop_tree(os.getpid())
    from emfl.flower.deploy import deploy

    public_keys = args.public_keys
    if args.superlink and args.certificates and public_keys is None:  # the keys flower-keys wrote beside them
        public_keys = sorted(str(p) for p in Path(args.certificates).expanduser().glob("node*.pub"))
    with _signals_stop():
        return deploy(config, args.out, port=args.port, threads=args.threads, keep_logs=args.keep_logs,
                      superlink=args.superlink, certificates=args.certificates, public_keys=public_keys or (),
                      insecure=args.insecure, **common)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the command: stop as Ctrl-C does."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _signals_stop:
    """While active, SIGTERM and SIGHUP raise :class:`Stopped` in the main thread."""

    def __enter__(self):
        import signal
        import threading

        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self.previous[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Stopped(signum)

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _flower_node(args) -> int:
    """``emfl flower --supernode``: this machine's SuperNode and its worker, until stopped."""
    from emfl.flower import FlowerError

    try:
        from emfl.flower.deploy import supernode

        with _signals_stop():
            return supernode(args.superlink, args.partition, args.partitions, data_dir=args.data_dir,
                             certificates=args.certificates, node_key=args.node_key, insecure=args.insecure,
                             threads=args.threads, checkpoint_dir=args.checkpoint_dir)
    except FlowerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"SuperNode stopped ({err}); a run it served continues when a node takes its place", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("SuperNode stopped", file=sys.stderr)
        return 130


def _flower_keys(args) -> int:
    from emfl.flower.security import main_keys

    return main_keys(args.rest)


def _algorithm_settings() -> dict:
    """Every registered algorithm's settings: name -> (default, help, choices), the help naming
    the algorithms that have it."""
    from emfl.nn.algorithms import ALGORITHMS
    from emfl.nn.settings import settings_of

    found = {}
    for algo in ALGORITHMS.values():
        for name, default, text, choices in settings_of(algo.Params):
            if name in found and found[name][0] != default:
                raise ValueError(f"the setting {name} has different defaults in different algorithms; "
                                 "give it one default or another name")
            old = found.get(name, (default, [], choices))
            found[name] = (default, old[1] + [f"{algo.title}: {text}"], choices)
    return {name: (default, "; ".join(texts), choices) for name, (default, texts, choices) in found.items()}


def _add_run_parser(sub, name="run"):
    if name == "flower":
        p = sub.add_parser("flower", help="the same run on Flower: a SuperLink and SuperNodes on this machine "
                                          "(or Flower's simulation)", allow_abbrev=False,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Every flag of `emfl run`; the clients train in Flower SuperNodes "
                                       "(emfl.flower). Needs the extra: pip install -e '.[flower]'.")
        p.add_argument("--supernodes", type=int, default=2, help="SuperNodes (client s is served by node s mod N)")
        p.add_argument("--simulation", action="store_true",
                       help="Flower's simulation (Ray) in this process instead of a SuperLink and SuperNodes")
        p.add_argument("--port", type=int, default=0, help="the SuperLink's port on 127.0.0.1 (0: a free one)")
        p.add_argument("--round-timeout", dest="round_timeout", type=float, default=600,
                       help="seconds the server waits for a round's replies")
        p.add_argument("--threads", type=int, default=1, help="torch threads per SuperNode")
        p.add_argument("--keep-logs", dest="keep_logs", action="store_true",
                       help="keep the Flower logs (a temporary folder, printed) after a good run too")
        p.add_argument("--superlink", default=None, metavar="HOST:PORT",
                       help="the SuperLink listens on HOST:PORT for SuperNodes on other machines (started there "
                            "with `python -m emfl flower --supernode`); off 127.0.0.1 it needs --certificates and "
                            "the nodes' --public-keys")
        p.add_argument("--certificates", default=None, metavar="DIR",
                       help="TLS: a folder with ca.pem, server.pem, server.key (test ones: python -m emfl "
                            "flower-keys); with --superlink, its node*.pub are the admitted SuperNodes' keys")
        p.add_argument("--public-keys", dest="public_keys", nargs="*", default=None, metavar="KEY.pub",
                       help="the public keys of the SuperNodes the SuperLink admits (default: DIR/node*.pub)")
        p.add_argument("--insecure", action="store_true",
                       help="plain gRPC with --superlink (a loopback address only)")
        _run_flags(p)
        return
    p = sub.add_parser("run", help="a federated training run on CIFAR-10 or FEMNIST", allow_abbrev=False,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train with the EM paper's protocol; see emfl.nn.engine. Ctrl-C (or SIGTERM) "
                                   "ends the current round, saves it and exits with 130; --resume continues.")
    _run_flags(p)


def _run_flags(p):
    """The flags of ``emfl run`` (shared by ``emfl flower``): generated from the settings' declarations
    (:class:`emfl.nn.config.RunConfig` and every algorithm's ``Params``)."""
    from emfl.nn.algorithms import ALGORITHMS, PRESETS
    from emfl.nn.config import GENERIC_FIELDS, RunConfig
    from emfl.nn.settings import add_flags

    add_flags(p, RunConfig, skip=[f for f in GENERIC_FIELDS if f != "task"])
    presets = "; ".join(f"{name} ({', '.join(f'{k} = {v}' for k, v in fixed.items())})"
                        for name, fixed in PRESETS.items())
    p.add_argument("--algo", choices=list(ALGORITHMS) + list(PRESETS), default=RunConfig.algo,
                   help=f"an algorithm (emfl.nn.algorithms), or a preset: {presets}; an explicit setting "
                        "that differs from its preset is an error")
    p.add_argument("--data-dir", default=None, help="folder with the data (default: $EMFL_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 (md5-checked) if not found")
    p.add_argument("--out", required=True, help="run history (.json)")
    p.add_argument("--checkpoint-dir", dest="checkpoint_dir", default=None,
                   help="where the run's checkpoint goes (default: $EMFL_CHECKPOINT_DIR, else ~/.cache/emfl/checkpoints)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of --out (starts afresh if neither exists)")
    add_flags(p.add_argument_group("run settings"), RunConfig, skip=("task",))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    settings = _algorithm_settings()
    group = p.add_argument_group("settings of the algorithms", "each algorithm takes only its own")
    for name, (default, text, choices) in settings.items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=type(default), default=default,
                           choices=choices, help=text)
    p.set_defaults(func=_run, parser=p, algorithm_settings=list(settings))


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


def _exercises(args) -> int:
    from emfl import exercises

    if not args.notebooks:
        for number, ex in sorted(exercises.EXERCISES.items(), key=lambda kv: exercises.order(kv[0])):
            print(f"{number:>5}  {ex.title}")
        return 0
    missing = [p for p in args.notebooks if not Path(p).is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    for path, verdicts in exercises.grade(args.notebooks, timeout=args.timeout):
        right = sum(v.ok for v in verdicts.values())
        print(f"{path}: {right} of {len(verdicts)} exercises right")
        for number in sorted(verdicts, key=exercises.order):
            v = verdicts[number]
            state = "right" if v.ok else ("not answered" if not v.answered else "not yet")
            print(f"  {number:>5}  {state:<13} {'' if v.ok or not v.answered else v.message}".rstrip())
    return 0


def _assignments(args) -> int:
    from emfl.assignments import SolutionError, make_course

    try:
        made = make_course(args.out, only=args.only)
    except (FileNotFoundError, SolutionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, numbers in made.items():
        print(f"{args.out}/source/{name}: exercises {', '.join(numbers)}")
    print(f"then, in {args.out}: nbgrader generate_assignment NAME; collect into submitted/<student>/NAME/; "
          "nbgrader autograde NAME; nbgrader export")
    return 0


def _info_flow(args) -> int:
    from emfl.nn.probes import info_flow
    from emfl.nn.runner import write_json_atomic

    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"error: no folder {out.parent} for --out; create it or pass another path", file=sys.stderr)
        return 2
    from emfl.nn.data import DataError
    from emfl.nn.probes import lenet_info_flow

    try:
        if args.task == "bits":
            doc = info_flow(local_epochs=args.local_epochs, batch_size=args.batch_size, alpha=args.alpha,
                            rounds=args.rounds, every=args.probe_every, clients=args.clients, client_lr=args.client_lr,
                            seed=args.seed, bins=args.bins, noise=0.1 if args.noise is None else args.noise)
        else:
            doc = lenet_info_flow(args.task, args.data_dir, rounds=args.rounds, every=args.probe_every,
                                  max_writers=args.max_writers, bins=args.bins,
                                  noise=1.0 if args.noise is None else args.noise, seed=args.seed)
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json_atomic(doc, out)
    last = doc["records"][-1]
    print(f"info-flow on {args.task}: round {last['round']}, "
          f"global accuracy {last['global_acc']:.4f}; {len(doc['probes'])} probes in {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="emfl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_run_parser(sub, "flower")
    conv = sub.add_parser("femnist-npz", help="convert LEAF's FEMNIST json into the compact npz")
    conv.add_argument("leaf_folder", help="folder with all_data/*.json (or train/ and test/)")
    conv.add_argument("out", help="the .npz to write, e.g. DATA/femnist_leaf_by_writer.npz")
    conv.set_defaults(func=_femnist_npz)
    fig = sub.add_parser("figures", help="re-run every tutorial so that figures/ is rewritten")
    fig.add_argument("--tutorials", default="tutorials", help="folder of the notebooks")
    fig.set_defaults(func=_figures)
    exe = sub.add_parser("exercises", help="list the exercises, or grade students' notebooks")
    exe.add_argument("notebooks", nargs="*", help="students' notebooks to execute and grade (none: list the exercises)")
    exe.add_argument("--timeout", type=int, default=1200, help="seconds a cell may run")
    exe.set_defaults(func=_exercises)
    asg = sub.add_parser("assignments", help="write the tutorials as an nbgrader course (solutions between "
                         "nbgrader's markers, the checks as autograded cells)")
    asg.add_argument("out", help="the course folder to write (its source/ and nbgrader_config.py)")
    asg.add_argument("--only", nargs="*", help="notebook prefixes to include (e.g. 01 04; default: all with exercises)")
    asg.set_defaults(func=_assignments)
    grd = sub.add_parser("grade", help="execute students' notebooks in fresh kernels and tally their checks' verdicts")
    grd.add_argument("notebooks", nargs="+", help="students' notebooks to execute and grade")
    grd.add_argument("--timeout", type=int, default=1200, help="seconds a cell may run")
    grd.set_defaults(func=_exercises)
    inf = sub.add_parser("info-flow", help="a FedAvg run with information probes (tutorial 08): the tanh network on "
                         "the 12-bit task, or a short LeNet-5 run on FEMNIST or CIFAR-10",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inf.add_argument("--task", choices=["bits", "femnist", "cifar10"], default="bits",
                     help="bits: the tanh network on all 12-bit patterns; femnist, cifar10: LeNet-5 with the "
                          "paper's protocol (--local-epochs, --batch-size, --alpha, --clients, --client-lr are for bits)")
    inf.add_argument("--data-dir", default=None, help="folder of the real data (femnist, cifar10); default $EMFL_DATA_DIR")
    inf.add_argument("--max-writers", type=int, default=200, help="femnist: keep the first k writers")
    inf.add_argument("--local-epochs", type=int, default=1, help="epochs a client trains between averagings")
    inf.add_argument("--batch-size", type=int, default=32, help="minibatch size (a client holds 327 patterns)")
    inf.add_argument("--alpha", type=float, default=1000.0, help="Dirichlet concentration of the label split (large: IID)")
    inf.add_argument("--rounds", type=int, default=100)
    inf.add_argument("--probe-every", type=int, default=5, help="probe and evaluate every k rounds")
    inf.add_argument("--clients", type=int, default=10)
    inf.add_argument("--client-lr", type=float, default=0.1)
    inf.add_argument("--seed", type=int, default=0)
    inf.add_argument("--bins", type=int, default=30, help="bins over [-1, 1] for the binning estimator")
    inf.add_argument("--noise", type=float, default=None, help="noise standard deviation of the KDE estimator "
                     "(default 0.1 for bits, 1.0 for LeNet-5)")
    inf.add_argument("--out", required=True, help="the JSON history to write")
    inf.set_defaults(func=_info_flow)
    node = sub.add_parser("flower-node", help="a SuperNode and its worker on this machine, serving its share of "
                          "the clients of the runs a SuperLink (python -m emfl flower --superlink) sends; also "
                          "written `python -m emfl flower --supernode ...`",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    node.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink to dial")
    node.add_argument("--partition", type=int, required=True, help="this node's number i: it serves clients s "
                      "with s mod N == i")
    node.add_argument("--supernodes", "--partitions", dest="partitions", type=int, required=True,
                      help="N, the number of SuperNodes of the run")
    node.add_argument("--certificates", default=None, metavar="CA",
                      help="the CA certificate (ca.pem, or the folder holding it) that signed the SuperLink's")
    node.add_argument("--node-key", dest="node_key", default=None, metavar="KEY",
                      help="this node's private key (its public key is registered on the SuperLink)")
    node.add_argument("--insecure", action="store_true", help="plain gRPC (a SuperLink on a loopback address only)")
    node.add_argument("--data-dir", default=None, help="this machine's copy of the data (default: $EMFL_DATA_DIR)")
    node.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    node.add_argument("--checkpoint-dir", default=None, help="where this node keeps its clients' memory (SCAFFOLD's "
                      "c_i, FedSpa's masks) so that a resumed run finds it (default: $EMFL_CHECKPOINT_DIR, else "
                      "~/.cache/emfl/checkpoints)")
    node.set_defaults(func=_flower_node)
    keys = sub.add_parser("flower-keys", help="test TLS certificates and SuperNode key pairs for a deployment on "
                          "several machines", add_help=False)
    keys.add_argument("rest", nargs=argparse.REMAINDER)
    keys.set_defaults(func=_flower_keys)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["flower-keys"]:  # its own parser
        from emfl.flower.security import main_keys

        return main_keys(argv[1:])
    if argv[:1] == ["flower"] and "--supernode" in argv:  # the node's role of `emfl flower`
        argv = ["flower-node"] + [a for a in argv[1:] if a != "--supernode"]
    args = parser.parse_args(argv)
    if getattr(args, "parser", None) is not None:
        args.explicit = _explicit(argv, args.parser)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
