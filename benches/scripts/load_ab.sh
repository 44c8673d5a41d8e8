#!/usr/bin/env bash
# A/B of served throughput: the load bench (`cargo bench --bench load`) built at OLD_REV and at
# the work tree, run alternately in the same session, compared by per-cell medians.
#
#   benches/scripts/load_ab.sh OLD_REV [TURNS]     # TURNS runs of each binary, default 5
#   benches/scripts/load_ab.sh --report RUNS_DIR   # the tables again, from kept runs
#
# Why this shape:
# - One bench run against another is mostly noise on a shared 2-core VM (10-20% between runs
#   is common), so each binary is run TURNS times, old and new alternating, and each cell
#   (model, concurrency, server kind, client) is reported as its median over the runs. Slow drift
#   of the machine then hits both sides alike instead of whichever ran second.
# - OLD_REV is built in its own worktree with its own target dir: the two builds never
#   invalidate each other's artifacts, and the old bench serves the old tree's bundled models
#   (it finds them through CARGO_MANIFEST_DIR, fixed at compile time).
# - The bench binaries are run directly, not through cargo, so a build or a cargo lock taken by
#   someone else cannot land inside a measured run.
# - 'bare' is a bare tonic server whose code is the same in both binaries: its new/old is what
#   the machine alone does between runs, the yardstick for every other ratio.
# - Only the rust-h2 client by default (LOAD_TONIC_CONCURRENCY= LOAD_H2LOAD_CONCURRENCY=) and
#   LOAD_SECONDS=3: enough runs fit in a session; any LOAD_* set by the caller wins.
#
# Environment:
#   AB_DIR         where the worktree, the old target dir and runs/ go (default: a new temp dir)
#   AB_QUIET_FILE  if set, every measured run waits until this file exists (polled every 20 s),
#                  so that runs happen only while whoever shares the machine says it is quiet
#   AB_KEEP=1      keep the worktree and the old target dir (they are removed at exit otherwise)
#
# Server CPU per request is the bench's `cpu srv` (% of one core used by the server under test)
# ÷ req/s, in µs.
set -euo pipefail

