"""How large the environment is, and why: disk used by every installed distribution of the
running Python (run it with the environment's own interpreter, e.g. ``.venv/bin/python
benchmarks/env_size.py``), with torch's build and the CUDA libraries that come with it summed.

    python benchmarks/env_size.py [--top 12]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

CUDA = re.compile(r"^(nvidia-|cuda-|triton$)", re.I)


def distribution_sizes() -> dict:
    """Bytes on disk of each installed distribution (the files its RECORD lists)."""
    sizes = {}
    for dist in md.distributions():
        total = 0
        for f in dist.files or []:
            try:
                total += Path(dist.locate_file(f)).stat().st_size
            except OSError:
                pass
        sizes[dist.metadata["Name"]] = sizes.get(dist.metadata["Name"], 0) + total
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=12, help="how many of the largest distributions to list")
    args = parser.parse_args(argv)
    sizes = distribution_sizes()
    total = sum(sizes.values())
    cuda = sum(v for k, v in sizes.items() if CUDA.match(k))
    try:
        import torch

        build = f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU only'})"
    except ImportError:
        build = "torch not installed"
    mib = 2**20
    print(f"environment of {sys.prefix}: {total / mib:,.0f} MiB in {len(sizes)} distributions; {build}")
    print(f"torch itself: {sizes.get('torch', 0) / mib:,.0f} MiB; CUDA libraries (nvidia-*, cuda-*, triton): "
          f"{cuda / mib:,.0f} MiB ({cuda / total:.0%}); everything else: {(total - cuda - sizes.get('torch', 0)) / mib:,.0f} MiB")
    print(f"| distribution | MiB |\n|---|---|")
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| {name} | {size / mib:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
