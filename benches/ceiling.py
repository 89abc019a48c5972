#!/usr/bin/env python3
"""The ceiling: bind one socket, start N node workers by hand on it (fd 3, LISTEN_FDS=1,
LISTEN_PID=own pid), then only wait. No supervision, no restarts: what an init can at best match.
usage: ceiling.py HOST:PORT N -- COMMAND..."""
import os, signal, socket, sys

addr, n = sys.argv[1], int(sys.argv[2])
cmd = sys.argv[sys.argv.index("--") + 1:]
host, port = addr.rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, int(port)))
s.listen(1024)
kids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        if s.fileno() != 3:
            os.dup2(s.fileno(), 3)
        os.set_inheritable(3, True)  # dup2 onto itself would keep FD_CLOEXEC
        env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), CLUSTER_WORKER_ID=str(i))
        os.execvpe(cmd[0], cmd, env)
    kids.append(pid)

def stop(*_):
    for k in kids:
        try:
            os.kill(k, signal.SIGTERM)
        except ProcessLookupError:
            pass
signal.signal(signal.SIGTERM, stop)
for _ in kids:
    while True:
        try:
            os.wait()
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            break
