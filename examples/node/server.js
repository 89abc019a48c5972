// The seed example: a plain Node HTTP server that cluster-init runs N times.
// The one change a server needs: listen on fd 3 when LISTEN_FDS says so.
'use strict';
const http = require('http');

const worker = process.env.CLUSTER_WORKER_ID || '-';

const server = http.createServer((req, res) => {
  if (req.method !== 'GET' || req.url !== '/') {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
    return;
  }
  res.writeHead(200, { 'Content-Type': 'text/plain' });
  res.end(`hello from worker ${worker} (pid ${process.pid})\n`);
});

if (process.env.LISTEN_FDS) {
  // cluster-init bound the port and keeps it open; fd 3 is this worker's
  // socket. Children of ours must not think it is theirs.
  delete process.env.LISTEN_FDS;
  delete process.env.LISTEN_PID;
  delete process.env.LISTEN_FDNAMES;
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT) || 3000);
}

// SIGTERM: stop accepting, finish the requests in flight, then exit 0.
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});
