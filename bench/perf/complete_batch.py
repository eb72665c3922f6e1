"""What one call of the Redis store's outcome script (`complete`) costs Redis per message, by
the number of messages in the call: a fresh redis-server (AOF on, `appendfsync everysec`, as
bench/perf/redis.sh runs it), N messages leased as the store leases them (stream entry pending
in the group, record, lease), then their outcomes (delivered) written B at a time, one call
after the other from one client. Prints Redis's time in the script per message (`INFO
commandstats`, which counts wall time: run it on a quiet machine) and redis-server's CPU.

    python3 bench/perf/complete_batch.py [B ...]      # default: 1 13 64 128; N=20000 each

The script's text is read from pusher/src/store/redis/scripts.rs (`PENDING_FN` and the body of
`complete()`), so it measures this tree's script. Records are 500-byte JSON documents shaped like
the store's (`id` and `status` first). A benchmark reports; it asserts nothing.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resp import Redis

ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("N", "20000"))


def script_text():
    src = (ROOT / "pusher/src/store/redis/scripts.rs").read_text()
    pending = re.search(r'const PENDING_FN: &str = r#"(.*?)"#;', src, re.S).group(1)
    body = re.search(r'pub\(crate\) fn complete\(\) -> String \{.*?r"(.*?)"\n    \)', src, re.S)
    return pending + body.group(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def measure(batch, script):
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--dir", data],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    r = Redis(port)
                    break
                except OSError:
                    time.sleep(0.05)
            base = "{wxpush:bench}:"
            sha = r.call("SCRIPT", "LOAD", script).decode()
            r.call("XGROUP", "CREATE", base + "q", "g", "$", "MKSTREAM")
            ids = [f"01J{i:023d}" for i in range(N)]
            pad = "x" * 400

            def record(i, status):
                return json.dumps({"id": i, "status": status, "pad": pad}, separators=(",", ":"))

            r.pipeline([("XADD", base + "q", "*", "id", i) for i in ids]
                       + [("SET", base + "m:" + i, record(i, "sending")) for i in ids]
                       + [("SET", base + "n", N)])
            read = r.call("XREADGROUP", "GROUP", "g", "c", "COUNT", N, "STREAMS", base + "q", ">")
            entry = {e[1][1].decode(): e[0].decode() for e in read[0][1]}
            r.pipeline([("HSET", base + "lease", i, entry[i]) for i in ids])
            r.call("CONFIG", "RESETSTAT")
            cpu0 = cpu_seconds(server.pid)
            now = int(time.time() * 1000)
            fixed = [base + k for k in ("q", "lease", "n", "dead", "deadt", "cb", "cbd", "d")]
            for start in range(0, N, batch):
                keys, args = list(fixed), ["g", now, 604800000, "0"]
                for i in ids[start:start + batch]:
                    keys += [base + "m:" + i, base + "i:", base + "a:openid", base + "x:"]
                    args += [entry[i], i, record(i, "delivered"), "1", now, "0", "1", "", "", "",
                             "0", "", now]
                r.call("EVALSHA", sha, len(keys), *keys, *args)
            cpu1 = cpu_seconds(server.pid)
            stats = r.call("INFO", "commandstats").decode()
            m = re.search(r"cmdstat_evalsha:calls=(\d+),usec=(\d+)", stats)
            calls, usec = int(m.group(1)), int(m.group(2))
            print(f"{batch:4d} messages a call: {calls:6d} calls, {usec / N:6.2f} µs per message in "
                  f"the script ({usec / calls:7.1f} µs a call), redis-server CPU "
                  f"{(cpu1 - cpu0) / N * 1e6:6.2f} µs per message")
        finally:
            server.terminate()
            server.wait()


def main():
    script = script_text()
    for batch in [int(b) for b in sys.argv[1:]] or [1, 13, 64, 128]:
        measure(batch, script)


if __name__ == "__main__":
    main()
