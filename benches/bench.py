#!/usr/bin/env python3
"""cluster-init against its peers, every comparison side by side in one run.

Called by benches/run (which installs the tools and builds the binaries); writes one JSON file
that benches/report.py turns into docs/benchmarks.md and docs/benchmarks.png.
Everything runs on 127.0.0.1, every wait is bounded, and every process started here is killed
(with its descendants) on the way out, whatever happens.
"""
import argparse
import atexit
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")
BIN = os.path.join(ROOT, "target", "release", "cluster-init")
MUSL = os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release", "cluster-init")
PM2 = os.path.join(ROOT, "target", "bench-node", "node_modules", ".bin", "pm2")
SERVER = os.path.join(ROOT, "examples", "node", "server.js")
NODE = shutil.which("node") or "node"
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
QUIET = ["--log-level", "warn"]

TMP = tempfile.mkdtemp(prefix="cluster-init-bench-")
STARTED = []  # every Popen, killed with its tree at exit
PM2_HOMES = []


def log(*a):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc helpers

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def stat_fields(pid):
    s = read(f"/proc/{pid}/stat")
    if not s:
        return None
    return s[s.rindex(")") + 2:].split()  # [0] is field 3 (state)


def cpu_seconds(pid):
    f = stat_fields(pid)
    return (int(f[11]) + int(f[12])) / TICK if f else None


def state(pid):
    f = stat_fields(pid)
    return f[0] if f else None


def rss_kb(pid):
    m = re.search(r"VmRSS:\s+(\d+)", read(f"/proc/{pid}/status"))
    return int(m.group(1)) if m else None


def comm(pid):
    return read(f"/proc/{pid}/comm").strip()


def children(pid):
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tasks:
        out += [int(x) for x in read(f"/proc/{pid}/task/{t}/children").split()]
    return out


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def env_of(pid):
    raw = read(f"/proc/{pid}/environ")
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


def zombies_under(pid):
    return [c for c in descendants(pid) if state(c) == "Z"]


# ---------------------------------------------------------------- processes

def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "LISTEN_", "CLUSTER_INIT_", "PM2_", "NOTIFY_SOCKET"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn(cmd, env=None, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL):
    p = subprocess.Popen(cmd, env=env or clean_env(), stdin=subprocess.DEVNULL, stdout=stdout,
                         stderr=stderr, start_new_session=True)
    STARTED.append(p)
    return p


def kill_tree(p, sig=signal.SIGTERM, timeout=10.0):
    """Signal the root, wait for it, then SIGKILL whatever of its tree is left."""
    if p.poll() is not None:
        return p.returncode
    tree = descendants(p.pid)
    try:
        os.kill(p.pid, sig)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        tree += descendants(p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
    except ProcessLookupError:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return p.returncode


def pm2(home, *args, env_extra=None, timeout=60):
    env = clean_env(PM2_HOME=home, **(env_extra or {}))
    return subprocess.run([PM2, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=timeout)


def pm2_god_pid(home, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = read(os.path.join(home, "pm2.pid")).strip()
        if s.isdigit() and os.path.exists(f"/proc/{s}"):
            return int(s)
        time.sleep(0.05)
    raise RuntimeError("PM2 daemon did not start")


def pm2_kill(home):
    try:
        pid = read(os.path.join(home, "pm2.pid")).strip()
        tree = descendants(int(pid)) if pid.isdigit() else []
        pm2(home, "kill", timeout=30)
        for p in tree + ([int(pid)] if pid.isdigit() else []):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except Exception as e:  # noqa: BLE001 - cleanup must go on
        log("pm2 kill failed:", e)


def cleanup():
    for home in PM2_HOMES:
        pm2_kill(home)
    for p in STARTED:
        try:
            kill_tree(p, signal.SIGKILL, 5)
        except Exception:  # noqa: BLE001
            pass
    shutil.rmtree(TMP, ignore_errors=True)


atexit.register(cleanup)
for _s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_s, lambda *_: sys.exit(130))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:  # noqa: BLE001
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port}")


def wait_children(pid, n, name, timeout=30.0, poll=0.0005):
    """Seconds until `pid` has n children that have exec'd `name`."""
    t0 = time.monotonic()
    done = set()
    while time.monotonic() - t0 < timeout:
        for c in children(pid):
            if c not in done and comm(c) == name:
                done.add(c)
        if len(done) >= n:
            return time.monotonic() - t0
        time.sleep(poll)
    raise RuntimeError(f"pid {pid}: {len(done)} of {n} '{name}' children after {timeout}s")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- wrk

def wrk_cmd(port, secs, conns, threads, close=False, timeout="2s"):
    return ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", timeout,
            *(["-H", "Connection: close"] if close else []),
            "-s", os.path.join(BENCHES, "report.lua"), f"http://127.0.0.1:{port}/"]


def parse_wrk(out):
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk gave no summary:\n" + out)
    j = json.loads(m.group(1))
    secs = j["duration_us"] / 1e6
    j["rps"] = j["requests"] / secs
    j["socket_errors"] = j["connect"] + j["read"] + j["write"] + j["timeout"]
    return j


def wrk(port, secs, conns=64, threads=2, close=False):
    r = subprocess.run(wrk_cmd(port, secs, conns, threads, close), capture_output=True, text=True,
                       timeout=secs + 30)
    return parse_wrk(r.stdout)


