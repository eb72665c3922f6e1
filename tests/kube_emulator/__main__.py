"""`python -m kube_emulator`: serve the emulator on 127.0.0.1 (port chosen by the OS), write a
kubeconfig for it, print one line `kube-emulator listening on http://127.0.0.1:PORT` on stdout
once it accepts connections, and run until SIGTERM/SIGINT (or, with `--exit-on-stdin-eof`, until
the parent closes our stdin, so a crashed test leaves no server behind)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import kmock

from .server import ApiServer


def kubeconfig(url: str, namespace: str) -> dict:
    """A kubeconfig with one context pointing at the emulator (no credentials: it has no auth)."""
    return {
        'apiVersion': 'v1',
        'kind': 'Config',
        'clusters': [{'name': 'kube-emulator', 'cluster': {'server': url}}],
        'users': [{'name': 'kube-emulator', 'user': {}}],
        'contexts': [{'name': 'kube-emulator',
                      'context': {'cluster': 'kube-emulator', 'user': 'kube-emulator', 'namespace': namespace}}],
        'current-context': 'kube-emulator',
        'preferences': {},
    }


async def serve(args: argparse.Namespace) -> None:
    api = ApiServer(bookmark_interval=args.bookmark_interval, history_limit=args.history,
                    log_requests=args.log_requests, request_log=args.request_log)
    api.resources.load_bundled()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_on_stdin_eof:
        async def watch_stdin() -> None:
            await asyncio.to_thread(sys.stdin.buffer.read)
            stop.set()
        asyncio.create_task(watch_stdin(), name='stdin-eof')
    async with api, kmock.Server(api, host=args.host, port=args.port) as server:
        url = f'http://{args.host}:{server.port}'
        if args.kubeconfig:
            tmp = f'{args.kubeconfig}.tmp'
            with open(tmp, 'w', encoding='utf-8') as f:
                json.dump(kubeconfig(url, args.namespace), f, indent=2)
            os.replace(tmp, args.kubeconfig)
        print(f'kube-emulator listening on {url}', flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog='kube_emulator', description=__doc__)
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=0, help='0: let the OS choose')
    parser.add_argument('--kubeconfig', help='write a kubeconfig for the emulator here')
    parser.add_argument('--namespace', default='default', help="the kubeconfig context's namespace")
    parser.add_argument('--bookmark-interval', type=float, default=5.0,
                        help='seconds between BOOKMARK events on idle watches that asked for them')
    parser.add_argument('--history', type=int, default=100_000,
                        help='events kept for watches resuming from a resourceVersion (older: 410 Gone)')
    parser.add_argument('--log-requests', action='store_true', help='log every request to stderr')
    parser.add_argument('--request-log', help='append every request as a JSON line to this file')
    parser.add_argument('--exit-on-stdin-eof', action='store_true')
    asyncio.run(serve(parser.parse_args()))


if __name__ == '__main__':
    main()
