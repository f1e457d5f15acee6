#!/usr/bin/env bash
# Runs the same `sluice bench` workloads against kinesalite and `sluice serve`, one after
# the other on loopback, and prints a markdown comparison table.
#
# Usage: bench/compare.sh            (from anywhere; ~1.5 min plus the release build)
#
# Environment (all optional):
#   BENCH_SECONDS=10        seconds per workload against sluice
#   KINESALITE_SECONDS=     seconds per workload against kinesalite (default BENCH_SECONDS)
#   BENCH_CLIENTS=8         clients against sluice
#   KINESALITE_CLIENTS=     clients against kinesalite (default BENCH_CLIENTS)
#   BENCH_SHARDS=4          shards of the stream created on each server
#   BENCH_WORKLOAD=all      put-500x100 | put-50x1k | get | all
#   BENCH_GET_MIN_RECORDS=50000   records the stream must hold before the get workload
#   BENCH_EXTRA_ARGS=       more `sluice bench` flags, e.g. "--record-size 200"
#   BENCH_TARGETS="kinesalite sluice"   which servers to measure
#   SLUICE_BIN=target/release/sluice    the server binary
#   SLUICE_BENCH_BIN="target/release/sluice bench"   the load generator command
#                           (e.g. target/release/examples/loadgen)
#   SKIP_BUILD=1            do not run cargo build
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BENCH_SECONDS=${BENCH_SECONDS:-10}
KINESALITE_SECONDS=${KINESALITE_SECONDS:-$BENCH_SECONDS}
BENCH_CLIENTS=${BENCH_CLIENTS:-8}
KINESALITE_CLIENTS=${KINESALITE_CLIENTS:-$BENCH_CLIENTS}
BENCH_SHARDS=${BENCH_SHARDS:-4}
BENCH_WORKLOAD=${BENCH_WORKLOAD:-all}
BENCH_GET_MIN_RECORDS=${BENCH_GET_MIN_RECORDS:-50000}
BENCH_EXTRA_ARGS=${BENCH_EXTRA_ARGS:-}
BENCH_TARGETS=${BENCH_TARGETS:-kinesalite sluice}
SLUICE_BIN=${SLUICE_BIN:-target/release/sluice}
SLUICE_BENCH_BIN=${SLUICE_BENCH_BIN:-$SLUICE_BIN bench}
KINESALITE_VERSION=3.3.3

read -ra BENCH_CMD <<<"$SLUICE_BENCH_BIN"
read -ra EXTRA_ARGS <<<"$BENCH_EXTRA_ARGS"

log() { printf '[compare] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compare.XXXXXX")
SERVER_PID=

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until 127.0.0.1:$1 accepts connections, while the server process lives.
wait_port() {
    local port=$1 name=$2 log_file=$3
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited during startup; its log:"
            tail -n 30 "$log_file" >&2 || true
            SERVER_PID=
            return 1
        fi
        sleep 0.1
    done
    log "$name did not listen on 127.0.0.1:$port within 30 s"
    return 1
}

wants() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

# --- build / install --------------------------------------------------------------------
if [[ -z ${SKIP_BUILD:-} ]] && { wants sluice || [[ ${BENCH_CMD[0]} == "$SLUICE_BIN" ]]; }; then
    log "building sluice (release)"
    cargo build --release -p sluice
fi
if [[ ! -x ${BENCH_CMD[0]} ]] && ! command -v "${BENCH_CMD[0]}" >/dev/null; then
    log "load generator ${BENCH_CMD[0]} not found (set SLUICE_BENCH_BIN)"
    exit 1
fi
if wants kinesalite && [[ ! -f bench/.peers/node_modules/kinesalite/package.json ]]; then
    log "installing kinesalite@$KINESALITE_VERSION into bench/.peers/"
    mkdir -p bench/.peers
    (cd bench/.peers && npm install --no-audit --no-fund --loglevel=error "kinesalite@$KINESALITE_VERSION" >&2)
fi

# --- runs -------------------------------------------------------------------------------
# run_bench NAME PORT SECONDS CLIENTS: writes $WORK/NAME.json, returns non-zero on failure.
run_bench() {
    local name=$1 port=$2 secs=$3 clients=$4
    log "benchmarking $name on 127.0.0.1:$port: workload=$BENCH_WORKLOAD ${secs}s x $clients clients"
    "${BENCH_CMD[@]}" \
        --endpoint "http://127.0.0.1:$port" \
        --stream bench \
        --shards "$BENCH_SHARDS" \
        --clients "$clients" \
        --duration "${secs}s" \
        --workload "$BENCH_WORKLOAD" \
        --get-min-records "$BENCH_GET_MIN_RECORDS" \
        --create \
        --json \
        --server-pid "$SERVER_PID" \
        ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} >"$WORK/$name.json"
}

