-- wrk summary as one JSON line (latencies in microseconds). wrk corrects its latency histogram
-- for coordinated omission before done() sees it: a response that took T adds the samples its
-- connection would have produced meanwhile, so a few long stalls weigh on the percentiles
-- (max is a real response's).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, latency.mean))
end
