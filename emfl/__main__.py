"""Command line: ``python -m emfl figures`` re-runs every tutorial, which rewrites figures/."""

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="emfl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figures", help="re-run every tutorial so that figures/ is rewritten")
    fig.add_argument("--tutorials", default="tutorials", help="folder of the notebooks")
    fig.set_defaults(func=_figures)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