class Sampler(threading.Thread):
    """Max RSS of one pid while a load runs."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.max_kb, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.max_kb = max(self.max_kb, rss_kb(self.pid) or 0)
            self.stop.wait(0.25)


# ---------------------------------------------------------------- throughput

def start_config(name, port):
    """Start one way of running 2 workers of the seed server; returns (popen, manager pid, stop)."""
    if name.startswith("cluster-init"):
        balance = name.split()[-1]
        p = spawn([BIN, *QUIET, "--listen", f"127.0.0.1:{port}", "--balance", balance, "-w", "2",
                   "--", NODE, SERVER])
        return p.pid, lambda: kill_tree(p)
    if name == "node cluster":
        p = spawn([NODE, os.path.join(BENCHES, "node-cluster.js")], env=clean_env(PORT=port, WORKERS=2))
        return p.pid, lambda: kill_tree(p)
    if name == "pm2 -i 2":
        home = os.path.join(TMP, f"pm2-{port}")
        PM2_HOMES.append(home)
        pm2(home, "start", SERVER, "-i", "2", "--name", "bench", env_extra={"PORT": port})
        return pm2_god_pid(home), lambda: pm2_kill(home)
    if name == "by hand (ceiling)":
        p = spawn([PY, os.path.join(BENCHES, "ceiling.py"), f"127.0.0.1:{port}", "2", "--", NODE, SERVER])
        return p.pid, lambda: kill_tree(p)
    raise ValueError(name)


THROUGHPUT_CONFIGS = ["cluster-init reuseport", "cluster-init shared", "node cluster", "pm2 -i 2",
                      "by hand (ceiling)"]


def bench_throughput(q):
    """All five setups run at once on their own ports (idle servers cost nothing); short wrk slices
    then go round-robin over them, so a burst of outside load hits every setup alike."""
    mgrs, stops, ports = {}, [], {}
    try:
        for name in THROUGHPUT_CONFIGS:
            ports[name] = free_port()
            mgrs[name], stop = start_config(name, ports[name])
            stops.append(stop)
        idle = {}
        for name in THROUGHPUT_CONFIGS:
            wait_http(ports[name])
        time.sleep(1)
        for name in THROUGHPUT_CONFIGS:
            idle[name] = rss_kb(mgrs[name])
            wrk(ports[name], q.warmup)  # JIT warm-up of the workers
        res = {n: [] for n in THROUGHPUT_CONFIGS}
        close = {n: [] for n in THROUGHPUT_CONFIGS}
        for kind, slices, secs, out in (("keep-alive", q.rounds, q.duration, res),
                                        ("close", q.close_rounds, q.close_duration, close)):
            for rnd in range(slices):
                k = rnd % len(THROUGHPUT_CONFIGS)
                for name in THROUGHPUT_CONFIGS[k:] + THROUGHPUT_CONFIGS[:k]:
                    mgr = mgrs[name]
                    c0 = cpu_seconds(mgr)
                    s = Sampler(mgr)
                    s.start()
                    r = wrk(ports[name], secs, close=(kind == "close"))
                    s.stop.set()
                    s.join()
                    c1 = cpu_seconds(mgr)
                    r["init_cpu_s"] = c1 - c0
                    r["init_cpu_pct"] = 100 * (c1 - c0) / (r["duration_us"] / 1e6)
                    r["init_rss_kb"] = s.max_kb
                    out[name].append(r)
                    log(f"throughput {kind} slice {rnd + 1} {name}: {r['rps']:.0f} req/s, p99 {r['p99'] / 1000:.1f} ms, "
                        f"manager cpu {r['init_cpu_pct']:.1f}% rss {s.max_kb} kB, "
                        f"errors {r['socket_errors']}+{r['status']}")
    finally:
        for stop in stops:
            stop()
    summary = {}
    for name in THROUGHPUT_CONFIGS:
        rs, cs = res[name], close[name]
        summary[name] = {
            "rounds": [round(r["rps"]) for r in rs],
            "rps": median([r["rps"] for r in rs]),
            "p50_ms": median([r["p50"] for r in rs]) / 1000,
            "p99_ms": median([r["p99"] for r in rs]) / 1000,
            "errors": sum(r["socket_errors"] + r["status"] for r in rs),
            "manager_cpu_s": sum(r["init_cpu_s"] for r in rs),
            "manager_cpu_pct": median([r["init_cpu_pct"] for r in rs]),
            "manager_rss_kb": max(r["init_rss_kb"] for r in rs + cs),
            "manager_idle_rss_kb": idle.get(name),
            "close_rounds": [round(r["rps"]) for r in cs],
            "close_rps": median([r["rps"] for r in cs]),
            "close_errors": sum(r["socket_errors"] + r["status"] for r in cs),
            "close_manager_cpu_pct": median([r["init_cpu_pct"] for r in cs]),
        }
    return {"wrk": f"wrk -t2 -c64 -d{q.duration}s, {q.rounds} slices per setup interleaved round-robin, median",
            "close": f"wrk -t2 -c64 -d{q.close_duration}s -H 'Connection: close', {q.close_rounds} slices per setup, median",
            "configs": summary}


# ---------------------------------------------------------------- footprint

def size_of(path):
    p = shutil.which(path) or path
    return os.path.getsize(os.path.realpath(p)) if os.path.exists(p) else None


def start_collector(mode, port, count_file=None):
    args = [PY, os.path.join(BENCHES, "collector.py"), mode, str(port)] + ([count_file] if count_file else [])
    p = spawn(args, stdout=subprocess.PIPE)
    line = p.stdout.readline()
    if b"ready" not in line:
        raise RuntimeError("collector did not start")
    return p


def idle_rss(cmd, env=None, n=1, settle=2.0, late=None, until=None):
    """RSS of a freshly started init once its children run `sleep`, after `settle` s (and `late` s,
    and once `until()` is true, waited for up to 10 s more)."""
    p = spawn(cmd, env=env)
    try:
        wait_children(p.pid, n, "sleep", timeout=10)
        time.sleep(settle)
        kb = rss_kb(p.pid)
        if late:
            time.sleep(late - settle)
            deadline = time.monotonic() + 10
            while until and not until() and time.monotonic() < deadline:
                time.sleep(0.1)
            if until and not until():
                log("idle_rss: the awaited event did not come within 10 s:", cmd[0])
            kb = max(kb, rss_kb(p.pid) or 0)
        return kb
    finally:
        kill_tree(p)


def bench_footprint(q):
    sizes = {
        "cluster-init (release, glibc dynamic)": size_of(BIN),
        "cluster-init (release, musl static)": size_of(MUSL),
        "tini": size_of("tini"),
        "tini-static": size_of("tini-static"),
        "dumb-init": size_of("dumb-init"),
        "catatonit": size_of("catatonit"),
    }
    rss = {}
    sleep = ["--", "sleep", "1000"]
    rss["cluster-init -w 2"] = idle_rss([BIN, *QUIET, "-w", "2", *sleep], n=2)
    if os.path.exists(MUSL):
        rss["cluster-init -w 2 (musl static)"] = idle_rss([MUSL, *QUIET, "-w", "2", *sleep], n=2)
    cport = free_port()
    count = os.path.join(TMP, "posts")
    col = start_collector("ok", cport, count)
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{cport}", OTEL_BSP_SCHEDULE_DELAY=1000)
    # after the first exports too: the exporter's buffers and HTTP client only grow once used
    def posted(before):
        return lambda: int(read(count) or 0) > before
    rss["cluster-init -w 2 + telemetry"] = idle_rss([BIN, *QUIET, "-w", "2", *sleep], env=env, n=2, late=4.0,
                                                    until=posted(0))
    if os.path.exists(MUSL):
        rss["cluster-init -w 2 + telemetry (musl static)"] = idle_rss(
            [MUSL, *QUIET, "-w", "2", *sleep], env=env, n=2, late=4.0, until=posted(int(read(count) or 0)))
    posts = int(read(count) or 0)
    kill_tree(col)
    rss["tini"] = idle_rss(["tini", "-s", *sleep])
    rss["tini-static"] = idle_rss(["tini-static", "-s", *sleep])
    rss["dumb-init"] = idle_rss(["dumb-init", "sleep", "1000"])
    rss["catatonit"] = idle_rss(["catatonit", *sleep])
    # The node managers, idle with the 2 server workers up
    for name in ("node cluster", "pm2 -i 2"):
        port = free_port()
        mgr, stop = start_config(name, port)
        try:
            wait_http(port)
            time.sleep(2)
            rss[name + (" primary" if name == "node cluster" else " daemon")] = rss_kb(mgr)
        finally:
            stop()
    log("footprint:", sizes, rss, "collector POSTs:", posts)
    return {"sizes": sizes, "idle_rss_kb": rss, "telemetry_posts_received": posts}


# ---------------------------------------------------------------- latencies

CRASHER = 'echo "s $EPOCHREALTIME" >> "$OUT.$CLUSTER_WORKER_ID"; echo "e $EPOCHREALTIME" >> "$OUT.$CLUSTER_WORKER_ID"; exit 1'


def parse_crash_log(path):
    s, e = [], []
    for line in read(path).splitlines():
        k, v = line.split()
        (s if k == "s" else e).append(float(v))
    return [s[i + 1] - e[i] for i in range(min(len(s) - 1, len(e)))]


def crash_restart(extra=(), env=None, slots=4, crashes=3, timeout=8.0, reps=1):
    """Per crash index k (1..crashes), the median gap between a worker's exit and its replacement's
    first line, over slots x reps samples."""
    by_k = [[] for _ in range(crashes)]
    for _ in range(reps):
        for k, gaps in enumerate(crash_gaps(extra, env, slots, crashes, timeout)):
            by_k[k] += gaps
    return [median(g) for g in by_k]


def crash_gaps(extra, env, slots, crashes, timeout):
    out = os.path.join(TMP, f"crash-{random.randrange(1 << 30)}")
    e = dict(env or clean_env(), OUT=out)
    p = spawn([BIN, *QUIET, "-w", str(slots), "--give-up-after", "0", *extra, "--", "bash", "-c", CRASHER], env=e)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(read(f"{out}.{i}").count("s ") > crashes for i in range(slots)):
            break
        time.sleep(0.01)
    kill_tree(p)
    by_k = [[] for _ in range(crashes)]
    for i in range(slots):
        for k, gap in enumerate(parse_crash_log(f"{out}.{i}")[:crashes]):
            by_k[k].append(gap)
    return by_k


def crash_restart_by_hand(n=10):
    """The same crashing worker restarted by a plain loop (fork+exec+wait), no backoff: the floor."""
    out = os.path.join(TMP, "crash-hand")
    env = clean_env(OUT=out, CLUSTER_WORKER_ID=0)
    for _ in range(n):
        subprocess.run(["bash", "-c", CRASHER], env=env)
    return median(parse_crash_log(out + ".0"))


def stop_time(cmd, n=1, reps=5, env=None):
    ts = []
    for _ in range(reps):
        p = spawn(cmd, env=env)
        wait_children(p.pid, n, "sleep", timeout=10)
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            kill_tree(p, signal.SIGKILL)
            ts.append(None)
            continue
        ts.append(time.monotonic() - t0)
        kill_tree(p)
    return median(ts), ts


def spawn_time(n, reps=3):
    ts = []
    for _ in range(reps):
        t0 = time.monotonic()
        p = spawn([BIN, *QUIET, "-w", str(n), "--", "sleep", "1000"])
        ts.append(wait_children(p.pid, n, "sleep"))
        kill_tree(p)
    return median(ts)


def spawn_time_by_hand(n, reps=3):
    ts = []
    for _ in range(reps):
        t0 = time.monotonic()
        pids = [os.posix_spawnp("sleep", ["sleep", "1000"], clean_env()) for _ in range(n)]
        pending = set(pids)
        while pending:
            pending = {c for c in pending if comm(c) != "sleep"}
        ts.append(time.monotonic() - t0)
        for c in pids:
            os.kill(c, signal.SIGKILL)
            os.waitpid(c, 0)
    return median(ts)


REAPERS = {
    "cluster-init (musl static)": [MUSL, *QUIET, "--restart", "never", "-w", "1", "--"],
    "cluster-init (glibc)": [BIN, *QUIET, "--restart", "never", "-w", "1", "--"],
    "tini": ["tini", "--"],
    "tini-static": ["tini-static", "--"],
    "dumb-init": ["dumb-init"],
    "catatonit": ["catatonit", "--"],
}


def reap_in_namespace(prefix, n, go=None, on_ready=None):
    """One run of orphans.py under `prefix` as PID 1 of a new PID namespace. With `go`, the worker
    waits after its setup until the file `go` exists; `on_ready(init_pid)` is called then (to
    attach a profiler) and creates it."""
    out = os.path.join(TMP, f"reap-{random.randrange(1 << 30)}.json")
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *prefix,
           PY, os.path.join(BENCHES, "orphans.py"), str(n), out]
    env = clean_env(ORPHANS_GO=go) if go else None
    p = spawn(cmd, env=env)
    try:
        if go:
            deadline = time.monotonic() + 60
            while not os.path.exists(go + ".ready") and time.monotonic() < deadline and p.poll() is None:
                time.sleep(0.02)
            kids = children(p.pid)
            on_ready(kids[0] if kids else None)
        p.wait(120)
    except subprocess.TimeoutExpired:
        kill_tree(p, signal.SIGKILL)
        return None
    finally:
        if go and not os.path.exists(go):
            open(go, "w").close()
    return json.loads(read(out) or "null")


def perf_works():
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-e", "cpu-clock", "-x,", "true"], capture_output=True, text=True,
                       timeout=20)
    return r.returncode == 0


def reap_profile(name, n):
    """Where PID 1's CPU goes while it reaps: `perf record -e cpu-clock` on the init from the
    moment the orphans are woken to its exit; the share of samples per object (kernel, the
    binary, libc) and the top kernel symbols."""
    go = os.path.join(TMP, f"go-{random.randrange(1 << 30)}")
    data = go + ".perf"
    rec = {}

    def attach(pid):
        if pid is None:
            return
        rec["p"] = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "20000", "-p", str(pid),
                                     "-o", data], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        STARTED.append(rec["p"])
        time.sleep(1.0)  # perf needs a moment to attach
        open(go, "w").close()

    run = reap_in_namespace(REAPERS[name], n, go=go, on_ready=attach)
    if "p" not in rec:
        return None
    try:
        rec["p"].wait(30)
    except subprocess.TimeoutExpired:
        kill_tree(rec["p"], signal.SIGINT)

    def report(sort):
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort, "-g", "none"],
                             capture_output=True, text=True, timeout=60).stdout
        rows = []
        for line in out.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(.*\S)", line)
            if m and not line.startswith("#"):
                rows.append((float(m.group(1)), m.group(2)))
        return rows

    try:
        dsos = report("dso")
        syms = report("dso,sym")
    except Exception as e:  # noqa: BLE001
        log("perf report failed:", e)
        return None
    kernel = sum(pct for pct, d in dsos if "kernel" in d)
    return {"run": run, "kernel_pct": kernel, "user_pct": 100 - kernel,
            "by_object": [[d, pct] for pct, d in dsos[:4]],
            "top_symbols": [[re.sub(r"\s+", " ", d), pct] for pct, d in syms[:6]]}


def bench_reap(q):
    """Every init reaps the same N orphans, in rounds: each round runs every init once, in an order
    rotated from round to round, so that a burst of outside load hits them alike; per init the
    median and the spread over the rounds, and per round cluster-init's time over tini's."""
    n = q.orphans
    names = [k for k, v in REAPERS.items() if shutil.which(v[0]) or os.path.exists(v[0])]
    runs = {k: [] for k in names}
    for rnd in range(q.reap_rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            j = reap_in_namespace(REAPERS[name], n)
            runs[name].append(j)
            if j:
                log(f"reap round {rnd + 1} {name}: {j['reap_s'] * 1000:.0f} ms (last exit "
                    f"{(j['exited_s'] or 0) * 1000:.0f} ms), init cpu {j['init_cpu_ms']:.0f} ms, "
                    f"{j['init_wakeups']} switches")
    res = {}
    for name in names:
        ok = [j for j in runs[name] if j]
        res[name] = {
            "reap_ms": median([j["reap_s"] * 1000 for j in ok]),
            "all_ms": [None if j is None else round(j["reap_s"] * 1000) for j in runs[name]],
            "exited_ms": median([j["exited_s"] * 1000 for j in ok if j.get("exited_s") is not None]),
            "lag_ms": median([(j["reap_s"] - j["exited_s"]) * 1000 for j in ok if j.get("exited_s") is not None]),
            "init_cpu_ms": median([j["init_cpu_ms"] for j in ok]),
            "init_wakeups": median([j["init_wakeups"] for j in ok]),
            "left": max([j["left"] for j in ok], default=None),
            "runs": len(ok),
        }

    def paired(a, b):
        xs = [x["reap_s"] / y["reap_s"] for x, y in zip(runs.get(a, []), runs.get(b, [])) if x and y]
        return {"median": median(xs), "min": min(xs, default=None), "max": max(xs, default=None),
                "rounds": [round(x, 2) for x in xs]}

    ratios = {f"{a} / {b}": paired(a, b) for a in names if a.startswith("cluster-init")
              for b in ("tini", "tini-static", "catatonit") if b in names}
    profiles = {}
    if perf_works():
        for name in ("cluster-init (musl static)", "tini"):
            if name in names:
                profiles[name] = reap_profile(name, n)
                log("reap profile", name, profiles[name])
    out = {"orphans": n, "rounds": q.reap_rounds, "results": res, "ratios": ratios, "profiles": profiles}
    log("reap", {k: v["reap_ms"] for k, v in res.items()}, ratios)
    return out


def bench_latency(q):
    r = {}
    r["backoff_initial_default_ms"] = 250
    r["crash_restart_default_ms"] = [x * 1000 for x in crash_restart()]
    r["crash_restart_1ms_ms"] = [x * 1000 for x in crash_restart(["--backoff-initial", "1ms"], slots=2, reps=3)]
    r["crash_restart_by_hand_ms"] = crash_restart_by_hand() * 1000
    log("crash->restart", r)
    sleep = ["--", "sleep", "1000"]
    stops = {
        "cluster-init -w 2": stop_time([BIN, *QUIET, "-w", "2", *sleep], n=2),
        "tini": stop_time(["tini", "-s", *sleep]),
        "dumb-init": stop_time(["dumb-init", "sleep", "1000"]),
        "catatonit": stop_time(["catatonit", *sleep]),
    }
    r["sigterm_to_exit_ms"] = {k: v[0] * 1000 for k, v in stops.items()}
    log("stop", r["sigterm_to_exit_ms"])
    r["spawn_all_ms"] = {f"cluster-init -w {n}": spawn_time(n) * 1000 for n in (2, 64)}
    r["spawn_all_ms"].update({f"by hand (posix_spawn x{n})": spawn_time_by_hand(n) * 1000 for n in (2, 64)})
    log("spawn", r["spawn_all_ms"])
    return r


# ---------------------------------------------------------------- scale

def bench_scale(q):
    n = 256
    t0 = time.monotonic()
    p = spawn([BIN, *QUIET, "-w", str(n), "--", "sleep", "1000"])
    spawn_s = wait_children(p.pid, n, "sleep", timeout=60)
    time.sleep(1)
    rss = rss_kb(p.pid)
    cpu = cpu_seconds(p.pid)
    t1 = time.monotonic()
    os.kill(p.pid, signal.SIGTERM)
    p.wait(60)
    stop_s = time.monotonic() - t1
    r = {"workers": n, "spawn_all_ms": spawn_s * 1000, "init_rss_kb": rss, "init_cpu_s_to_start": cpu,
         "stop_ms": stop_s * 1000, "exit_code": p.returncode}
    log("scale", r)
    return r


# ---------------------------------------------------------------- chaos

def chaos_kill(q, balance):
    port = free_port()
    p = spawn([BIN, *QUIET, "--listen", f"127.0.0.1:{port}", "--balance", balance, "-w", "2", "--", NODE, SERVER],
              stderr=subprocess.PIPE)
    errlines = []
    threading.Thread(target=lambda: errlines.extend(p.stderr), daemon=True).start()
    try:
        wait_http(port)
        w = subprocess.Popen(wrk_cmd(port, q.chaos, 64, 2), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, start_new_session=True)
        STARTED.append(w)
        kills, turns, empty, rng = 0, 0, 0, random.Random(1)
        end = time.monotonic() + q.chaos
        time.sleep(0.3)
        while time.monotonic() < end and w.poll() is None:
            live = [c for c in children(p.pid) if comm(c) == "node" and state(c) != "Z"]
            turns += 1
            if live:
                os.kill(rng.choice(live), signal.SIGKILL)
                kills += 1
            else:
                empty += 1
            time.sleep(0.3)
        out, _ = w.communicate(timeout=q.chaos + 30)
        r = parse_wrk(out)
        # every slot must come back (backoff may have grown: give it up to backoff-max)
        t0 = time.monotonic()
        slots, recovered = set(), None
        while time.monotonic() - t0 < 35:
            live = [c for c in children(p.pid) if comm(c) == "node" and state(c) != "Z"]
            slots = {env_of(c).get("CLUSTER_WORKER_ID") for c in live}
            if slots == {"0", "1"}:
                wait_http(port, 5)
                recovered = time.monotonic() - t0
                break
            time.sleep(0.05)
        time.sleep(0.5)
        zombies = zombies_under(p.pid)
        after = wrk(port, 2)
        res = {
            "balance": balance, "kills": kills, "no_worker_pct": 100 * empty / max(1, turns), "requests": r["requests"], "rps": r["rps"],
            "socket_errors": r["socket_errors"], "non_2xx": r["status"],
            "errors_detail": {k: r[k] for k in ("connect", "read", "write", "timeout")},
            "error_rate_pct": 100 * (r["socket_errors"] + r["status"]) / max(1, r["requests"]),
            "p99_ms": r["p99"] / 1000,
            "slots_back": sorted(s for s in slots if s), "recovered_after_s": recovered,
            "zombies": len(zombies), "rps_after": after["rps"],
            "errors_after": after["socket_errors"] + after["status"],
        }
    finally:
        kill_tree(p)
    log("chaos", res)
    return res


def predicted_restarts(window, initial=0.25, cap=30.0, life=0.003):
    """Restarts of one crash-looping slot within `window` s: (fewest, most) over the jitter range."""
    def count(frac):
        t, k = life, 0
        while True:
            d = min(initial * (2 ** k), cap) * frac
            if t + d > window:
                return k
            t += d + life
            k += 1
    return count(1.0), count(0.5)


def crash_loop(window):
    p = spawn([BIN, "--log-level", "warn", "-w", "2", "--give-up-after", "0", "--", "sh", "-c", "exit 1"],
              stderr=subprocess.PIPE)
    lines = []
    th = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    th.start()
    time.sleep(0.05)
    c0 = cpu_seconds(p.pid)
    t0 = time.monotonic()
    time.sleep(window)
    c1 = cpu_seconds(p.pid)
    wall = time.monotonic() - t0
    # every exit schedules a restart; the last one of each slot is still waiting when the window ends
    restarts = sum(1 for l in lines if b"worker exited" in l) - 2
    kill_tree(p)
    lo, hi = predicted_restarts(window)
    return {"window_s": window, "init_cpu_s": c1 - c0, "init_cpu_pct": 100 * (c1 - c0) / wall,
            "restarts": restarts, "predicted_restarts": [2 * lo, 2 * hi]}


def give_up(after):
    t0 = time.monotonic()
    p = spawn([BIN, *QUIET, "-w", "2", "--give-up-after", f"{after}s", "--", "sh", "-c", "exit 1"])
    try:
        p.wait(after + 60)
    except subprocess.TimeoutExpired:
        kill_tree(p, signal.SIGKILL)
        return {"give_up_after_s": after, "exited": False}
    return {"give_up_after_s": after, "exited": True, "exit_code": p.returncode,
            "exit_after_s": time.monotonic() - t0}


def collector_modes(q):
    res = {}
    for mode in ("none", "ok", "refuse", "hang", "500"):
        col = None
        env = clean_env()
        if mode != "none":
            port = free_port()
            if mode != "refuse":
                col = start_collector(mode, port)
            env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
        try:
            crash = crash_restart(["--backoff-initial", "1ms"], env=env, slots=2, reps=3)
            stop, all_stops = stop_time([BIN, *QUIET, "-w", "2", "--", "sleep", "1000"], n=2, reps=3, env=env)
        finally:
            if col:
                kill_tree(col)
        res[mode] = {"crash_restart_ms": crash[0] * 1000, "stop_ms": stop * 1000,
                     "stop_ms_all": [None if s is None else s * 1000 for s in all_stops]}
        log("collector", mode, res[mode])
    return res


def bench_chaos(q, idle=None):
    """With `idle` (a dict), the idle-cost measurement runs alongside the crash loop (both only
    wait) and its result goes there."""
    r = {"kill_every_300ms": [chaos_kill(q, b) for b in ("reuseport", "shared")]}
    out = {}
    ths = [threading.Thread(target=lambda: out.__setitem__("loop", crash_loop(q.crash_loop))),
           threading.Thread(target=lambda: out.__setitem__("give_up", give_up(q.give_up)))]
    if idle is not None:
        def run_idle():
            try:
                idle["result"] = bench_idle(q)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                idle["result"] = {"error": f"{type(e).__name__}: {e}"}
        ths.append(threading.Thread(target=run_idle))
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    r["crash_loop"] = out["loop"]
    r["give_up"] = out["give_up"]
    log("crash loop", r["crash_loop"], r["give_up"])
    r["collector"] = collector_modes(q)
    return r


# ---------------------------------------------------------------- churn

VARIANT = os.path.join(BENCHES, "variant-server.js")


def start_pool(kind, port, server=SERVER, env_extra=None, ci_args=(), binary=None, stdout=subprocess.DEVNULL,
               admin=None):
    """2 workers of `server` under `kind` (cluster-init, node cluster, pm2 -i 2) on 127.0.0.1:port;
    returns (manager pid, stop)."""
    env_extra = dict(env_extra or {})
    if kind == "cluster-init":
        cmd = [binary or BIN, *QUIET, "--listen", f"127.0.0.1:{port}", "-w", "2", *ci_args,
               *(["--admin-listen", f"127.0.0.1:{admin}"] if admin else []), "--", NODE, server]
        p = spawn(cmd, env=clean_env(**env_extra), stdout=stdout)
        return p.pid, lambda: kill_tree(p)
    if kind == "node cluster":
        p = spawn([NODE, os.path.join(BENCHES, "node-cluster.js")],
                  env=clean_env(PORT=port, WORKERS=2, SERVER=server, **env_extra), stdout=stdout)
        return p.pid, lambda: kill_tree(p)
    if kind == "pm2 -i 2":
        home = os.path.join(TMP, f"pm2-{port}")
        PM2_HOMES.append(home)
        pm2(home, "start", server, "-i", "2", "--name", "bench", env_extra={"PORT": port, **env_extra})
        return pm2_god_pid(home), lambda: pm2_kill(home)
    raise ValueError(kind)


def pm2_jlist(home):
    try:
        out = subprocess.run([PM2, "jlist"], env=clean_env(PM2_HOME=home), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30).stdout
        apps = json.loads(out[out.index("["):])
        return [{"status": a["pm2_env"]["status"], "restarts": a["pm2_env"].get("restart_time"),
                 "unstable_restarts": a["pm2_env"].get("unstable_restarts")} for a in apps]
    except Exception as e:  # noqa: BLE001
        log("pm2 jlist failed:", e)
        return None


def live_workers(mgr):
    return [c for c in children(mgr) if state(c) not in (None, "Z")]


class PoolWatch(threading.Thread):
    """Polls a manager's children every 10 ms: every worker pid seen (so restarts), and the share
    of polls that found no worker process at all."""

    def __init__(self, mgr):
        super().__init__(daemon=True)
        self.mgr, self.seen, self.polls, self.empty, self.stop = mgr, set(), 0, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            live = live_workers(self.mgr)
            self.seen.update(live)
            self.polls += 1
            self.empty += not live
            self.stop.wait(0.01)


def http_json(port, path, timeout=3):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except Exception as e:  # noqa: BLE001
        log("GET", path, "failed:", e)
        return None


def churn_run(kind, scenario, close, q, ci_args=(), label=None):
    """One manager, fresh, under one churn scenario, with wrk -c64 over the whole window:
    storm: a random live worker SIGKILLed every 300 ms; recycle: the workers exit(0) after every
    100 requests; down: one worker SIGKILLed once, 0.5 s into the window."""
    port = free_port()
    admin = free_port() if kind == "cluster-init" else None
    recycle = scenario == "recycle"
    busy = machine_busy()  # before anything of this row runs: what the rest of the machine does
    mgr, stop = start_pool(kind, port, server=VARIANT if recycle else SERVER,
                           env_extra={"EXIT_AFTER_REQUESTS": q.recycle_after} if recycle else None,
                           ci_args=ci_args, admin=admin)
    secs = q.down_window if scenario == "down" else q.churn
    res = {"manager": label or kind, "scenario": scenario, "connection": "close" if close else "keep-alive",
           "busy_before_pct": busy}
    watch = None
    try:
        wait_http(port)
        deadline = time.monotonic() + 20
        while len(live_workers(mgr)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if not recycle:
            wrk(port, 1)  # JIT warm-up of the workers (the recycling ones would only restart)
        before = set(live_workers(mgr))
        watch = PoolWatch(mgr)
        watch.start()
        # wrk records no latency above its --timeout: 10 s, so that a request that waited for a
        # worker shows in p99 and max. Beside it, an open-loop probe: a new connection every 10 ms.
        w = subprocess.Popen(wrk_cmd(port, secs, 64, 2, close, timeout="10s"), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        STARTED.append(w)
        probe_out = os.path.join(TMP, f"probe-{port}.json")
        pr = spawn([PY, os.path.join(BENCHES, "probe.py"), str(port), str(secs), str(q.probe_rate), probe_out])
        t0 = time.monotonic()
        kills, rng = 0, random.Random(1)
        if scenario == "storm":
            time.sleep(0.3)
            while time.monotonic() - t0 < secs - 0.1 and w.poll() is None:
                live = live_workers(mgr)
                if live:
                    try:
                        os.kill(rng.choice(live), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
                time.sleep(0.3)
        elif scenario == "down":
            time.sleep(0.5)
            victim = min(live_workers(mgr))
            os.kill(victim, signal.SIGKILL)
            kills = 1
            tk = time.monotonic()
            down = None
            while time.monotonic() - t0 < secs + 5:
                if set(live_workers(mgr)) - before - {victim}:
                    down = time.monotonic() - tk
                    break
                time.sleep(0.002)
            res["down_s"] = down
        out, _ = w.communicate(timeout=secs + 30)
        pr.wait(secs + 30)
        watch.stop.set()
        watch.join()
        r = parse_wrk(out)
        res["probe"] = json.loads(read(probe_out) or "null")
        res.update({
            "requests": r["requests"], "rps": r["rps"], "kills": kills,
            "errors": r["socket_errors"] + r["status"],
            "errors_detail": {k: r[k] for k in ("connect", "read", "write", "timeout", "status")},
            "p50_ms": r["p50"] / 1000, "p99_ms": r["p99"] / 1000, "max_ms": r["max"] / 1000,
            "workers_started": len(watch.seen - before),
            "no_worker_pct": 100 * watch.empty / max(1, watch.polls),
        })
        if admin:
            st = http_json(admin, "/status")
            if st:
                res["steering_updates"] = st.get("steering_updates")
                res["exit_reasons"] = sorted({w.get("last_exit_reason") for w in st.get("workers", [])
                                              if w.get("last_exit_reason")})
        if kind == "pm2 -i 2":
            res["pm2"] = pm2_jlist(os.path.join(TMP, f"pm2-{port}"))
    finally:
        if watch:
            watch.stop.set()
        stop()
    log("churn", res)
    return res


MIGRATE = "/proc/sys/net/ipv4/tcp_migrate_req"
# The same held-down slot with the kernel migrating a closed listener's queue: the init parks a slot
# that stays down 500 ms or more, so the connections queued on it move to the live slot at once.
MIGRATE_LABEL = "cluster-init --backoff-initial 4s --backoff-max 4s, tcp_migrate_req=1"


def with_migrate(fn):
    """Runs fn with net.ipv4.tcp_migrate_req=1 in this network namespace, restored after."""
    old = (read(MIGRATE) or "").strip()
    if not old:
        raise RuntimeError("this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14+)")
    with open(MIGRATE, "w") as f:
        f.write("1")
    try:
        return fn()
    finally:
        with open(MIGRATE, "w") as f:
            f.write(old)


CHURN_CONFIGS = {
    "storm": [("cluster-init", ()), ("cluster-init --backoff-reset 1s", ("--backoff-reset", "1s")),
              ("cluster-init --backoff-initial 10ms --backoff-max 100ms",
               ("--backoff-initial", "10ms", "--backoff-max", "100ms")),
              ("cluster-init --backoff-initial 10ms --backoff-max 100ms --ready 150ms",
               ("--backoff-initial", "10ms", "--backoff-max", "100ms", "--ready", "150ms")),
              ("node cluster", None), ("pm2 -i 2", None)],
    "recycle": [("cluster-init", ()), ("node cluster", None), ("pm2 -i 2", None)],
    "down": [("cluster-init --backoff-initial 4s --backoff-max 4s", ("--backoff-initial", "4s", "--backoff-max", "4s")),
             (MIGRATE_LABEL, ("--backoff-initial", "4s", "--backoff-max", "4s")),
             ("node cluster", None), ("pm2 -i 2", None)],
}


def bench_churn(q):
    out = {"window_s": q.churn, "down_window_s": q.down_window, "recycle_after": q.recycle_after, "runs": [],
           "probe_rate": q.probe_rate,
           "tcp_migrate_req": read("/proc/sys/net/ipv4/tcp_migrate_req").strip() or None}
    for scenario, configs in CHURN_CONFIGS.items():
        for close in (False, True):
            for label, ci_args in configs:
                kind = "cluster-init" if label.startswith("cluster-init") else label
                try:
                    run = lambda: churn_run(kind, scenario, close, q, ci_args or (), label)  # noqa: E731
                    out["runs"].append(with_migrate(run) if label == MIGRATE_LABEL else run())
                except Exception as e:  # noqa: BLE001 - one failed run must not hide the others
                    log("churn run failed:", label, scenario, close, e)
                    out["runs"].append({"manager": label, "scenario": scenario,
                                        "connection": "close" if close else "keep-alive",
                                        "error": f"{type(e).__name__}: {e}"})
    return out


# ---------------------------------------------------------------- idle cost of the budget watch

def thread_stats(pid):
    """(CPU ns from schedstat, context switches voluntary + involuntary), over all threads."""
    cpu, sw = 0, 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None, None
    for t in tasks:
        st = read(f"/proc/{pid}/task/{t}/schedstat").split()
        cpu += int(st[0]) if st else 0
        for m in re.finditer(r"ctxt_switches:\s+(\d+)", read(f"/proc/{pid}/task/{t}/status")):
            sw += int(m.group(1))
    return cpu, sw


IDLE_CONFIGS = {
    "--workers max (budget watch every 5 s, the default)": [BIN, *QUIET, "--workers", "max"],
    "--workers max --budget-interval 1s": [BIN, *QUIET, "--workers", "max", "--budget-interval", "1s"],
    "--workers max --budget-interval 0": [BIN, *QUIET, "--workers", "max", "--budget-interval", "0"],
    "--workers 2": [BIN, *QUIET, "--workers", "2"],
    "--workers max, musl static": [MUSL, *QUIET, "--workers", "max"],
    "--workers max --budget-interval 0, musl static": [MUSL, *QUIET, "--workers", "max", "--budget-interval", "0"],
}


def bench_idle(q):
    """The idle init's wakeups and CPU: every config at once (they are idle), workers `sleep`,
    counted over q.idle seconds after a 2 s settle."""
    procs, res = {}, {}
    try:
        for name, cmd in IDLE_CONFIGS.items():
            if os.path.exists(cmd[0]):
                procs[name] = spawn([*cmd, "--", "sleep", "100000"])
        for name, p in procs.items():
            wait_children(p.pid, 1, "sleep", timeout=20)
        time.sleep(2)
        t0 = time.monotonic()
        first = {n: (thread_stats(p.pid), cpu_seconds(p.pid), len(os.listdir(f"/proc/{p.pid}/task")))
                 for n, p in procs.items()}
        time.sleep(q.idle)
        wall = time.monotonic() - t0
        for name, p in procs.items():
            (c0, s0), u0, threads = first[name]
            c1, s1 = thread_stats(p.pid)
            u1 = cpu_seconds(p.pid)
            res[name] = {"window_s": wall, "wakeups": s1 - s0, "wakeups_per_s": (s1 - s0) / wall,
                         "cpu_ms": (c1 - c0) / 1e6, "cpu_pct": 100 * (c1 - c0) / 1e9 / wall,
                         "cpu_ticks_s": u1 - u0, "threads": threads,
                         "workers": len(live_workers(p.pid))}
    finally:
        for p in procs.values():
            kill_tree(p)
    log("idle", res)
    return {"window_s": q.idle, "results": res}


# ---------------------------------------------------------------- worker output relay

OUTPUT_CONFIGS = ["inherit", "prefix", "json", "inherit, no log line"]


def bench_output(q):
    """2 workers of the seed server logging one line per request, under --worker-output inherit,
    prefix and json (and the seed server without the log line, as a reference), all up at once on
    their own ports; cluster-init's stdout is a pipe that `wc -l` drains; wrk keep-alive slices go
    round-robin over the setups. Per slice: req/s, the init's CPU, and its write(2) calls."""
    mgrs, stops, ports, drains, warm = {}, [], {}, {}, {}
    res = {n: [] for n in OUTPUT_CONFIGS}
    try:
        for name in OUTPUT_CONFIGS:
            ports[name] = free_port()
            rfd, wfd = os.pipe()
            drains[name] = subprocess.Popen(["wc", "-l"], stdin=rfd, stdout=subprocess.PIPE, text=True,
                                            start_new_session=True)
            STARTED.append(drains[name])
            os.close(rfd)
            mode = name.split(",")[0]
            logging = "no log line" not in name
            mgrs[name], stop = start_pool("cluster-init", ports[name], server=VARIANT,
                                          env_extra={"LOG_EACH_REQUEST": 1} if logging else None,
                                          ci_args=("--worker-output", mode), stdout=wfd)
            os.close(wfd)
            stops.append(stop)
        for name in OUTPUT_CONFIGS:
            wait_http(ports[name])
            warm[name] = wrk(ports[name], q.warmup)["requests"]
        for rnd in range(q.output_rounds):
            k = rnd % len(OUTPUT_CONFIGS)
            for name in OUTPUT_CONFIGS[k:] + OUTPUT_CONFIGS[:k]:
                mgr = mgrs[name]
                c0, w0 = thread_stats(mgr)[0], syscw(mgr)
                r = wrk(ports[name], q.output_duration)
                c1, w1 = thread_stats(mgr)[0], syscw(mgr)
                secs = r["duration_us"] / 1e6
                r["init_cpu_pct"] = 100 * (c1 - c0) / 1e9 / secs
                r["init_writes_per_request"] = (w1 - w0) / max(1, r["requests"])
                res[name].append(r)
                log(f"output slice {rnd + 1} {name}: {r['rps']:.0f} req/s, p99 {r['p99'] / 1000:.1f} ms, "
                    f"init cpu {r['init_cpu_pct']:.1f}%, {r['init_writes_per_request']:.2f} writes/request, "
                    f"errors {r['socket_errors'] + r['status']}")
    finally:
        for stop in stops:
            stop()
    lines = {}
    for name, d in drains.items():
        try:
            lines[name] = int(d.communicate(timeout=20)[0].strip() or 0)
        except Exception:  # noqa: BLE001
            kill_tree(d, signal.SIGKILL)
            lines[name] = None
    summary = {}
    for name in OUTPUT_CONFIGS:
        rs = res[name]
        summary[name] = {
            "rounds": [round(r["rps"]) for r in rs],
            "rps": median([r["rps"] for r in rs]),
            "p99_ms": median([r["p99"] for r in rs]) / 1000,
            "errors": sum(r["socket_errors"] + r["status"] for r in rs),
            "init_cpu_pct": median([r["init_cpu_pct"] for r in rs]),
            "init_writes_per_request": median([r["init_writes_per_request"] for r in rs]),
            # answered in all (warm-up and slices; wrk counts only completed responses), and the
            # lines that reached the pipe's reader: one per request, so lines >= requests
            "requests": sum(r["requests"] for r in rs) + warm.get(name, 0),
            "lines_out": lines.get(name),
        }
    log("output", summary)
    return {"wrk": f"wrk -t2 -c64 -d{q.output_duration}s, {q.output_rounds} slices per setup interleaved "
                   "round-robin, median", "configs": summary}