FAILED=()

if wants kinesalite; then
    port=$(free_port)
    node bench/kinesalite-server.js "$port" >"$WORK/kinesalite.log" 2>&1 &
    SERVER_PID=$!
    if wait_port "$port" kinesalite "$WORK/kinesalite.log" &&
        run_bench kinesalite "$port" "$KINESALITE_SECONDS" "$KINESALITE_CLIENTS"; then
        :
    else
        FAILED+=(kinesalite)
        rm -f "$WORK/kinesalite.json"
    fi
    stop_server
fi

if wants sluice; then
    port=$(free_port)
    mkdir -p "$WORK/sluice-data"
    "$SLUICE_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/sluice-data" --durability fsync \
        >"$WORK/sluice.log" 2>&1 &
    SERVER_PID=$!
    if wait_port "$port" sluice "$WORK/sluice.log" &&
        run_bench sluice "$port" "$BENCH_SECONDS" "$BENCH_CLIENTS"; then
        :
    else
        FAILED+=(sluice)
        rm -f "$WORK/sluice.json"
        log "sluice log tail:"
        tail -n 20 "$WORK/sluice.log" >&2 || true
    fi
    stop_server
fi

# --- table ------------------------------------------------------------------------------
python3 - "$WORK" <<'PY'
import json, os, sys

work = sys.argv[1]

def load(name):
    try:
        with open(os.path.join(work, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

k, s = load("kinesalite"), load("sluice")

def by_workload(rep):
    return {w["workload"]: w for w in rep["workloads"]} if rep else {}

kw, sw = by_workload(k), by_workload(s)
names = list(dict.fromkeys([*kw, *sw]))

def num(w, key, fmt):
    if w is None or w.get(key) is None:
        return "-"
    return format(w[key], fmt)

def ratio(a, b):
    if a is None or b is None or not a.get("records_per_sec"):
        return "-"
    return f"{b['records_per_sec'] / a['records_per_sec']:.1f}x"

def setup(name, rep):
    if rep is None:
        return f"{name}: not measured"
    w = rep["workloads"][0] if rep["workloads"] else {}
    return f"{name}: {w.get('clients', '?')} clients, {rep['duration_secs']:g}s/workload, {rep['shards']} shards"

print()
print("| workload | kinesalite rec/s | sluice rec/s | ratio | kinesalite p99 ms | sluice p99 ms "
      "| kinesalite RSS MiB | sluice RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    a, b = kw.get(n), sw.get(n)
    print(f"| {n} | {num(a, 'records_per_sec', '.0f')} | {num(b, 'records_per_sec', '.0f')} | {ratio(a, b)} "
          f"| {num(a, 'p99_ms', '.1f')} | {num(b, 'p99_ms', '.1f')} "
          f"| {num(a, 'server_rss_peak_mib', '.0f')} | {num(b, 'server_rss_peak_mib', '.0f')} |")
print()
print(f"{setup('kinesalite', k)}; {setup('sluice', s)}. ratio = sluice / kinesalite records/s; "
      "RSS = peak server VmRSS during the workload.")
for name, ws in (("kinesalite", kw), ("sluice", sw)):
    for n, w in ws.items():
        if w.get("errors") or w.get("failed_records"):
            print(f"{name} {n}: {w['errors']} errors, {w['failed_records']} failed records; "
                  f"first: {w.get('first_error')}")
PY

if ((${#FAILED[@]})); then
    log "failed: ${FAILED[*]}"
    exit 1
fi
