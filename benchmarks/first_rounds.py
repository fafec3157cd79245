"""Do the committed runs still start the same way?  A check for refactors of the engine.

Every distinct configuration among the committed histories (``results/**/*.json``, one per
configuration up to its seed and the settings a resume may change) is run for its first rounds
(default 2) from scratch, in memory, and fingerprinted: the SHA-256 of the server state's bytes
after every round, the clients' memory, their local accuracies and the round's record (train loss, bytes, pruning
counts).  ``--save FILE`` writes the fingerprints of the code as it is; ``--check FILE`` runs them
again and lists every configuration whose fingerprint changed.  Bit-identity holds on one machine
with one thread count and one kernel set: save and check on the same machine, the same way.

    python benchmarks/first_rounds.py --data-dir ../shared/data --save /tmp/before.json
    (change the code)
    python benchmarks/first_rounds.py --data-dir ../shared/data --check /tmp/before.json

Without real data (no ``--data-dir`` or no files there) the CIFAR-10 and FEMNIST configurations
are reported as not run; nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emfl.nn.config import RunConfig  # noqa: E402
from emfl.nn.engine import Engine  # noqa: E402
from emfl.nn.runner import load_task_data  # noqa: E402

# settings that do not change what a round computes (a resume may change them) or that the
# fingerprint fixes itself
IGNORED = {"rounds", "eval_every", "checkpoint_every", "device", "client_batching", "preset", "seed"}
DATA_KEYS = ("task", "alpha", "inputs", "test_split", "num_shards", "shard_size", "max_writers", "seed")


def committed_configs(root: Path = ROOT) -> dict:
    """``{key: (config dict, first file)}`` for every distinct configuration under ``results/``."""
    found = {}
    for path in sorted((root / "results").rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or "algo" not in doc["config"]:
            continue
        config = doc["config"]
        key = json.dumps({k: v for k, v in config.items() if k not in IGNORED}, sort_keys=True)
        found.setdefault(key, (config, str(path.relative_to(root))))
    return found


def _digest(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for o in obj:
            _digest(o, h)
    else:
        h.update(repr(obj).encode())


def fingerprint(obj) -> str:
    h = hashlib.sha256()
    _digest(obj, h)
    return h.hexdigest()


def first_rounds(config: dict, data, rounds: int) -> list:
    """The fingerprints of the first ``rounds`` rounds of ``config`` (client batching off)."""
    settings = {**config, "rounds": rounds, "client_batching": "loop", "device": "cpu", "preset": ""}
    engine = Engine(RunConfig.from_dict(settings), data)
    out = []
    for _ in range(rounds):
        record = engine.run_round()
        record = {k: (round(v, 12) if isinstance(v, float) else v) for k, v in record.items()}
        out.append({"server": fingerprint(engine.server), "memory": fingerprint(engine.memory),
                    "local_acc": fingerprint(torch.from_numpy(engine.local_acc.copy())),
                    "bytes": [engine.bytes_down, engine.bytes_up], "record": fingerprint(record)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="where CIFAR-10 and FEMNIST are (../shared/data)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="only configurations whose first file contains this text")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write the fingerprints here")
    group.add_argument("--check", help="compare with the fingerprints saved here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    configs = {k: v for k, v in committed_configs().items() if args.only in v[1]}
    data_cache, results, not_run = {}, {}, []
    start = time.perf_counter()
    for key, (config, where) in configs.items():
        cfg = RunConfig.from_dict({**config, "rounds": args.rounds})
        dkey = tuple(getattr(cfg, k) for k in DATA_KEYS)
        if dkey not in data_cache:
            try:
                data_cache.clear()  # one data set in memory at a time (FEMNIST is large)
                data_cache[dkey] = load_task_data(cfg, args.data_dir)
            except Exception as err:  # noqa: BLE001 - reported, never skipped silently
                not_run.append(f"{where}: {type(err).__name__}: {str(err)[:120]}")
                continue
        results[key] = {"file": where, "rounds": first_rounds(config, data_cache[dkey], args.rounds)}
        print(f"{time.perf_counter() - start:7.1f} s  {where}", flush=True)
    for line in not_run:
        print("NOT RUN", line)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1, sort_keys=True))
        print(f"{len(results)} configurations fingerprinted ({args.rounds} rounds each) -> {args.save}")
        return 1 if not_run else 0
    before = json.loads(Path(args.check).read_text())
    changed = [r["file"] for k, r in results.items() if k in before and before[k]["rounds"] != r["rounds"]]
    missing = [before[k]["file"] for k in before if k not in results]
    for f in changed:
        print("CHANGED", f)
    for f in missing:
        print("MISSING", f)
    same = sum(1 for k in results if k in before) - len(changed)
    print(f"{same} of {len(before)} configurations bit-identical over {args.rounds} rounds; "
          f"{len(changed)} changed, {len(missing)} not compared")
    return 1 if changed or missing or not_run else 0


if __name__ == "__main__":
    sys.exit(main())
