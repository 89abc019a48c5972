"""A WSGI app for gunicorn under cluster-init. Nothing in it knows about fds:
gunicorn takes the socket at fd 3 by itself when LISTEN_PID is its pid."""

import os

WORKER = os.environ.get("CLUSTER_WORKER_ID", "-")


def app(environ, start_response):
    if environ.get("PATH_INFO", "/") != "/":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    # os.getpid() is gunicorn's worker process, the child of the gunicorn
    # master that cluster-init started.
    body = f"hello from worker {WORKER} (pid {os.getpid()})\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
