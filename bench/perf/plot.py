#!/usr/bin/env python3
"""Two plots from one run of bench/perf/run.sh: throughput against concurrency in the overload
scenario, and the latency CDF for clean and tail. Usage: plot.py RESULTS_DIR"""
import os
import sys

from run_results import loader

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]


load = loader(out)


# Throughput against concurrency (overload: upstream capacity 32).
sweep = []
for f in os.listdir(out):
    if f.startswith("wxpush-overload-fixed") and f.endswith(".json"):
        sweep.append((int(f[len("wxpush-overload-fixed"):-5]), load(f[:-5])["rate"]))
sweep.sort()
fig, ax = plt.subplots(figsize=(7, 4.5))
if sweep:
    ax.plot([m for m, _ in sweep], [r for _, r in sweep], "o-", label="wxpush, fixed maxInFlight")
adaptive = load("wxpush-overload-adaptive")
if adaptive:
    ax.axhline(adaptive["rate"], color="tab:green", ls="--",
               label=f"wxpush, adaptive default (limit {adaptive['concurrency_limit']:.0f} at the end)")
lp = load("loop-overload")
if lp:
    ax.axhline(lp["rate"], color="tab:gray", ls=":", label="bare loop, 256 tasks")
ax.axvline(32, color="tab:red", lw=0.8, label="upstream capacity")
ax.set_xscale("log", base=2)
ax.set_xlabel("concurrency (maxInFlight)")
ax.set_ylabel("delivered messages/s")
ax.set_title("Overload: upstream serves 32 at a time, +250 µs per request beyond")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "overload-throughput.png"), dpi=120)

# Latency CDF: the loop's per-request samples; wxpush's send-duration histogram (per attempt).
fig, ax = plt.subplots(figsize=(7, 4.5))
for name, style in [("clean", "-"), ("tail", "--")]:
    lp = load("loop-" + name)
    if lp and lp["latency_samples"]:
        xs = [x * 1000 for x in lp["latency_samples"]]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.plot(xs, ys, style, color="tab:gray", label=f"bare loop, {name}")
    wx = load("wxpush-" + name)
    if wx and wx["send_duration_buckets"]:
        buckets = [(float("inf") if le == "+Inf" else float(le), c) for le, c in wx["send_duration_buckets"]]
        total = buckets[-1][1] or 1
        xs = [le * 1000 for le, _ in buckets if le != float("inf")]
        ys = [c / total for le, c in buckets if le != float("inf")]
        ax.step(xs, ys, style, where="post", color="tab:blue", label=f"wxpush send attempts, {name}")
ax.set_xscale("log")
ax.set_xlabel("latency (ms)")
ax.set_ylabel("share of requests")
ax.set_ylim(0, 1.01)
ax.set_title("Latency CDF (clean and tail: 1 % of responses hang 30 s)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "latency-cdf.png"), dpi=120)
print("plots:", os.path.join(out, "overload-throughput.png"), os.path.join(out, "latency-cdf.png"))

# Rate against latency (issue 20's sweep).
xs_lat = [("2", 2), ("20", 20), ("50", 50), ("100", 100)]
lines = [("loop", "t256", "bare loop, 256 tasks", "tab:gray", ":"),
         ("loop", "t1024", "bare loop, 1,024 tasks", "black", ":"),
         ("wxpush", "default", "wxpush, defaults", "tab:blue", "-"),
         ("wxpush", "ceiling64", "wxpush, maxInFlight 64 (old default)", "tab:red", "--"),
         ("wxpush", "fixed256", "wxpush, fixed 256", "tab:orange", "--"),
         ("wxpush", "fixed1024", "wxpush, fixed 1,024", "tab:green", "--")]
if any(load(f"{kind}-lat20-{s}") for kind, s, *_ in lines):
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for kind, s, label, color, style in lines:
        pts = [(x, load(f"{kind}-lat{lat}-{s}")) for lat, x in xs_lat]
        pts = [(x, r["rate"]) for x, r in pts if r]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", color=color, label=label)
        hang = load(f"{kind}-lat20hang-{s}")
        if hang:
            ax.plot([20], [hang["rate"]], marker="x", ms=9, ls="none", color=color)
    ax.plot([], [], marker="x", ls="none", color="black", label="× = 20 ms with 1 % hanging 30 s")
    ax.set_xscale("log")
    ax.set_xticks([2, 20, 50, 100])
    ax.set_xticklabels(["2", "20 ± 10", "50 ± 25", "100 ± 50"])
    ax.set_xlabel("WeChat stand-in latency (ms)")
    ax.set_ylabel("delivered messages/s")
    ax.set_title("Rate against latency (one run, one sandbox)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rate-vs-latency.png"), dpi=120)
    print("plot:", os.path.join(out, "rate-vs-latency.png"))