report() {
    python3 - "$1" <<'PY'
import math, os, re, statistics, sys

runs_dir = sys.argv[1]
# A row of the bench's load table: model conc mode client req/s rows/s rows/run p50 p90 p99
# max errors srv/gen/other.
row = re.compile(
    r"^(\S+)\s+(\d+)\s+(served|scraped|traced|nobatch|bare)\s+(rust-h2|tonic|h2load)\s+"
    r"(\d+)\s+\d+\s+\S+\s+\d+\s+\d+\s+\d+\s+\d+\s+(\d+)\s+(\d+)/(\d+)/(\d+)\s*$")
kinds_order = ["served", "scraped", "traced", "nobatch", "bare"]

# data[side][key] = list of (turn, req/s, server µs per request, other %)
data = {"old": {}, "new": {}}
errors = []
for name in sorted(os.listdir(runs_dir)):
    m = re.fullmatch(r"(old|new)-(\d+)\.txt", name)
    if not m:
        continue
    side, turn = m.group(1), int(m.group(2))
    cells = 0
    with open(os.path.join(runs_dir, name), encoding="utf-8", errors="replace") as f:
        for line in f:
            r = row.match(line)
            if not r:
                continue
            model, conc, kind, client = r.group(1), int(r.group(2)), r.group(3), r.group(4)
            rps, errs = float(r.group(5)), int(r.group(6))
            srv, other = float(r.group(7)), float(r.group(9))
            cpu_us = srv / 100.0 / rps * 1e6 if rps > 0 else float("nan")
            data[side].setdefault((model, conc, kind, client), []).append((turn, rps, cpu_us, other))
            cells += 1
            if errs:
                errors.append(f"{name}: {model} c={conc} {kind} {client}: {errs} errors")
    if cells == 0:
        errors.append(f"{name}: no load table (failed or unfinished run?)")

def med(xs):
    return statistics.median(xs) if xs else float("nan")

def spread(xs):
    # (max - min) / median, the run-to-run range of one cell
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else float("nan")

def geomean(xs):
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")

def label(kind, client):
    return kind if client == "rust-h2" else f"{kind} ({client})"

order = lambda k: (k[0], kinds_order.index(k[2]), k[3], k[1])
# Cells measured by one binary only (kinds a newer bench added) cannot be compared.
keys = sorted(set(data["old"]) & set(data["new"]), key=order)
one_side = {side: sorted({label(k[2], k[3]) for k in set(data[side]) - set(keys)})
            for side in data}
n_old = len({t for v in data["old"].values() for t, *_ in v})
n_new = len({t for v in data["new"].values() for t, *_ in v})
print(f"runs: old {n_old}, new {n_new} (from {runs_dir})")
for side in data:
    if one_side[side]:
        print(f"only in {side} runs, not compared: " + ", ".join(one_side[side]))
print()

def table(title, idx, unit, fmt, higher_is_better):
    print(f"### {title}\n")
    print(f"| model | conc | server kind | old median {unit} | new median {unit} | new/old "
          f"| old spread | new spread |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    ratios = {}
    for k in keys:
        o = [v[idx] for v in data["old"].get(k, [])]
        n = [v[idx] for v in data["new"].get(k, [])]
        mo, mn = med(o), med(n)
        ratio = mn / mo if o and n and mo > 0 else float("nan")
        if o and n:
            ratios.setdefault(label(k[2], k[3]), []).append(ratio)
        cell = lambda xs, m: fmt.format(m) if xs else "-"
        sp = lambda xs: f"{spread(xs):.1%}" if len(xs) > 1 else "-"
        print(f"| {k[0]} | {k[1]} | {label(k[2], k[3])} | {cell(o, mo)} | {cell(n, mn)} | "
              f"{ratio:.3f} | {sp(o)} | {sp(n)} |")
    print()
    print(f"geometric mean of new/old per server kind ({'higher' if higher_is_better else 'lower'}"
          " is better for new):\n")
    print("| server kind | cells | geomean new/old | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind in sorted(ratios, key=lambda s: kinds_order.index(s.split()[0])):
        rs = ratios[kind]
        print(f"| {kind} | {len(rs)} | {geomean(rs):.3f} | {min(rs):.3f} | {max(rs):.3f} |")
    print()

def per_turn(idx):
    # new run i ÷ old run i, geometric mean over a kind's cells: the spread of the pairs
    turns = sorted({t for v in data["new"].values() for t, *_ in v}
                   & {t for v in data["old"].values() for t, *_ in v})
    if not turns:
        return
    kinds = sorted({label(k[2], k[3]) for k in keys}, key=lambda s: kinds_order.index(s.split()[0]))
    print("per turn (new run i ÷ old run i, geometric mean over the kind's cells):\n")
    print("| turn | " + " | ".join(kinds) + " |")
    print("| ---: |" + " ---: |" * len(kinds))
    for t in turns:
        cols = []
        for kind in kinds:
            rs = []
            for k in keys:
                if label(k[2], k[3]) != kind:
                    continue
                o = [v[idx] for v in data["old"].get(k, []) if v[0] == t]
                n = [v[idx] for v in data["new"].get(k, []) if v[0] == t]
                if o and n and o[0] > 0:
                    rs.append(n[0] / o[0])
            cols.append(f"{geomean(rs):.3f}" if rs else "-")
        print(f"| {t} | " + " | ".join(cols) + " |")
    print()

table("Served throughput (req/s)", 1, "req/s", "{:.0f}", True)
per_turn(1)
table("Server CPU per request (µs; the bench's `cpu srv` ÷ req/s)", 2, "µs/req", "{:.1f}", False)

noisy = sorted({(side, t) for side in data for v in data[side].values()
                for t, _, _, other in v if other > 15})
if noisy:
    print("runs with a cell where other processes used > 15% of a core (the bench's noise flag): "
          + ", ".join(f"{s}-{t:02d}" for s, t in noisy))
for e in errors:
    print("NOTE:", e)
PY
}

if [[ "${1:-}" == "--report" ]]; then
    report "${2:?usage: $0 --report RUNS_DIR}"
    exit 0
fi

old_rev="${1:?usage: $0 OLD_REV [TURNS]}"
turns="${2:-5}"
repo="$(git rev-parse --show-toplevel)"
ab_dir="${AB_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/load_ab.XXXXXX")}"
mkdir -p "$ab_dir/runs"
worktree="$ab_dir/old"
old_target="$ab_dir/old-target"

