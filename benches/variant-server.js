// The seed server (examples/node/server.js) with one of two changes, for the churn and the
// worker-output benchmarks; every manager runs it alike (cluster-init, Node cluster, PM2).
//   EXIT_AFTER_REQUESTS=N  the worker process.exit(0)s once its Nth response has gone out
//                          (a server that recycles itself: a leak guard, max-requests)
//   LOG_EACH_REQUEST=1     console.log one access-log line per request, to stdout
// The seed's own code is untouched: its request handler is wrapped on its way in.
'use strict';
const http = require('http');
const path = require('path');

const exitAfter = Number(process.env.EXIT_AFTER_REQUESTS) || 0;
const logEach = process.env.LOG_EACH_REQUEST === '1';
const worker = process.env.CLUSTER_WORKER_ID || process.env.NODE_APP_INSTANCE || '-';

const createServer = http.createServer;
http.createServer = function (...args) {
  const i = args.findIndex((a) => typeof a === 'function');
  const handler = args[i];
  let served = 0;
  args[i] = (req, res) => {
    if (logEach) {
      console.log(`${new Date().toISOString()} worker=${worker} pid=${process.pid} ${req.method} ${req.url} 200`);
    }
    handler(req, res);
    if (exitAfter && ++served === exitAfter) {
      res.on('finish', () => process.exit(0));
    }
  };
  return createServer.apply(this, args);
};

require(path.join(__dirname, '..', 'examples', 'node', 'server.js'));
