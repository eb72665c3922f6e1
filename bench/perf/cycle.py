#!/usr/bin/env python3
"""Samples one benchmark run every PERIOD seconds, to see where a send's cycle goes.

    bench/perf/cycle.py PUSHER_URL SANDBOX_URL PUSHER_PID SANDBOX_PID TOOL_PID OUT.json

Run by bench/perf/cycle.sh beside `wxpush-bench e2e` (TOOL_PID), until that tool exits. Each
sample: messages delivered (the sandbox's count), the pusher's adaptive limit, the sum and count
of its send durations (`wxpush_send_duration_seconds`: the latency the pusher sees, from taking
a slot of its gate to the answer), the sandbox's own time per send and its injected latency
(`sends_busy_us`, `sends_injected_us` of `GET /__stats`), and the CPU seconds of the pusher, the
sandbox and the tool. By Little's law, a sum of latencies grown by S seconds over an interval of
T seconds is S / T requests in flight on average over it.

Prints a table per interval and one line for the steady part (from 10 % to 90 % delivered).
"""

import json
import os
import sys
import time
import urllib.request

PERIOD = float(os.environ.get("PERIOD", "0.1"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return None


def waited(pid):
    """Seconds the process's threads spent runnable but waiting for a CPU (schedstat)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        return None
    return total / 1e9


def get(url):
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.read().decode()


def metrics(pusher):
    out = {}
    for line in get(f"{pusher}/metrics").splitlines():
        for name in (
            "wxpush_send_duration_seconds_sum",
            "wxpush_send_duration_seconds_count",
            "wxpush_concurrency_limit",
            "wxpush_inflight_requests",
        ):
            if line.startswith(name):
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


def sample(pusher, sandbox, pids):
    stats = json.loads(get(f"{sandbox}/__stats?per_openid=false"))
    try:
        m = metrics(pusher)
    except OSError:  # the loop's runs have no pusher
        m = {}
    return {
        "t": time.monotonic(),
        "delivered": stats["delivered_unique"],
        "sb_answered": stats.get("sends_answered", 0),
        "sb_busy": stats.get("sends_busy_us", 0) / 1e6,
        "sb_injected": stats.get("sends_injected_us", 0) / 1e6,
        "p_sum": m.get("wxpush_send_duration_seconds_sum", 0.0),
        "p_count": m.get("wxpush_send_duration_seconds_count", 0.0),
        "limit": m.get("wxpush_concurrency_limit", 0.0),
        "ready": m.get("wxpush_inflight_requests", 0.0),
        "cpu": [cpu(p) for p in pids],
        "wait": [waited(p) for p in pids[:2]],
    }


def between(a, b):
    dt = b["t"] - a["t"]
    sends = b["p_count"] - a["p_count"]
    answered = b["sb_answered"] - a["sb_answered"]
    used = [
        (y - x) / dt if x is not None and y is not None else None
        for x, y in zip(a["cpu"], b["cpu"])
    ]
    wait = [
        (y - x) / dt if x is not None and y is not None else None
        for x, y in zip(a["wait"], b["wait"])
    ]
    return {
        "secs": dt,
        "rate": (b["delivered"] - a["delivered"]) / dt,
        "limit": b["limit"],
        # Attempts in the sender at the end of the interval: in flight or waiting for the gate.
        "ready": b["ready"],
        # Requests in flight on average, as the pusher's gate and as the sandbox saw them.
        "pusher_in_flight": (b["p_sum"] - a["p_sum"]) / dt,
        "sandbox_in_flight": (b["sb_busy"] - a["sb_busy"]) / dt,
        # Mean latency per send, as the pusher and as the sandbox saw it, and injected.
        "pusher_ms": 1e3 * (b["p_sum"] - a["p_sum"]) / sends if sends else None,
        "sandbox_ms": 1e3 * (b["sb_busy"] - a["sb_busy"]) / answered if answered else None,
        "injected_ms": 1e3 * (b["sb_injected"] - a["sb_injected"]) / answered if answered else None,
        "cpu_pusher": used[0],
        "cpu_sandbox": used[1],
        "cpu_tool": used[2],
        # Threads runnable but waiting for a CPU, on average (the OS's run queue).
        "wait_pusher": wait[0],
        "wait_sandbox": wait[1],
    }


def fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def main():
    pusher, sandbox, p_pid, s_pid, t_pid, out = sys.argv[1:7]
    pids = [p_pid, s_pid, t_pid]
    samples = []
    while os.path.exists(f"/proc/{t_pid}"):
        try:
            samples.append(sample(pusher, sandbox, pids))
        except OSError:
            pass
        time.sleep(PERIOD)
    try:
        samples.append(sample(pusher, sandbox, pids))
    except OSError:
        pass
    rows = [between(a, b) for a, b in zip(samples, samples[1:])]
    total = samples[-1]["delivered"] - samples[0]["delivered"] if samples else 0
    lo = next((s for s in samples if s["delivered"] - samples[0]["delivered"] >= 0.1 * total), None)
    hi = next((s for s in samples if s["delivered"] - samples[0]["delivered"] >= 0.9 * total), None)
    steady = between(lo, hi) if lo and hi and hi["t"] > lo["t"] else None
    json.dump({"rows": rows, "steady": steady}, open(out, "w"), indent=1)
    head = "   t  rate/s  limit  ready  p_infl  s_infl  p_ms  s_ms  inj_ms  cpu_p  cpu_s  cpu_t wait_p wait_s"
    print(head)
    t = 0.0
    for r in rows:
        t += r["secs"]
        print(
            f"{t:4.1f} {r['rate']:7.0f} {r['limit']:6.0f} {r['ready']:6.0f} {r['pusher_in_flight']:7.0f}"
            f" {r['sandbox_in_flight']:7.0f} {fmt(r['pusher_ms'], '5.1f')} {fmt(r['sandbox_ms'], '5.1f')}"
            f" {fmt(r['injected_ms'], '6.1f')} {fmt(r['cpu_pusher'], '6.2f')} {fmt(r['cpu_sandbox'], '6.2f')}"
            f" {fmt(r['cpu_tool'], '6.2f')} {fmt(r['wait_pusher'], '6.2f')} {fmt(r['wait_sandbox'], '6.2f')}"
        )
    if steady:
        r = steady
        print(
            f"steady (10-90 %, {r['secs']:.2f} s): {r['rate']:.0f}/s, limit {r['limit']:.0f}, in flight"
            f" pusher {r['pusher_in_flight']:.0f} sandbox {r['sandbox_in_flight']:.0f}, latency pusher"
            f" {fmt(r['pusher_ms'], '.1f')} ms sandbox {fmt(r['sandbox_ms'], '.1f')} ms injected"
            f" {fmt(r['injected_ms'], '.1f')} ms, CPU pusher {fmt(r['cpu_pusher'], '.2f')} sandbox"
            f" {fmt(r['cpu_sandbox'], '.2f')} tool {fmt(r['cpu_tool'], '.2f')}; waiting for a CPU:"
            f" pusher {fmt(r['wait_pusher'], '.2f')} sandbox {fmt(r['wait_sandbox'], '.2f')}"
        )


if __name__ == "__main__":
    main()