cleanup() {
    if [[ "${AB_KEEP:-0}" != 1 ]]; then
        git -C "$repo" worktree remove --force "$worktree" 2>/dev/null || true
        rm -rf "$old_target"
    fi
}
trap cleanup EXIT

if [[ ! -d "$worktree" ]]; then
    git -C "$repo" worktree add --detach "$worktree" "$old_rev" >&2
fi
want="$(git -C "$repo" rev-parse "$old_rev^{commit}")"
have="$(git -C "$worktree" rev-parse HEAD)"
[[ "$want" == "$have" ]] || { echo "$worktree is at $have, not $old_rev ($want)" >&2; exit 1; }

# Prints the path of the load bench executable that cargo built (or found up to date).
build() {
    local dir="$1"
    shift
    (cd "$dir" && env "$@" nice -n 10 cargo bench --bench load --no-run --message-format=json) |
        python3 -c '
import json, sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "load" \
            and "bench" in m["target"]["kind"] and m.get("executable"):
        exe = m["executable"]
if not exe:
    sys.exit("no load bench executable in cargo output")
print(exe)'
}

echo "building the load bench at $old_rev in $worktree ..." >&2
old_exe="$(build "$worktree" CARGO_TARGET_DIR="$old_target")"
echo "building the load bench in $repo ..." >&2
new_exe="$(build "$repo")"
# Frozen copies: a later build in either target dir (another checkout state, another job)
# must not swap a binary between turns.
mkdir -p "$ab_dir/bin"
cp "$old_exe" "$ab_dir/bin/load-old"
cp "$new_exe" "$ab_dir/bin/load-new"
old_exe="$ab_dir/bin/load-old"
new_exe="$ab_dir/bin/load-new"
echo "old: $old_exe" >&2
echo "new: $new_exe" >&2
{
    echo "old $old_rev $want $old_exe"
    echo "new $(git -C "$repo" rev-parse HEAD)$(git -C "$repo" diff --quiet HEAD || echo '+dirty') $new_exe"
} >"$ab_dir/runs/binaries.txt"

export LOAD_SECONDS="${LOAD_SECONDS:-3}"
export LOAD_TONIC_CONCURRENCY="${LOAD_TONIC_CONCURRENCY-}"
export LOAD_H2LOAD_CONCURRENCY="${LOAD_H2LOAD_CONCURRENCY-}"

wait_quiet() {
    [[ -n "${AB_QUIET_FILE:-}" ]] || return 0
    local said=0
    while [[ ! -e "$AB_QUIET_FILE" ]]; do
        if [[ $said == 0 ]]; then
            echo "$(date -u +%T) waiting for $AB_QUIET_FILE ..." >&2
            said=1
        fi
        sleep 20
    done
}

log="$ab_dir/runs/log.txt"
for ((i = 1; i <= turns; i++)); do
    for side in old new; do
        exe="$old_exe"
        [[ $side == new ]] && exe="$new_exe"
        out="$ab_dir/runs/$(printf '%s-%02d.txt' "$side" "$i")"
        wait_quiet
        start="$(date -u +%T)"
        echo "$start turn $i $side ..." >&2
        # A failed run is kept and reported, not fatal: the other runs still count.
        "$exe" --bench >"$out" 2>&1 || echo "$side-$i exited $?" >>"$log"
        quiet_after=yes
        [[ -z "${AB_QUIET_FILE:-}" || -e "$AB_QUIET_FILE" ]] || quiet_after=no
        echo "$side $i start $start end $(date -u +%T) quiet-file-at-end $quiet_after" >>"$log"
    done
done

report "$ab_dir/runs" | tee "$ab_dir/table.md"
echo "runs and table kept in $ab_dir" >&2
