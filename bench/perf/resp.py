"""A minimal Redis client over a plain socket (RESP), for the benchmark scripts that talk to
redis-server without a client library: bench/perf/slowlog.py and bench/perf/complete_batch.py.
"""

import socket


class Redis:
    """One connection to redis-server on 127.0.0.1:`port`."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = self.sock.makefile("rb")

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def reply(self):
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2]
        if kind == b":":
            return int(rest)
        if kind == b"-":
            raise RuntimeError(rest.decode())
        return rest

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        return self.reply()

    def pipeline(self, calls):
        self.sock.sendall(b"".join(self.encode(c) for c in calls))
        return [self.reply() for _ in calls]
