// Node's own cluster module running the seed server: the primary forks N workers
// and (on Linux, by default) hands them connections round-robin.
'use strict';
const cluster = require('cluster');
const path = require('path');
const n = Number(process.env.WORKERS) || 2;
if (cluster.isPrimary) {
  for (let i = 0; i < n; i++) cluster.fork({ CLUSTER_WORKER_ID: String(i) });
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill('SIGTERM');
    setTimeout(() => process.exit(0), 2000).unref();
    cluster.on('exit', () => { if (Object.keys(cluster.workers).length === 0) process.exit(0); });
  });
} else {
  require(path.join(__dirname, '..', 'examples', 'node', 'server.js'));
}
