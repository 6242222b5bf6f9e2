#!/usr/bin/env python3
"""The demo stack's stand-in for the NMP API: answers every request with what it received.

    python3 scripts/demo_upstream.py [--host 127.0.0.1] [--port 8081]

Every method on every path gets 200 and a JSON body
    {"upstream": "nmp-api (demo)", "method": ..., "path": ..., "headers": {...}}
with the request headers as the upstream saw them (names lower-case; a header sent more than
once is a list of its values, in order). It shows what the gateway forwards: for an allowed
request `x-nmp-authorized: true` and the principal headers nmp-authz set, and never an
`x-nmp-*` header the client sent.

Standard library only (runs in python:3.12-slim as mounted by docker-compose.yml).
"""

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "nmp-api-demo/1"
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            if name in headers:
                previous = headers[name]
                headers[name] = (previous if isinstance(previous, list) else [previous]) + [value]
            else:
                headers[name] = value
        answer = {
            "upstream": "nmp-api (demo)",
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_bytes": len(body),
        }
        payload = (json.dumps(answer, indent=2, sort_keys=True) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format, *args):  # one line per request on stderr
        sys.stderr.write("nmp-api (demo): %s\n" % (format % args))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="listen port (default 8081)")
    args = parser.parse_args()
    try:
        server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    except OSError as e:
        sys.exit(f"nmp-api (demo): cannot listen on {args.host}:{args.port}: {e.strerror}")
    server.daemon_threads = True
    # SIGTERM (docker stop, the demo script's cleanup) ends it like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"nmp-api (demo): listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
