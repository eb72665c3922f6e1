#!/usr/bin/env python3
"""Draws the autoscaling test's replica count over time (the CSV that
tests/tests/k8s_autoscaling.rs writes) as a PNG.

Usage: plot_replicas.py CSV PNG   (needs matplotlib)"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
t = [float(r["seconds"]) for r in rows]
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.step(t, [int(r["replicas"]) for r in rows], where="post", label="Deployment spec.replicas")
ax.step(t, [int(r["ready"]) for r in rows], where="post", linestyle="--", label="ready replicas")
ax.step(t, [int(r["hpa_desired"]) for r in rows], where="post", linestyle=":",
        label="HPA desiredReplicas")
ax.set_xlabel("seconds since the load started")
ax.set_ylabel("replicas")
ax.set_ylim(bottom=0)
backlog = [(x, float(r["backlog"])) for x, r in zip(t, rows) if r["backlog"]]
if backlog:
    ax2 = ax.twinx()
    ax2.plot([x for x, _ in backlog], [b for _, b in backlog], color="grey", alpha=0.5,
             label="backlog (ready messages, Prometheus)")
    ax2.set_ylabel("messages waiting")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right")
ax.legend(loc="upper left")
ax.set_title("The real HPA controller scaling the pushers (k8s_autoscaling)")
fig.tight_layout()
fig.savefig(out, dpi=100)
