#!/usr/bin/env python3
"""Runs the command blocks of README.md, so that the README cannot drift from what works.

Every fenced ```sh block of README.md is either run here, or marked by an HTML comment on the
line right before its fence:

    <!-- needs: cluster -->      needs a Kubernetes cluster (not run; tests/e2e/kind.sh covers it)
    <!-- run-by: WHAT -->        run elsewhere, by WHAT (e.g. `.ci/run` for scripts/test.sh)

Unmarked blocks are recognised by what they do and run as written:

- the first block: its command (`cargo run --release -p wxpush-pusher --features demo -- demo`) runs verbatim;
  it must exit 0 and print `delivered N/N, 0 lost`;
- demo variants (`demo --faults …`, `demo --keep-running`): each line runs verbatim; a
  `--faults` run must end delivered N/N, 0 lost with a breaker opening for `outage`; a
  `--keep-running` run must print curl lines, which are run (POST → 202, GET → the status,
  metrics, sandbox stats) before it is stopped with Ctrl-C (SIGINT);
- "Running it by hand" (`cargo build --release …`): the block runs whole in one bash, exactly as
  pasted (nothing added between its lines); then the POST must have answered 202, no curl may
  have failed, the last GET must say "delivered", and the block's own `kill` must have stopped
  the servers (a trap stops them if anything fails);
- crdgen: both lines run verbatim, and crds/pushchannel.yaml must be unchanged afterwards.

A block that is neither recognised nor marked fails the run. Usage:
    scripts/readme-commands.py            # run everything
    scripts/readme-commands.py --list     # only list the blocks and what covers each
    scripts/readme-commands.py --only first   # one kind: first, demo, hand, crdgen
"""

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SUMMARY = re.compile(r"^delivered (\d+)/(\d+), (\d+) lost", re.M)
ME = "scripts/readme-commands.py"