def syscw(pid):
    m = re.search(r"syscw:\s+(\d+)", read(f"/proc/{pid}/io"))
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- machine

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def machine():
    cpu = re.search(r"model name\s*:\s*(.*)", read("/proc/cpuinfo"))
    mem = re.search(r"MemTotal:\s+(\d+)", read("/proc/meminfo"))
    return {
        "nproc": sh("nproc"), "uname_r": platform.release(), "cpu": cpu.group(1) if cpu else "?",
        "mem_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD"),
        "dirty": bool(sh(f"git -C {ROOT} status --porcelain -- src Cargo.toml Cargo.lock")),
        "versions": {
            "cluster-init": sh(f"{BIN} --version"), "node": sh("node --version"),
            "pm2": json.loads(read(os.path.join(ROOT, "target", "bench-node", "node_modules", "pm2", "package.json"))
                          or '{"version": "?"}')["version"],
            "wrk": sh("wrk -v 2>&1 | head -1 | cut -d' ' -f2"), "tini": sh("tini --version"),
            "dumb-init": sh("dumb-init --version 2>&1"), "catatonit": sh("catatonit --version 2>&1"),
            "rustc": sh("rustc --version"),
        },
    }


def machine_busy(secs=1.0):
    """The share of the machine's CPU time (all CPUs) that was busy over the next secs: taken between
    two runs, when none of ours is running, it is what other work on the shared machine took."""
    def sample():
        # user..steal; guest time is already in user
        f = [int(x) for x in read("/proc/stat").split("\n")[0].split()[1:9]]
        return sum(f), f[3] + f[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(secs)
    t1, i1 = sample()
    return round(100 * (1 - (i1 - i0) / max(1, t1 - t0)))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter run (fewer rounds, shorter loads)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", help="comma-separated subset: throughput,output,footprint,latency,reap,scale,"
                                   "churn,chaos,idle")
    a = ap.parse_args()
    q = argparse.Namespace(
        quick=a.quick, rounds=2 if a.quick else 8, duration=4 if a.quick else 5, warmup=1 if a.quick else 2,
        close_rounds=2 if a.quick else 5, close_duration=2 if a.quick else 3,
        orphans=5000, reap_rounds=2 if a.quick else 8, chaos=10 if a.quick else 20,
        crash_loop=20 if a.quick else 60, give_up=10 if a.quick else 30,
        churn=5 if a.quick else 10, down_window=5, recycle_after=100, probe_rate=100,
        idle=20 if a.quick else 60, output_rounds=2 if a.quick else 5, output_duration=3 if a.quick else 5)
    for tool in ("wrk", "tini", "tini-static", "dumb-init", "catatonit", "unshare", "node", "bash"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool} (benches/run installs it)")
    if os.geteuid() != 0:
        sys.exit("run as root: the reaping benchmark makes PID namespaces")
    only = set((a.only or "throughput,output,footprint,latency,reap,scale,churn,chaos,idle").split(","))
    t0 = time.monotonic()
    results = {"quick": a.quick, "machine": machine()}
    idle = {} if "idle" in only else None
    sections = (("throughput", bench_throughput), ("output", bench_output), ("footprint", bench_footprint),
                ("latency", bench_latency), ("reap", bench_reap), ("scale", bench_scale),
                ("churn", bench_churn), ("chaos", lambda q: bench_chaos(q, idle)))
    if "chaos" not in only and "idle" in only:
        sections += (("idle", bench_idle),)
        idle = None
    for name, fn in sections:
        if name in only:
            log("==", name)
            try:
                results[name] = fn(q)
            except Exception as e:  # noqa: BLE001 - the other sections still run; the report says it failed
                import traceback
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}"}
    if idle is not None and "result" in idle:
        results["idle"] = idle["result"]
    results["run_seconds"] = time.monotonic() - t0
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"done in {results['run_seconds']:.0f}s -> {a.out}")


if __name__ == "__main__":
    main()
