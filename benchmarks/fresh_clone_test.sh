#!/usr/bin/env bash
# The README's test command as a new user meets it: a fresh clone of this repository's HEAD, with
# ../shared beside it, `./dev setup` timed, then `./dev test` once per setting, each timed, then
# `git status` after each. A setting is a list of VAR=VALUE words joined by commas, or "default"
# (the machine's own kernels and thread count); by default the four the README quotes:
# OMP_NUM_THREADS=1 and 2, ATEN_CPU_CAPABILITY=default and avx2.
#
#   bash benchmarks/fresh_clone_test.sh [SETTING ...]
#   e.g. bash benchmarks/fresh_clone_test.sh OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default,OMP_NUM_THREADS=2
#   CPU_MATRIX=1 bash benchmarks/fresh_clone_test.sh   # also times ./dev cpu-matrix once (CI runs it)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(cd "$repo/.." && pwd)/shared"
[ -d "$shared" ] || { echo "no shared/ folder beside $repo: the tests would use generated data only" >&2; }
settings=("$@")
[ ${#settings[@]} -gt 0 ] ||
    settings=(OMP_NUM_THREADS=1 OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/main"
[ -d "$shared" ] && ln -s "$shared" "$work/shared"
cd "$work/main"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/main; $(nproc) cores; $(uname -m)"
start=$(date +%s)
./dev setup
echo "setup: $(( $(date +%s) - start )) s ($(.venv/bin/python benchmarks/env_size.py --top 0 | sed -n 1p));" \
     "this CPU's kernels: $(env -u ATEN_CPU_CAPABILITY .venv/bin/python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
status=0
for setting in "${settings[@]}"; do
    env_words=()
    [ "$setting" = default ] || IFS=, read -r -a env_words <<< "$setting"
    log="$work/test-${setting//[^A-Za-z0-9=_]/_}.log"
    start=$(date +%s)
    env ${env_words[@]+"${env_words[@]}"} ./dev test >"$log" 2>&1 || status=1
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | sed -E 's/ ?=+ ?//g' | tail -n 1)
    dirty=$(git status --porcelain | wc -l)
    echo "$setting: ./dev test took $took s ($summary); files changed by the tests: $dirty"
    [ "$dirty" = 0 ] || { git status --porcelain; status=1; }
    [ $status = 0 ] || { tail -n 40 "$log"; }
done
if [ -n "${CPU_MATRIX:-}" ]; then
    start=$(date +%s)
    ./dev cpu-matrix >"$work/cpu-matrix.log" 2>&1 || status=1
    echo "./dev cpu-matrix took $(( $(date +%s) - start )) s:"
    grep -E '^== |(passed|failed).* in [0-9.]+s' "$work/cpu-matrix.log" | sed -E 's/ ?=+ ?$//'
    [ $status = 0 ] || tail -n 40 "$work/cpu-matrix.log"
fi
exit $status
