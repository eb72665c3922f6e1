"""Each Redis command's and each script's share of Redis's time during a benchmark run, from
Redis's slow log with every command logged (bench/perf/redis.sh, SCRIPTS=1).

    python3 bench/perf/slowlog.py PORT DELIVERED PUSHER_STDERR

The scripts are named from the pusher's debug line "redis store scripts" (name=sha1 pairs) in
PUSHER_STDERR; a script it does not name is shown by its sha1. A script's time includes the
commands it runs, which are also listed on their own. Speaks RESP over a plain socket
(bench/perf/resp.py: no client library needed). A benchmark reports; it asserts nothing.
"""

import collections
import re
import sys

from resp import Redis


def main():
    port, delivered, stderr = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    names = {}
    for line in open(stderr, errors="replace"):
        if "redis store scripts" in line:
            names = {sha: name for name, sha in re.findall(r"(\w+)=([0-9a-f]{40})", line)}
    entries = Redis(port).call("SLOWLOG", "GET", "-1")
    per = collections.defaultdict(lambda: [0, 0])
    for entry in entries:
        usec, args = entry[2], entry[3]
        name = args[0].decode().lower()
        if name in ("evalsha", "eval") and len(args) > 1:
            sha = args[1].decode()
            name = f"script {names.get(sha, sha[:12])}"
        elif name in ("config", "slowlog"):
            continue
        per[name][0] += 1
        per[name][1] += usec
    total = sum(u for k, (_, u) in per.items() if k.startswith("script "))
    print(f"{len(entries)} slow log entries; script time {total / delivered:.1f} µs per delivered message")
    print(f"{'command or script':32s} {'calls/msg':>9s} {'µs/msg':>8s} {'µs/call':>9s} {'msgs/call':>9s}")
    for name, (calls, usec) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        if usec / delivered < 0.05:
            continue
        print(f"{name:32s} {calls / delivered:9.3f} {usec / delivered:8.2f} {usec / calls:9.1f} "
              f"{delivered / calls:9.1f}")


if __name__ == "__main__":
    main()
