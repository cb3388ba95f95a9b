#!/usr/bin/env bash
# Benchmarks wscluster-proxy against a direct connection, NGINX and HAProxy in one run, with the
# workloads interleaved (each workload runs against every target before the next workload), so
# the machine's state is the same for all of them. Loopback only; every step bounded in time.
#
#   scripts/bench-proxy.sh                 # build, install nginx/haproxy if missing, run, print
#   ROUNDS=3 IDLE_CONNS=9000 scripts/bench-proxy.sh
#   SKIP_BUILD=1 CARGO_TARGET_DIR=/path scripts/bench-proxy.sh   # use binaries already built
#   ROWS="upgrades paced" scripts/bench-proxy.sh   # only some rows (echo100 echo1000 paced
#                                                  # upgrades idle; default all)
#   TLS=1 scripts/bench-proxy.sh           # the TLS rows instead (tls-handshakes tls-resumed
#                                          # tls-echo100 tls-echo1000 tls-idle); ROWS may mix
#
# Rows: closed-loop echo msgs/s at 100 and 1,000 connections with the proxy's CPU time per
# message (utime+stime from /proc), round-trip p50/p99 at a fixed paced rate, upgrades/s
# (connect + upgrade + close), and RSS growth per idle connection at IDLE_CONNS connections
# (each proxy freshly started for that row). Every proxy runs one worker process/thread.
# TLS rows (wscluster-proxy, NGINX, HAProxy terminating TLS with the same ECDSA P-256
# certificate from a test CA the script makes): full handshakes (connect, TLS, upgrade, close)
# and resumed handshakes (TLS 1.3 tickets; the load tool counts which handshakes resumed) per
# CPU-second of the proxy, CPU per echoed message over TLS at 100 and 1,000 connections, RSS
# growth per idle TLS connection. wscluster-proxy joins them when its binary has --tls-listen.
# Results: $WORK/results.jsonl and the markdown table $WORK/table.md (printed at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
ROUNDS=${ROUNDS:-2}
ECHO_SECONDS=${ECHO_SECONDS:-5}
PACED_RATE=${PACED_RATE:-10000}
PACED_CONNS=${PACED_CONNS:-100}
PACED_SECONDS=${PACED_SECONDS:-5}
UPGRADE_SECONDS=${UPGRADE_SECONDS:-3}
UPGRADE_CONCURRENCY=${UPGRADE_CONCURRENCY:-16}
IDLE_CONNS=${IDLE_CONNS:-9000}
BASE_PORT=${BASE_PORT:-19000}
TLS_ROWS="tls-handshakes tls-resumed tls-echo100 tls-echo1000 tls-idle"
if [ -n "${TLS:-}" ]; then ROWS=${ROWS:-$TLS_ROWS}; else ROWS=${ROWS:-echo100 echo1000 paced upgrades idle}; fi
want() { [[ " $ROWS " == *" $1 "* ]]; }

BACKEND_PORT=$((BASE_PORT + 1))
WSC_PORT=$((BASE_PORT + 101))
WSC_ADMIN=$((BASE_PORT + 102))
NGINX_PORT=$((BASE_PORT + 201))
HAPROXY_PORT=$((BASE_PORT + 301))
WSC_TLS_PORT=$((BASE_PORT + 103))
NGINX_TLS_PORT=$((BASE_PORT + 202))
HAPROXY_TLS_PORT=$((BASE_PORT + 302))

log() { echo "[bench $(date +%T)] $*" >&2; }

# --- Tools ---------------------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || ! command -v openssl >/dev/null; then
  log "installing nginx-light, haproxy and openssl (the TLS rows' certificates) from Debian"
  created_policy=""
  # Keep the packages' init scripts from starting daemons on public ports.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light haproxy openssl >/dev/null
  [ -n "$created_policy" ] && rm -f /usr/sbin/policy-rc.d
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -q -p wscluster-proxy -p wscluster-tests \
    --bin wscluster-proxy --bin wscluster-load)
fi
for b in wscluster-proxy wscluster-load; do
  [ -x "$BIN/$b" ] || { log "missing $BIN/$b"; exit 1; }
