// Node's own cluster module running the seed server (or SERVER=path, a variant of it): the
// primary forks N workers and (on Linux, by default) hands them connections round-robin. A
// worker that exits is forked again at once, as a hand-written primary does (Node has no
// restart policy of its own); not while stopping.
'use strict';
const cluster = require('cluster');
const path = require('path');
const n = Number(process.env.WORKERS) || 2;
if (cluster.isPrimary) {
  let stopping = false;
  const ids = new Map(); // worker.id -> slot
  const fork = (slot) => ids.set(cluster.fork({ CLUSTER_WORKER_ID: String(slot) }).id, slot);
  for (let i = 0; i < n; i++) fork(i);
  cluster.on('exit', (worker) => {
    const slot = ids.get(worker.id);
    ids.delete(worker.id);
    if (stopping) {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
    } else {
      fork(slot);
    }
  });
  process.on('SIGTERM', () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].kill('SIGTERM');
    setTimeout(() => process.exit(0), 2000).unref();
  });
} else {
  require(process.env.SERVER || path.join(__dirname, '..', 'examples', 'node', 'server.js'));
}
