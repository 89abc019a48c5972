#!/usr/bin/env python3
"""A stand-in OTLP/HTTP collector on 127.0.0.1. usage: collector.py MODE PORT [COUNT_FILE]
MODE ok: answer 200 to every POST (and count them); 500: answer 500; hang: accept TCP
connections (kernel backlog) but never read nor answer."""
import http.server, socket, sys, time

mode, port = sys.argv[1], int(sys.argv[2])
count_file = sys.argv[3] if len(sys.argv) > 3 else None
if mode == "hang":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    print("ready", flush=True)
    while True:
        time.sleep(3600)

posts = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global posts
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        code = 200 if mode == "ok" else 500
        self.send_response(code)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
        posts += 1
        if count_file:
            with open(count_file, "w") as f:
                f.write(str(posts))
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
print("ready", flush=True)
srv.serve_forever()
