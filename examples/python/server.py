"""A stdlib-only HTTP server that cluster-init runs N times.

The one change a server needs: use the socket at fd 3 when LISTEN_FDS says so.
"""

import os
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORKER = os.environ.get("CLUSTER_WORKER_ID", "-")


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/":
            self.send_error(404)
            return
        body = f"hello from worker {WORKER} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # No access log: client_address is empty on a unix socket, which the
        # default log line cannot print, and N workers would interleave lines.
        pass


class Server(ThreadingHTTPServer):
    # SIGTERM drains: server_close() waits for the requests in flight.
    daemon_threads = False
    block_on_close = True


def make_server():
    if not os.environ.get("LISTEN_FDS"):
        return Server(("", int(os.environ.get("PORT", "3000"))), Hello)
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # ours, not our children's
    server = Server(("", 0), Hello, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=3)  # family and type read from the fd
    # With --balance shared every worker accepts from this socket: one that
    # loses the race for a connection must get EAGAIN, not block in accept().
    server.socket.setblocking(False)
    server.server_address = server.socket.getsockname()
    return server


def main():
    server = make_server()
    # shutdown() waits for serve_forever() to return, so it cannot run on the
    # thread that is inside serve_forever(), which is where signals land.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
