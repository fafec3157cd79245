#!/usr/bin/env bash
# The README's test command as a new user meets it: a fresh clone of this repository's HEAD, with
# ../shared beside it, `./dev setup` timed, then `./dev test` once per thread setting (default:
# "1 default", i.e. OMP_NUM_THREADS=1 and the machine's default), each timed, then `git status`.
# Prints the numbers the README's Testing section quotes.
#
#   bash benchmarks/fresh_clone_test.sh [THREADS ...]     e.g.  bash benchmarks/fresh_clone_test.sh 1 default
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(cd "$repo/.." && pwd)/shared"
[ -d "$shared" ] || { echo "no shared/ folder beside $repo: the tests would use generated data only" >&2; }
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(1 default)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/main"
[ -d "$shared" ] && ln -s "$shared" "$work/shared"
cd "$work/main"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/main; $(nproc) cores; $(uname -m)"
start=$(date +%s)
./dev setup
echo "setup: $(( $(date +%s) - start )) s ($(.venv/bin/python benchmarks/env_size.py --top 0 | sed -n 1p))"
status=0
for t in "${settings[@]}"; do
    log="$work/test-$t.log"
    start=$(date +%s)
    if [ "$t" = default ]; then
        (unset OMP_NUM_THREADS; ./dev test) >"$log" 2>&1 || status=1
    else
        OMP_NUM_THREADS="$t" ./dev test >"$log" 2>&1 || status=1
    fi
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$log" | sed -E 's/ ?=+ ?//g' | paste -sd ';' - | sed 's/;/; nbval: /')
    dirty=$(git status --porcelain | wc -l)
    echo "OMP_NUM_THREADS=$t: ./dev test took $took s (unit tests: $summary); files changed by the tests: $dirty"
    [ "$dirty" = 0 ] || { git status --porcelain; status=1; }
    [ $status = 0 ] || { tail -n 40 "$log"; }
done
exit $status
