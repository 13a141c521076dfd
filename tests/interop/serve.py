"""Serves a directory over HTTP on 127.0.0.1 at a free port (GET only), for the interoperability tests.

Usage: serve.py DIR. Prints "PORT <n>" on the first line of stdout once listening, then serves until killed.
"""

import functools
import http.server
import sys


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        sys.stderr.write("serve.py: " + (format % args) + "\n")


def main() -> None:
    handler = functools.partial(QuietHandler, directory=sys.argv[1])
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        print(f"PORT {server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