def blocks(text):
    """Yields (line number, marker or None, lines) for each ```sh block."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            start = i
            marker = None
            if start > 0:
                m = re.match(r"\s*<!--\s*(needs|run-by):\s*(.*?)\s*-->\s*$", lines[start - 1])
                if m:
                    marker = (m.group(1), m.group(2))
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            yield start + 1, marker, body
        i += 1


def commands(body):
    """Logical commands: continuation lines joined, comment-only lines dropped."""
    out, cur = [], ""
    for line in body:
        if not cur and line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out


def kind_of(index, body):
    cmds = commands(body)
    if index == 0:
        return "first"
    if cmds and all(" demo " in c + " " and c.startswith("cargo run") for c in cmds):
        return "demo"
    if cmds and cmds[0].startswith("cargo build"):
        return "hand"
    if cmds and all("crdgen" in c for c in cmds):
        return "crdgen"
    return None


def strip_comment(cmd):
    """The command without a trailing `# comment` (outside quotes)."""
    quote = None
    for pos, ch in enumerate(cmd):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (pos == 0 or cmd[pos - 1].isspace()):
            return cmd[:pos].rstrip()
    return cmd


def log(msg):
    print(f"readme-commands: {msg}", flush=True)


def fail(msg, output=None):
    if output is not None:
        sys.stdout.write(output[-6000:] + "\n")
    log(f"FAILED: {msg}")
    sys.exit(1)


def run_shell(cmd, timeout):
    log(f"$ {cmd}")
    env = dict(os.environ)
    p = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def check_summary(cmd, rc, out, err):
    both = out + "\n" + err
    if "\x1b" in both:
        fail(f"`{cmd}` wrote escape codes to a pipe", both)
    m = SUMMARY.search(out)
    if rc != 0 or not m or m.group(1) != m.group(2) or m.group(3) != "0":
        fail(f"`{cmd}` exited {rc} without `delivered N/N, 0 lost`", both)
    log(f"ok: {m.group(0)}")
    return out


def run_first(body):
    cmd = strip_comment(commands(body)[0])
    rc, out, err = run_shell(cmd, timeout=3600)
    sys.stdout.write(out)
    check_summary(cmd, rc, out, err)


def run_keep_running(cmd):
    log(f"$ {cmd}   (in the background)")
    out_path = tempfile.mktemp(prefix="wxpush-keep-running-")
    with open(out_path, "w") as out:
        p = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=ROOT, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 1800
        text = ""
        while time.time() < deadline:
            text = open(out_path).read()
            if "still running" in text or p.poll() is not None:
                break
            time.sleep(0.5)
        if "still running" not in text:
            fail(f"`{cmd}` never said it is still running", text)
        check_summary(cmd, 0, text, "")
        lines = text.split("still running", 1)[1].split("\n")[1:]
        curls, cur = [], ""
        for line in lines:
            if not line.startswith("  "):
                continue
            cur += line.strip()
            if cur.endswith("\\"):
                cur = cur[:-1] + " "
                continue
            curls.append(cur)
            cur = ""
        if len(curls) < 3:
            fail("fewer than three curl lines printed", text)
        for c in curls:
            rc, o, e = run_shell(c, timeout=30)
            if rc != 0:
                fail(f"`{c}` exited {rc}", o + e)
            if "-X POST" in c and not re.search(r"^HTTP/\S+ 202", o, re.M):
                fail(f"`{c}` did not answer 202", o)
            if "/v1/messages/" in c and '"status"' not in o:
                fail(f"`{c}` shows no status", o)
            if "/metrics" in c and "wxpush_messages_accepted_total" not in o:
                fail(f"`{c}` shows no metrics", o)
            log(f"ok: {o.strip().splitlines()[0][:100] if o.strip() else '(empty)'}")
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=30)
        if rc != 0:
            fail(f"`{cmd}` exited {rc} after Ctrl-C", open(out_path).read())
        log("ok: stopped by Ctrl-C, exit 0")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        os.unlink(out_path)


def run_demo(body):
    for cmd in map(strip_comment, commands(body)):
        if "--keep-running" in cmd:
            run_keep_running(cmd)
            continue
        rc, out, err = run_shell(cmd, timeout=3600)
        sys.stdout.write(out)
        check_summary(cmd, rc, out, err)
        if "--faults outage" in cmd:
            m = re.search(r"circuit breaker openings\s+(\d+)", out)
            if "outage" not in out or not m or int(m.group(1)) < 1:
                fail("the outage run names no outage or no breaker opening", out)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def listen_port(cmd):
    m = re.search(r"--listen\s+\S+:(\d+)", cmd)
    if m:
        return int(m.group(1))
    m = re.search(r"--config\s+(\S+)", cmd)
    if m:
        text = open(os.path.join(ROOT, m.group(1))).read()
        m = re.search(r"^listen:\s*\S+:(\d+)", text, re.M)
        if m:
            return int(m.group(1))
    return None


def run_hand(body):
    # Pasted whole: the block runs as one bash script exactly as written (no waits added), so a
    # race between a backgrounded server and the next command fails here as it would for a
    # reader. Only a trap (stop leftovers on failure) and the checks after it are added.
    ports = []
    for cmd in commands(body):
        bare = strip_comment(cmd)
        if bare.endswith("&"):
            port = listen_port(bare)
            if port is None:
                fail(f"no port in `{bare}`")
            if not port_free(port):
                fail(f"port {port} is taken; the README's hand-run block needs it")
            ports.append(port)
    script = [
        "trap 'jobs -p | xargs -r kill 2>/dev/null || true' EXIT",
        "rm -rf target/wxpush-data",
        "untracked() { git status --porcelain --untracked-files=all | { grep '^??' || true; } | sort; }",
        "before=$(untracked)",
        "\n".join(body),
        "wait || true",
        '[ "$(untracked)" = "$before" ] || { echo "the run left new files in the repository:"; '
        'diff <(echo "$before") <(untracked); exit 1; }',
    ]
    log("running the hand-run block as pasted (ports " + ", ".join(map(str, ports)) + ")")
    p = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, capture_output=True,
                       text=True, timeout=3600)
    out = p.stdout + p.stderr
    sys.stdout.write(out)
    if p.returncode != 0:
        fail(f"the hand-run block exited {p.returncode}")
    if "curl: (" in out:
        fail("a curl in the hand-run block failed")
    if not re.search(r"^HTTP/[0-9.]+ 202", p.stdout, re.M):
        fail("the POST did not answer 202")
    if not re.search(r'"status":"delivered"', p.stdout):
        fail("the message was not delivered")
    for port in ports:
        if not port_free(port):
            fail(f"port {port} still open after the block's kill")
    log("ok: 202, then delivered; servers stopped")


def run_crdgen(body):
    for cmd in map(strip_comment, commands(body)):
        rc, out, err = run_shell(cmd, timeout=1800)
        if rc != 0:
            fail(f"`{cmd}` exited {rc}", out + err)
    rc, out, err = run_shell("git diff --exit-code -- crds/pushchannel.yaml", timeout=60)
    if rc != 0:
        fail("crdgen changed crds/pushchannel.yaml", out)
    log("ok: crds/pushchannel.yaml unchanged")


RUNNERS = {"first": run_first, "demo": run_demo, "hand": run_hand, "crdgen": run_crdgen}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="only list the blocks")
    ap.add_argument("--only", choices=sorted(RUNNERS), help="run only blocks of this kind")
    ap.add_argument("--readme", default=README, help="another copy of the README (to try edits)")
    args = ap.parse_args()
    text = open(args.readme).read()
    found = list(blocks(text))
    if not found:
        fail("README.md has no ```sh block")
    plan = []
    unmarked = []
    for index, (line, marker, body) in enumerate(found):
        kind = None if marker else kind_of(index, body)
        if marker:
            what = "needs a cluster (not run)" if marker[0] == "needs" else f"run by {marker[1]}"
        elif kind:
            what = f"run by {ME} ({kind})"
        else:
            what = "NOT RUN AND NOT MARKED"
            unmarked.append(line)
        first = commands(body)[0] if commands(body) else ""
        log(f"README.md:{line}: {what}: {first[:70]}")
        if kind:
            plan.append((kind, body))
    if unmarked:
        fail("blocks at README.md lines " + ", ".join(map(str, unmarked))
             + " are neither run here nor marked <!-- needs: cluster --> / <!-- run-by: … -->")
    if args.list:
        return
    for kind, body in plan:
        if args.only and kind != args.only:
            continue
        RUNNERS[kind](body)
    log("all README blocks ok")


if __name__ == "__main__":
    main()
