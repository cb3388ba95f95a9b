"""The table scripts/bench-node.sh prints: one column per target (the range over the rounds) and
the ratios within each round.

    python3 report.py RESULTS.jsonl "1000 9000" USERS CLIENTS RECOVER
"""

import json
import os
import sys
from collections import defaultdict

NAMES = {
    "node-redis": "node+Redis",
    "node-memory": "node memory",
    "sio-redis": "Socket.IO+Redis Streams",
    "sio-memory": "Socket.IO memory",
    "ws": "ws",
}
RATIOS = [
    ("node-redis", "node-memory"),
    ("node-redis", "sio-redis"),
    ("node-redis", "ws"),
    ("node-memory", "ws"),
]


def span(values, fmt):
    """min–max of the rounds (one value when they agree)."""
    if not values:
        return "–"
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def main(path, idle_counts, users, clients, recover):
    results = defaultdict(lambda: defaultdict(list))  # target -> row -> [result per round]
    by_round = defaultdict(dict)  # round -> target -> sends/s
    targets = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["target"] not in targets:
                targets.append(r["target"])
            results[r["target"]][r["row"]].append(r["result"])
            if r["row"] == "sends":
                by_round[r["round"]][r["target"]] = r["result"]["sends_per_s"]

    def cells(row, pick, fmt):
        return [span([pick(v) for v in results[t][row]], fmt) for t in targets]

    print("| row | " + " | ".join(NAMES[t] for t in targets) + " |")
    print("|---" * (len(targets) + 1) + "|")
    for n in idle_counts.split():
        kib = cells(f"idle{n}", lambda v: v["kib_per_connection"], lambda x: f"{x:.1f}")
        print(f"| RSS per idle connection at {int(n):,}, KiB | " + " | ".join(kib) + " |")
    rate = cells("sends", lambda v: v["sends_per_s"], lambda x: f"{x:,.0f}")
    print(f"| HTTP → user sends/s, {clients} keep-alive clients, {int(users):,} users | "
          + " | ".join(rate) + " |")
    for p in ("p50", "p99"):
        lat = cells("sends", lambda v, p=p: v[f"{p}_ms"], lambda x: f"{x:.1f}")
        print(f"| send → receipt {p} ms | " + " | ".join(lat) + " |")
    cpu = cells("sends", lambda v: v.get("server_cpu_us_per_send") or 0, lambda x: f"{x:.0f}")
    print("| server CPU per send, µs (user + system) | " + " | ".join(cpu) + " |")
    drv = cells("sends", lambda v: v.get("driver_cpu_fraction", 0), lambda x: f"{x:.2f}")
    print("| driver CPU, cores (of its one) | " + " | ".join(drv) + " |")
    store = cells("sends", lambda v: v.get("store_cpu_us_per_send") or 0, lambda x: f"{x:.0f}" if x else "–")
    core = os.environ.get("REDIS_CORE")
    where = f"its own, on core {core}" if core else "shared, not pinned"
    print(f"| Redis CPU per send, µs ({where}) | " + " | ".join(store) + " |")
    share = cells("sends", lambda v: v.get("store_cpu_fraction") or 0, lambda x: f"{x:.2f}" if x else "–")
    print("| Redis CPU, cores | " + " | ".join(share) + " |")
    lost = [sum(v["sends"] - v["received"] for v in results[t]["sends"]) for t in targets]
    print("| sends answered 2xx but not received (all rounds) | "
          + " | ".join(str(x) for x in lost) + " |")
    rec = [
        " / ".join(f"{v['recovered']}/{v['sent_while_away']} in {v['ms']:.0f} ms"
                   if v["recovered"] else f"0/{v['sent_while_away']}"
                   for v in results[t]["recover"])
        for t in targets
    ]
    print(f"| {recover} messages sent while away, recovered on reconnect | " + " | ".join(rec) + " |")
    print()
    pairs = [(a, b) for a, b in RATIOS if a in targets and b in targets]
    if not pairs:
        return
    print("| round | " + " | ".join(f"{NAMES[a]} ÷ {NAMES[b]}" for a, b in pairs) + " |")
    print("|---" * (len(pairs) + 1) + "|")
    for rnd in sorted(by_round):
        s = by_round[rnd]
        print(f"| {rnd} | " + " | ".join(
            f"{s[a] / s[b]:.2f}" if s.get(b) else "–" for a, b in pairs) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