done

ulimit -n "$(ulimit -Hn)" || true
log "open-file limit $(ulimit -n); idle connections $IDLE_CONNS"

WORK=$(mktemp -d /tmp/wscluster-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"

# --- Configs -------------------------------------------------------------------------------
CERTS=$WORK/certs
write_bench_certs "$CERTS"
write_bench_configs "$WORK" "$BACKEND_PORT" "$NGINX_PORT" "$HAPROXY_PORT" \
  "$NGINX_TLS_PORT" "$HAPROXY_TLS_PORT" "$CERTS"
WSC_TLS_ARGS=()
TLS_TARGETS=(nginx haproxy)
if "$BIN/wscluster-proxy" --help 2>/dev/null | grep -q -- '--tls-listen'; then
  WSC_TLS_ARGS=(--tls-listen "127.0.0.1:$WSC_TLS_PORT" --tls-cert-file "$CERTS/server.crt"
    --tls-key-file "$CERTS/server.key")
  TLS_TARGETS=(wscluster nginx haproxy)
else
  log "this wscluster-proxy has no --tls-listen: TLS rows measure NGINX and HAProxy only"
fi

# --- Processes -----------------------------------------------------------------------------
declare -A TARGET_PID
start_backend() {
  "$BIN/wscluster-load" --threads 1 serve --listen "127.0.0.1:$BACKEND_PORT" --seconds 3600 \
    >"$WORK/backend.out" 2>"$WORK/backend.err" &
  BACKEND_PID=$!; PIDS+=("$BACKEND_PID"); wait_port "$BACKEND_PORT"
}
start_wscluster() {
  RUST_LOG=warn "$BIN/wscluster-proxy" --worker-threads 1 --listen "127.0.0.1:$WSC_PORT" \
    --admin-listen "127.0.0.1:$WSC_ADMIN" --cluster-id bench/echo --id bench \
    --config "$WORK/proxy.yaml" --ring-file "$WORK/ring.json" "${WSC_TLS_ARGS[@]}" \
    >"$WORK/wscluster.out" 2>"$WORK/wscluster.log" &
  TARGET_PID[wscluster]=$!; PIDS+=("$!"); wait_announced "$WORK/wscluster.out" >/dev/null
  [ ${#WSC_TLS_ARGS[@]} -eq 0 ] || wait_port "$WSC_TLS_PORT"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$WSC_ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
}
start_nginx() {
  nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
  TARGET_PID[nginx]=$!; PIDS+=("$!"); wait_port "$NGINX_PORT"; wait_port "$NGINX_TLS_PORT"
}
start_haproxy() {
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  TARGET_PID[haproxy]=$!; PIDS+=("$!"); wait_port "$HAPROXY_PORT"; wait_port "$HAPROXY_TLS_PORT"
}
stop_target() {
  local pid=${TARGET_PID[$1]:-}
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  TARGET_PID[$1]=""
  sleep 0.5
}
port_of() {
  case $1 in
    direct) echo "$BACKEND_PORT" ;; wscluster) echo "$WSC_PORT" ;;
    nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAPROXY_PORT" ;;
  esac
}
# url_of TARGET WORKLOAD KEY-PREFIX: the URL template; tls-* workloads use the TLS port.
url_of() {
  case $2 in
    tls-*)
      case $1 in
        wscluster) echo "wss://127.0.0.1:$WSC_TLS_PORT/ws?userId=$3{i}" ;;
        nginx) echo "wss://127.0.0.1:$NGINX_TLS_PORT/ws?userId=$3{i}" ;;
        haproxy) echo "wss://127.0.0.1:$HAPROXY_TLS_PORT/ws?userId=$3{i}" ;;
      esac ;;
    *) echo "ws://127.0.0.1:$(port_of "$1")/ws?userId=$3{i}" ;;
  esac
}
# The process and its children (nginx's worker).
tree_pids() {
  local pid=$1
  echo "$pid"
  pgrep -P "$pid" 2>/dev/null || true
}
cpu_ticks() { # utime + stime of a target's processes, in clock ticks
  local t=$1 total=0
  [ "$t" = direct ] && { echo 0; return; }
  for p in $(tree_pids "${TARGET_PID[$t]}"); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
rss_kib() {
  local t=$1 total=0
  for p in $(tree_pids "${TARGET_PID[$t]}"); do
    [ -r "/proc/$p/status" ] || continue
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
TARGETS=(direct wscluster nginx haproxy)

record() { # target workload round json extra-json
  python3 - "$@" >>"$RESULTS" <<'PY'
import json, sys
target, workload, rnd, result, extra = sys.argv[1:6]
r = json.loads(result.strip().splitlines()[-1])
r.update(json.loads(extra))
r.update({"target": target, "workload": workload, "round": int(rnd)})
print(json.dumps(r))
PY
}

run_load() { # target workload round -- load args...
  local t=$1 w=$2 r=$3; shift 4
  local c0 c1 out
  c0=$(cpu_ticks "$t")
  out=$(timeout 120 "$BIN/wscluster-load" --threads 1 --ca-file "$CERTS/ca.crt" "$@" \
    --url "$(url_of "$t" "$w" u)")
  c1=$(cpu_ticks "$t")
  record "$t" "$w" "$r" "$out" "{\"cpu_seconds\": $(python3 -c "print(($c1 - $c0) / $HZ)")}"
  log "$w $t: $(echo "$out" | tail -1)"
}

# --- Throughput, latency, upgrades (interleaved) -------------------------------------------
start_backend
start_wscluster; start_nginx; start_haproxy
for t in "${TARGETS[@]}"; do # warm-up
  timeout 60 "$BIN/wscluster-load" echo --connections 10 --seconds 1 \
    --url "ws://127.0.0.1:$(port_of "$t")/ws?userId=w{i}" >/dev/null
done
for t in "${TLS_TARGETS[@]}"; do
  timeout 60 "$BIN/wscluster-load" --ca-file "$CERTS/ca.crt" echo --connections 10 --seconds 1 \
    --url "$(url_of "$t" tls-warm-up w)" >/dev/null
done
for r in $(seq 1 "$ROUNDS"); do
  want echo100 && for t in "${TARGETS[@]}"; do run_load "$t" echo100 "$r" -- echo --connections 100 --seconds "$ECHO_SECONDS"; done
  want echo1000 && for t in "${TARGETS[@]}"; do run_load "$t" echo1000 "$r" -- echo --connections 1000 --seconds "$ECHO_SECONDS"; done
  want paced && for t in "${TARGETS[@]}"; do run_load "$t" paced "$r" -- paced --connections "$PACED_CONNS" --rate "$PACED_RATE" --seconds "$PACED_SECONDS"; done
  want upgrades && for t in "${TARGETS[@]}"; do run_load "$t" upgrades "$r" -- upgrades --concurrency "$UPGRADE_CONCURRENCY" --seconds "$UPGRADE_SECONDS"; done
  want tls-handshakes && for t in "${TLS_TARGETS[@]}"; do run_load "$t" tls-handshakes "$r" -- upgrades --concurrency "$UPGRADE_CONCURRENCY" --seconds "$UPGRADE_SECONDS"; done
  want tls-resumed && for t in "${TLS_TARGETS[@]}"; do run_load "$t" tls-resumed "$r" -- upgrades --resume --concurrency "$UPGRADE_CONCURRENCY" --seconds "$UPGRADE_SECONDS"; done
  want tls-echo100 && for t in "${TLS_TARGETS[@]}"; do run_load "$t" tls-echo100 "$r" -- echo --connections 100 --seconds "$ECHO_SECONDS"; done
  want tls-echo1000 && for t in "${TLS_TARGETS[@]}"; do run_load "$t" tls-echo1000 "$r" -- echo --connections 1000 --seconds "$ECHO_SECONDS"; done
done

# --- Memory per idle connection (fresh processes) ------------------------------------------
idle_row() { # target workload (idle or tls-idle)
  local t=$1 w=$2 before after fifo load_pid opened
  stop_target "$t"; "start_$t"
  # Warm-up: a few connections opened and closed, so one-time allocations are not counted.
  timeout 60 "$BIN/wscluster-load" --ca-file "$CERTS/ca.crt" echo --connections 50 --seconds 1 \
    --url "$(url_of "$t" "$w" w)" >/dev/null
  sleep 1
  before=$(rss_kib "$t")
  fifo=$WORK/$w-$t.out
  timeout 300 "$BIN/wscluster-load" --threads 1 --ca-file "$CERTS/ca.crt" idle \
    --connections "$IDLE_CONNS" --seconds 8 --url "$(url_of "$t" "$w" i)" \
    >"$fifo" 2>"$WORK/$w-$t.err" &
  load_pid=$!
  for _ in $(seq 1 1200); do grep -q opened "$fifo" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  after=$(rss_kib "$t")
  wait "$load_pid" || log "$w load for $t failed: $(tail -2 "$WORK/$w-$t.err")"
  opened=$(python3 -c "import json,sys; print(json.loads(open('$fifo').readline())['opened'])" 2>/dev/null || echo 0)
  record "$t" "$w" 1 "{\"opened\": $opened}" \
    "{\"rss_before_kib\": $before, \"rss_after_kib\": $after}"
  log "$w $t: opened $opened, RSS $before -> $after KiB"
}
want idle && for t in wscluster nginx haproxy; do idle_row "$t" idle; done
want tls-idle && for t in "${TLS_TARGETS[@]}"; do idle_row "$t" tls-idle; done

# --- Table ---------------------------------------------------------------------------------
python3 - "$RESULTS" "$WORK/table.md" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
T = ["direct", "wscluster", "nginx", "haproxy"]
def vals(w, t, k):
    return [r[k] for r in rows if r["workload"] == w and r["target"] == t and k in r]
def mean(w, t, k):
    v = vals(w, t, k)
    return st.mean(v) if v else None
def fmt(x, nd=0):
    return "—" if x is None else f"{x:,.{nd}f}"
out = ["| row | " + " | ".join(T) + " |", "|---|" + "---|" * len(T)]
for w, label in [("echo100", "echo msgs/s, 100 conns"), ("echo1000", "echo msgs/s, 1,000 conns")]:
    d = mean(w, "direct", "msgs_per_sec")
    cells = []
    for t in T:
        m = mean(w, t, "msgs_per_sec")
        cells.append(fmt(m) + ("" if t == "direct" or not d else f" ({m/d:.2f}×)"))
    out.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for t in T:
        if t == "direct":
            cells.append("—"); continue
        cpu = sum(vals(w, t, "cpu_seconds")); msgs = sum(vals(w, t, "messages"))
        cells.append(f"{cpu / msgs * 1e6:.1f}" if msgs else "—")
    out.append(f"| proxy CPU µs/msg, {w[4:]} conns | " + " | ".join(cells) + " |")
for k, label in [("p50_ms", "paced p50 ms"), ("p99_ms", "paced p99 ms"), ("achieved_rate", "paced achieved msgs/s")]:
    out.append(f"| {label} | " + " | ".join(fmt(mean("paced", t, k), 0 if k == "achieved_rate" else 3) for t in T) + " |")
d = mean("upgrades", "direct", "upgrades_per_sec")
cells = []
for t in T:
    m = mean("upgrades", t, "upgrades_per_sec")
    cells.append(fmt(m) + ("" if t == "direct" or not d or m is None else f" ({m/d:.2f}×)"))
out.append("| upgrades/s | " + " | ".join(cells) + " |")
cells = ["—"]
for t in T[1:]:
    cpu = sum(vals("upgrades", t, "cpu_seconds")); n = sum(vals("upgrades", t, "upgrades"))
    cells.append(f"{cpu / n * 1e6:.1f}" if n else "—")
out.append("| proxy CPU µs/upgrade | " + " | ".join(cells) + " |")
cells = ["—"]
for t in T[1:]:
    r = [x for x in rows if x["workload"] == "idle" and x["target"] == t]
    if r and r[0]["opened"]:
        r = r[0]
        cells.append(f"{(r['rss_after_kib'] - r['rss_before_kib']) / r['opened']:.2f} KiB ({r['opened']} conns)")
    else:
        cells.append("—")
out.append("| RSS growth per idle conn | " + " | ".join(cells) + " |")
plain = any(not r["workload"].startswith("tls-") for r in rows)
text = "\n".join(out) + "\n" if plain else ""

# TLS rows: the proxies only (the echo backend speaks no TLS), and wscluster-proxy's ratio to
# each of the others from the same run.
TT = [t for t in ["wscluster", "nginx", "haproxy"] if any(r["target"] == t and r["workload"].startswith("tls-") for r in rows)]
def total(w, t, k):
    return sum(vals(w, t, k))
def per_cpu_second(w, t):
    cpu = total(w, t, "cpu_seconds")
    return total(w, t, "upgrades") / cpu if cpu else None
def us_per_msg(w, t):
    n = total(w, t, "messages")
    return total(w, t, "cpu_seconds") / n * 1e6 if n else None
def idle_kib(w, t):
    r = [x for x in rows if x["workload"] == w and x["target"] == t and x.get("opened")]
    return (r[0]["rss_after_kib"] - r[0]["rss_before_kib"]) / r[0]["opened"] if r else None
def resumed_fraction(w, t):
    h = [r["tls"] for r in rows if r["workload"] == w and r["target"] == t and r.get("tls")]
    n = sum(x["full"] + x["resumed"] for x in h)
    return sum(x["resumed"] for x in h) / n if n else None
tls_rows = [
    ("full handshakes/s (load tool's view)", lambda t: mean("tls-handshakes", t, "upgrades_per_sec"), 0, None),
    ("full handshakes per proxy CPU-second", lambda t: per_cpu_second("tls-handshakes", t), 0, "higher"),
    ("resumed handshakes/s (load tool's view)", lambda t: mean("tls-resumed", t, "upgrades_per_sec"), 0, None),
    ("resumed handshakes per proxy CPU-second", lambda t: per_cpu_second("tls-resumed", t), 0, "higher"),
    ("handshakes that resumed, resumed row", lambda t: resumed_fraction("tls-resumed", t), 3, None),
    ("TLS echo msgs/s, 100 conns", lambda t: mean("tls-echo100", t, "msgs_per_sec"), 0, None),
    ("proxy CPU µs/msg over TLS, 100 conns", lambda t: us_per_msg("tls-echo100", t), 1, "lower"),
    ("TLS echo msgs/s, 1,000 conns", lambda t: mean("tls-echo1000", t, "msgs_per_sec"), 0, None),
    ("proxy CPU µs/msg over TLS, 1,000 conns", lambda t: us_per_msg("tls-echo1000", t), 1, "lower"),
    ("RSS growth per idle TLS conn, KiB", lambda t: idle_kib("tls-idle", t), 2, "lower"),
]
if TT:
    others = [t for t in TT if t != "wscluster"]
    head = TT + ([f"wscluster ÷ {o}" for o in others] if "wscluster" in TT else [])
    out = ["| TLS row | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for label, f, nd, better in tls_rows:
        v = {t: f(t) for t in TT}
        if all(x is None for x in v.values()):
            continue
        cells = [fmt(v[t], nd) for t in TT]
        if "wscluster" in TT:
            for o in others:
                w, x = v["wscluster"], v[o]
                cells.append(f"{w / x:.2f}× ({better} is better)" if better and w and x else "—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    idle = {t: [x for x in rows if x["workload"] == "tls-idle" and x["target"] == t] for t in TT}
    conns = sorted({x["opened"] for v in idle.values() for x in v})
    if conns:
        out.append(f"\nIdle TLS connections opened per target: {', '.join(map(str, conns))}.")
    neg = {t: next((r["tls"]["negotiated"] for r in rows if r["target"] == t and r.get("tls") and r["tls"].get("negotiated")), None) for t in TT}
    if any(neg.values()):  # the idle row records no handshake details
        out.append("Negotiated: " + "; ".join(f"{t} {n}" for t, n in neg.items() if n) + ".")
    text += ("\n" if text else "") + "\n".join(out) + "\n"
open(sys.argv[2], "w").write(text)
print(text)
PY
log "results in $WORK"
