#!/usr/bin/env python3
"""Turn the JSON written by benches/bench.py into docs/benchmarks.md and docs/benchmarks.png.
usage: report.py RESULTS.json DOCS_DIR"""
import json
import os
import sys

MIB = 1024 * 1024


def fmt_int(x):
    return "-" if x is None else f"{x:,.0f}"


def ms(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f} ms"


def mib_kb(kb):
    return "-" if kb is None else f"{kb / 1024:.1f} MiB"


def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def verdict(ok):
    return "yes" if ok else "**no**"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter
    fig = plt.figure(figsize=(13, 9))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.25])
    a1, a3, a2 = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    t = r["throughput"]["configs"]
    names = list(t)
    colors = ["#2a7ab9" if n.startswith("cluster-init") else "#999999" if "ceiling" in n else "#d98c2b"
              for n in names]
    y = list(range(len(names))[::-1])
    for ax, key, title in ((a1, "rps", "keep-alive (wrk -c64)"),
                           (a3, "close_rps", "new connection per request")):
        vals = [t[n][key] for n in names]
        ax.barh(y, vals, color=colors)
        ax.set_yticks(y, names if ax is a1 else [""] * len(names))
        for yy, v in zip(y, vals):
            ax.text(v, yy, f" {v:,.0f}", va="center", fontsize=9)
        ax.set_xlim(0, max(vals) * 1.25)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.set_xlabel("requests/s (higher is better)")
        ax.set_title("Throughput, " + title)

    rss = r["footprint"]["idle_rss_kb"]
    names2 = list(rss)
    vals2 = [rss[n] / 1024 for n in names2]
    colors2 = ["#2a7ab9" if n.startswith("cluster-init") else "#d98c2b" if ("node" in n or "pm2" in n)
               else "#7a9a5a" for n in names2]
    y2 = range(len(names2))[::-1]
    a2.barh(list(y2), vals2, color=colors2)
    a2.set_yticks(list(y2), names2)
    a2.set_xscale("log")
    for yy, v in zip(y2, vals2):
        a2.text(v, yy, f" {v:.1f}", va="center", fontsize=9)
    a2.set_xlim(0.3, max(vals2) * 4)
    a2.set_xlabel("idle RSS, MiB (log scale, lower is better)")
    a2.set_title("Idle RSS of the init / manager process")
    m = r["machine"]
    fig.suptitle(f"cluster-init vs peers: examples/node/server.js x 2 workers\n{m['nproc']} CPU {m['cpu']}, Linux {m['uname_r']}, {m['date']}"
                 + (" (quick run)" if r.get("quick") else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    src, docs = sys.argv[1], sys.argv[2]
    r = json.load(open(src))
    L = []
    w = L.append
    header(r, w)
    for section in (targets, throughput, footprint, latency, scale, chaos, caveats):
        try:
            section(r, w)
        except Exception as e:  # noqa: BLE001 - a failed section must not hide the others
            w(f"\n*Section `{section.__name__}`: no data from this run ({type(e).__name__}: {e}; "
              f"see the run's log).*\n")
    machine_section(r, w)
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(docs, "benchmarks.md"), "w") as fh:
        fh.write("\n".join(L) + "\n")
    try:
        plot(r, os.path.join(docs, "benchmarks.png"))
    except Exception as e:  # noqa: BLE001
        print("plot failed:", e, file=sys.stderr)


def header(r, w):
    w("# Benchmarks: cluster-init against its peers")
    w("")
    w("Every number below comes from one run of `benches/run` on the machine described at the end; the "
      "comparisons ran side by side in that run (same machine, same minutes). "
      + ("This was a `--quick` run (2 short slices per setup): treat small differences as noise."
         if r.get("quick") else "Throughput is the median of interleaved slices (the `slices` column shows the spread)."))
    w("")
    w("Reproduce (as root, Debian/Ubuntu; it installs wrk, tini, dumb-init, catatonit, musl-tools, pm2 and "
      "matplotlib under `target/`):")
    w("")
    w("```sh\nbenches/run           # full run, about 9 minutes\nbenches/run --quick   # about 4 minutes\n```")
    w("")
    w("![throughput and RSS](benchmarks.png)")
    w("")


def targets(r, w):
    t, f, ch = r["throughput"]["configs"], r["footprint"], r["chaos"]
    node, pm2 = t["node cluster"]["rps"], t["pm2 -i 2"]["rps"]
    ci = {k: v for k, v in t.items() if k.startswith("cluster-init")}
    best_ci = max(v["rps"] for v in ci.values())
    worst_ci = min(v["rps"] for v in ci.values())
    ci_cpu = max(v["manager_cpu_pct"] for v in ci.values())
    sizes, rss = f["sizes"], f["idle_rss_kb"]
    static = sizes.get("cluster-init (release, musl static)")
    idle, idle_tel = rss["cluster-init -w 2"], rss["cluster-init -w 2 + telemetry"]
    idle_s = rss.get("cluster-init -w 2 (musl static)")
    idle_tel_s = rss.get("cluster-init -w 2 + telemetry (musl static)")
    loop, gu = ch["crash_loop"], ch["give_up"]
    w("## The targets of the issue")
    w("")
    w("Ratios are given for the worse .. better of cluster-init's two balance modes (`reuseport`, `shared`).")
    w("")
    cnode, cpm2 = t["node cluster"]["close_rps"], t["pm2 -i 2"]["close_rps"]
    cbest = max(v["close_rps"] for v in ci.values())
    cworst = min(v["close_rps"] for v in ci.values())
    rows = [
        ["throughput >= Node `cluster`, keep-alive", f"{ratio(worst_ci, node)} .. {ratio(best_ci, node)}",
         verdict(worst_ci >= node)],
        ["throughput >= Node `cluster`, new connection per request", f"{ratio(cworst, cnode)} .. {ratio(cbest, cnode)}",
         verdict(cworst >= cnode)],
        ["throughput >= 1.2x PM2 `-i 2`, keep-alive", f"{ratio(worst_ci, pm2)} .. {ratio(best_ci, pm2)}",
         verdict(worst_ci >= 1.2 * pm2)],
        ["throughput >= 1.2x PM2 `-i 2`, new connection per request", f"{ratio(cworst, cpm2)} .. {ratio(cbest, cpm2)}",
         verdict(cworst >= 1.2 * cpm2)],
        ["init CPU under load near zero", f"{ci_cpu:.2f}% of one CPU", verdict(ci_cpu < 1)],
        ["static binary <= 2 MiB", f"{static / MIB:.2f} MiB (musl, static)" if static else "not built",
         verdict(static is not None and static <= 2 * MIB)],
        ["idle RSS <= 3 MiB, no telemetry", f"{mib_kb(idle)} glibc, {mib_kb(idle_s)} musl static",
         verdict(min(x for x in (idle, idle_s) if x) <= 3 * 1024) + (" (musl only)" if idle > 3 * 1024 and idle_s and idle_s <= 3 * 1024 else "")],
        ["idle RSS <= 6 MiB, telemetry on", f"{mib_kb(idle_tel)} glibc, {mib_kb(idle_tel_s)} musl static",
         verdict(min(x for x in (idle_tel, idle_tel_s) if x) <= 6 * 1024)],
        ["crash loop costs < 1% CPU", f"{loop['init_cpu_pct']:.2f}% over {loop['window_s']} s",
         verdict(loop["init_cpu_pct"] < 1)],
        [f"`--give-up-after {gu['give_up_after_s']}s` exits non-zero",
         f"exit {gu.get('exit_code')} after {gu.get('exit_after_s', 0):.1f} s" if gu.get("exited") else "did not exit",
         verdict(gu.get("exited") and gu.get("exit_code") not in (0, None))],
    ]
    w(table(["target", "measured", "met"], rows))
    w("")


def throughput(r, w):
    t = r["throughput"]["configs"]
    node, pm2, ceil = t["node cluster"]["rps"], t["pm2 -i 2"]["rps"], t["by hand (ceiling)"]["rps"]
    w("## Throughput")
    w("")
    w(f"The seed server `examples/node/server.js`, 2 workers, `{r['throughput']['wrk']}`. "
      "*Manager* is the process that supervises: cluster-init, the Node `cluster` primary, the PM2 God "
      "daemon (PM2 `-i` is Node `cluster` inside the daemon), or for the ceiling a 30-line Python launcher "
      "that binds one socket, execs the 2 workers on it (fd 3, `LISTEN_FDS`) and only waits. Its CPU is "
      "utime+stime from `/proc/PID/stat` over each slice, as a share of one CPU (median); RSS is the "
      "largest seen under load. All five setups run at the same time on their own ports (an idle server "
      "costs nothing) and the wrk slices go round-robin over them, so bursts of outside load hit every "
      "setup alike.")
    w("")
    rows = []
    for name, v in t.items():
        rows.append([f"**{name}**" if name.startswith("cluster-init") else name, fmt_int(v["rps"]),
                     ratio(v["rps"], node), ratio(v["rps"], pm2), ratio(v["rps"], ceil),
                     ms(v["p50_ms"], 2), ms(v["p99_ms"], 2), str(v["errors"]),
                     f"{v['manager_cpu_pct']:.1f}%", mib_kb(v["manager_rss_kb"]),
                     " / ".join(fmt_int(x) for x in v["rounds"])])
    w(table(["config", "req/s", "vs node cluster", "vs pm2", "vs ceiling", "p50", "p99", "errors",
             "manager CPU", "manager RSS", "slices (req/s)"], rows))
    w("")
    w(f"New connection per request (`{r['throughput']['close']}`, same processes, after the keep-alive "
      "slices): every "
      "request pays the accept path, which is where a primary that accepts and passes sockets to its workers "
      "costs something.")
    w("")
    cnode, cpm2, cceil = t["node cluster"]["close_rps"], t["pm2 -i 2"]["close_rps"], t["by hand (ceiling)"]["close_rps"]
    rows = [[f"**{name}**" if name.startswith("cluster-init") else name, fmt_int(v["close_rps"]),
             ratio(v["close_rps"], cnode), ratio(v["close_rps"], cpm2), ratio(v["close_rps"], cceil),
             str(v["close_errors"]), f"{v['close_manager_cpu_pct']:.1f}%",
             " / ".join(fmt_int(x) for x in v.get("close_rounds", []))] for name, v in t.items()]
    w(table(["config", "req/s", "vs node cluster", "vs pm2", "vs ceiling", "errors", "manager CPU",
             "slices (req/s)"], rows))
    w("")
    w("What it means: with cluster-init (and the ceiling) the kernel hands each connection straight to a "
      "worker and the init is not on the request path at all: its CPU stays at zero. With Node `cluster` and "
      "PM2 (which is Node `cluster` inside its daemon) the primary accepts every connection and passes it to a "
      "worker over IPC, round-robin; with keep-alive that is paid once per connection, with a new connection "
      "per request it is paid on every request (second table). "
      "`reuseport` gives each slot its own socket (the kernel hashes connections over them); `shared` "
      "puts one socket in every worker, as the ceiling does.")
    w("")


def footprint(r, w):
    f = r["footprint"]
    sizes, rss = f["sizes"], f["idle_rss_kb"]
    idle = rss["cluster-init -w 2"]
    w("## Footprint")
    w("")
    rows = [[k, f"{v / 1024:,.0f} KiB" if v < MIB else f"{v / MIB:.2f} MiB"] for k, v in sizes.items() if v]
    w(table(["binary", "size on disk"], rows))
    w("")
    w("Idle RSS (`VmRSS`) of the supervising process with 2 `sleep 1000` workers (one for tini, dumb-init, "
      "catatonit; the Node managers with the 2 server workers up, idle). Telemetry on = "
      "`OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local stand-in collector answering 200, measured after the "
      f"first exports ({f['telemetry_posts_received']} OTLP POSTs were received during the measurement).")
    w("")
    rows = [[f"**{k}**" if k.startswith("cluster-init") else k, mib_kb(v), ratio(v, idle)] for k, v in rss.items()]
    w(table(["process", "idle RSS", "vs cluster-init -w 2"], rows))
    w("")
    w("RSS counts the shared libraries' pages the process touched: the glibc build maps libc, libm, libgcc "
      "and the loader, the static musl build maps only itself, hence the difference between the two.")
    w("")


def latency(r, w):
    lat, sc = r["latency"], r.get("scale", {})
    w("## Latencies")
    w("")
    d = lat["crash_restart_default_ms"]
    one = lat["crash_restart_1ms_ms"]
    w("**Crash to replacement.** A worker (`bash -c`) writes `$EPOCHREALTIME` as its first line and again "
      "just before `exit 1`; the gap is from one worker's last line to its replacement's first line, so it "
      "includes bash's own start (about 1-2 ms, see the plain-loop column). Default backoff: 4 slots crash together, median of the 4; 1 ms backoff: 2 slots x 3 runs.")
    w("")
    w(table(["restart", "`--backoff-initial 250ms` (default)", "expected delay (equal jitter)",
             "`--backoff-initial 1ms`", "plain loop, no backoff"],
            [["1st", ms(d[0]), "125-250 ms", ms(one[0], 2), ms(lat["crash_restart_by_hand_ms"], 2)],
             ["2nd", ms(d[1]), "250-500 ms", ms(one[1], 2), ""],
             ["3rd", ms(d[2]), "500-1000 ms", ms(one[2], 2), ""]]))
    w("")
    w("The default restart is all backoff: the delay is drawn in [base/2, base] and doubles per consecutive "
      "crash. With a 1 ms backoff what is left is cluster-init's own cost (timer, reap, fork, exec) over a "
      "plain fork+exec+wait loop.")
    w("")
    st = lat["sigterm_to_exit_ms"]
    w("**SIGTERM to exit** (`kill()` of the init to `waitpid()` returning it; children are `sleep 1000`, which "
      "die of the forwarded SIGTERM; median of 5):")
    w("")
    w(table(["init", "children", "SIGTERM to exit"],
            [[k, "2" if k.startswith("cluster") else "1", ms(v, 2)] for k, v in st.items()]))
    w("")
    sp = lat["spawn_all_ms"]
    w("**Start to all workers spawned** (from the init's `fork` by the benchmark to the Nth child having exec'd "
      "`sleep`, polled in `/proc` every 0.5 ms; median of 3). The reference spawns the same `sleep`s from "
      "Python with `posix_spawn` in a loop:")
    w("")
    w(table(["workers", "cluster-init", "posix_spawn loop"],
            [[n, ms(sp[f"cluster-init -w {n}"], 1), ms(sp[f"by hand (posix_spawn x{n})"], 1)] for n in (2, 64)]
            + ([[256, ms(sc["spawn_all_ms"], 1), ""]] if "spawn_all_ms" in sc else [])))
    w("")
    rp = lat["reap"]
    w(f"**Reaping {rp['orphans']} orphans** that exit at once, each init PID 1 of its own PID namespace "
      "(`unshare --pid --fork --mount-proc`). A worker forks an intermediate that forks the orphans and exits "
      "(so they are reparented to PID 1), then wakes them all by closing a pipe and polls until no "
      "`/proc/PID` of theirs is left (a zombie keeps its entry). The time includes the orphans' own exits "
      "on 2 CPUs, which is most of it.")
    w("")
    w(table(["PID 1", "all reaped after", "zombies left", "runs"],
            [[k, ms(v["reap_ms"], 0), v["left"], v["runs"]] for k, v in rp["results"].items()]))
    w("")


def scale(r, w):
    sc = r["scale"]
    w("## Scale: 256 workers")
    w("")
    w(table(["`-w 256 -- sleep 1000`", "value"],
            [["start to all 256 exec'd", ms(sc["spawn_all_ms"], 0)],
             ["init RSS with 256 workers", mib_kb(sc["init_rss_kb"])],
             ["init CPU spent starting them", f"{sc['init_cpu_s_to_start']:.2f} s"],
             ["SIGTERM to exit (all 256 stopped and reaped)", ms(sc["stop_ms"], 0)],
             ["exit code", sc["exit_code"]]]))
    w("")


def chaos(r, w):
    ch = r["chaos"]
    loop, gu = ch["crash_loop"], ch["give_up"]
    w("## Chaos")
    w("")
    w("**A random worker SIGKILLed every 300 ms under load** (2 workers of the seed server, wrk -c64 for the "
      "whole window). Killed connections are lost (wrk counts them as read errors); a slot whose "
      "worker is down keeps its socket in the init, so new connections queue instead of being refused. "
      "Every SIGKILL counts as a crash for the backoff, so a slot killed repeatedly waits longer and longer "
      "(250 ms, 500 ms, 1 s, ...), and recovery after the storm takes that long.")
    w("")
    rows = []
    for c in ch["kill_every_300ms"]:
        e = c["errors_detail"]
        rows.append([c["balance"], c["kills"], f"{c.get('no_worker_pct', 0):.0f}% of the 300 ms ticks",
                     fmt_int(c["requests"]), fmt_int(c["rps"]),
                     f"{c['error_rate_pct']:.3f}% ({c['socket_errors']} socket: {e['read']} read, "
                     f"{e['connect']} connect, {e['timeout']} timeout; {c['non_2xx']} non-2xx)",
                     ms(c["p99_ms"], 0),
                     f"{', '.join(c['slots_back'])} after {c['recovered_after_s']:.1f} s"
                     if c["recovered_after_s"] is not None else "**not all**",
                     c["zombies"], f"{fmt_int(c['rps_after'])} req/s, {c['errors_after']} errors"])
    w(table(["balance", "kills", "no worker up", "requests", "req/s", "error rate", "p99", "slots back",
             "zombies", "2 s of load after"], rows))
    w("")
    lo, hi = loop["predicted_restarts"]
    w(f"**Crash loop**: `-w 2 --give-up-after 0 -- sh -c 'exit 1'` for {loop['window_s']} s: the init used "
      f"{loop['init_cpu_s']:.2f} s of CPU ({loop['init_cpu_pct']:.2f}%) for {loop['restarts']} restarts; the "
      f"backoff (250 ms doubling to 30 s, equal jitter) predicts {lo}-{hi} for 2 slots. "
      f"`--give-up-after {gu['give_up_after_s']}s`: "
      + (f"exited with code {gu['exit_code']} after {gu['exit_after_s']:.1f} s." if gu.get("exited")
         else "did **not** exit."))
    w("")
    col = ch["collector"]
    w("**A broken collector** (`OTEL_EXPORTER_OTLP_ENDPOINT` at a port with nothing listening, at a socket "
      "that accepts and never answers, at a server answering 500) must not slow the pool down. Crash to "
      "replacement with `--backoff-initial 1ms` (first restart, median of 2 slots x 3 runs) and SIGTERM to exit of "
      "`-w 2 -- sleep 1000` (median of 3):")
    w("")
    names = {"none": "no telemetry", "ok": "collector answers 200", "refuse": "connection refused",
             "hang": "collector hangs", "500": "collector answers 500"}
    w(table(["collector", "crash to replacement", "SIGTERM to exit", "stop runs"],
            [[names[k], ms(v["crash_restart_ms"], 2), ms(v["stop_ms"], 1),
              ", ".join("-" if x is None else f"{x:.0f}" for x in v["stop_ms_all"]) + " ms"]
             for k, v in col.items()]))
    w("")


def caveats(r, w):
    w("## Where we lose, and caveats")
    w("")
    notes = []
    t, f, lat = r.get("throughput", {}).get("configs"), r.get("footprint", {}), r.get("latency", {})
    if t:
        node, ceil = t["node cluster"]["rps"], t["by hand (ceiling)"]["rps"]
        ci = [v["rps"] for k, v in t.items() if k.startswith("cluster-init")]
        best_ci, worst_ci = max(ci), min(ci)
    else:
        node = ceil = best_ci = worst_ci = 0
    sizes, rss = f.get("sizes", {}), f.get("idle_rss_kb", {})
    static = sizes.get("cluster-init (release, musl static)")
    idle, idle_s = rss.get("cluster-init -w 2"), rss.get("cluster-init -w 2 (musl static)")
    one = lat.get("crash_restart_1ms_ms") or [None]
    if best_ci < ceil:
        notes.append(f"The ceiling (workers started by hand on one socket) is {ceil:,.0f} req/s; cluster-init "
                     f"reaches {worst_ci / ceil:.0%}-{best_ci / ceil:.0%} of it. The workers run the same code; "
                     "what differs is the socket layout (`reuseport`) and noise.")
    if worst_ci < node:
        notes.append(f"With keep-alive, one cluster-init mode is below Node `cluster` in this run "
                     f"({worst_ci / node:.2f}x); see the note on noise below.")
    sm = sizes.get("tini-static")
    if static and sm:
        notes.append(f"Size: the static binary is {static / sm:.1f}x tini-static ({static / MIB:.2f} vs "
                     f"{sm / MIB:.2f} MiB); most of it is the OpenTelemetry exporter, the admin HTTP server and "
                     "tokio. tini, dumb-init and catatonit do not supervise, restart or export anything.")
    if idle and "tini-static" in rss:
      notes.append(f"Idle RSS: cluster-init is {idle / rss['tini-static']:.1f}x tini-static and "
                 f"{idle / rss['catatonit']:.1f}x catatonit (glibc build); the static build narrows it to "
                 f"{(idle_s or idle) / rss['tini-static']:.1f}x. Against the Node managers it is "
                 f"{rss['node cluster primary'] / idle:.0f}x (Node `cluster`) and "
                 f"{rss['pm2 -i 2 daemon'] / idle:.0f}x (PM2) smaller.")
    if one[0] and lat.get("crash_restart_by_hand_ms"):
        notes.append(f"Restart cost beyond the backoff: with a 1 ms backoff the first replacement runs "
                     f"{one[0]:.1f} ms after the crash, against {lat['crash_restart_by_hand_ms']:.1f} ms for a "
                     "plain fork/exec/wait loop.")
    if t:
        pm2 = t["pm2 -i 2"]["rps"]
        if worst_ci < 1.2 * pm2:
            notes.append(f"Keep-alive against PM2: {worst_ci / pm2:.2f}x-{best_ci / pm2:.2f}x, short of the 1.2x target. "
                         "With 64 long-lived connections PM2 and Node `cluster` touch each connection once and "
                         "then stay off the path, so every setup measures the same worker code; what differs is "
                         "how 64 connections end up spread over 2 workers (round-robin is exactly even, "
                         "`reuseport` hashing and a shared accept queue are not). The gap to PM2 only opens where "
                         "connections are short (second throughput table).")
        spread = max(max(v["rounds"]) / max(1, min(v["rounds"])) for v in t.values())
        medians = [v["rps"] for v in t.values()]
        if spread > max(medians) / min(medians):
            notes.append(f"Keep-alive throughput is within noise: one setup's slices vary by up to {spread:.2f}x, "
                         f"more than the {max(medians) / min(medians):.2f}x between the best and worst medians. "
                         "Read the keep-alive ratios as 'about equal'; the new-connection table is where the "
                         "setups really differ.")
        close = {k: v["close_rps"] for k, v in t.items()}
        if close.get("cluster-init shared") and close.get("cluster-init reuseport") and \
                close["cluster-init shared"] < 0.8 * close["cluster-init reuseport"]:
            notes.append(f"`shared` is slower than `reuseport` with a new connection per request "
                         f"({close['cluster-init shared']:,.0f} vs {close['cluster-init reuseport']:,.0f} req/s): "
                         "both Node workers wait on the same accept queue, so both are woken for a connection "
                         "only one of them gets; per-slot sockets give each worker its own queue.")
    ch = r.get("chaos", {})
    kills = ch.get("kill_every_300ms") or []
    if kills and t:
        c = kills[0]
        notes.append(f"Kill storm: with a worker SIGKILLed every 300 ms, throughput fell to {c['rps']:,.0f} req/s "
                     f"({c['balance']}) from about {t['cluster-init ' + c['balance']]['rps']:,.0f}, because a SIGKILL "
                     "from outside counts as a crash and the backoff keeps that slot down longer each time "
                     f"(no worker at all was up at {c.get('no_worker_pct', 0):.0f}% of the kill ticks). Nothing is refused (0 connect "
                     "errors: the init keeps the sockets), but queued connections wait and some time out. "
                     f"After the storm every slot came back within {max(k['recovered_after_s'] or 0 for k in kills):.1f} s "
                     "and no zombie was left.")
    col = ch.get("collector") or {}
    if col.get("none") and col.get("hang"):
        base = col["none"]["stop_ms"]
        notes.append(f"A broken collector is not free at stop: exit takes {col['refuse']['stop_ms']:.0f} ms when the "
                     f"collector refuses connections and {col['hang']['stop_ms']:.0f} ms when it hangs, against "
                     f"{base:.1f} ms without telemetry. The final flush is bounded by `--stop-timeout`/5, clamped "
                     "to 0.2-3 s (src/main.rs), so it stays well inside a 30 s grace period, but it is there. "
                     "Restarts are not delayed by it.")
        if col.get("ok") and col["ok"]["crash_restart_ms"] > 1.5 * col["none"]["crash_restart_ms"]:
            notes.append(f"With telemetry on, a restart with a 1 ms backoff took {col['ok']['crash_restart_ms']:.1f} ms "
                         f"against {col['none']['crash_restart_ms']:.1f} ms without (not investigated further; "
                         "it is small next to the default 250 ms backoff).")
    notes.append("Start to all spawned includes cluster-init's own start (exec, dynamic loading, CPU detection, "
                 "runtime), which the posix_spawn loop does not have.")
    notes.append("The machine is a shared 2-vCPU VM, and other work ran during the benchmark "
                 "(other sessions' builds and test suites): the slices columns show the spread. wrk runs on the same 2 CPUs as "
                 "the servers, so every config is client-bound to the same degree.")
    for n in notes:
        w("- " + n)
    w("")


def machine_section(r, w):
    m = r["machine"]
    w("## Machine")
    w("")
    v = m["versions"]
    w(table(["", ""], [
        ["CPU", f"{m['cpu']}, `nproc` = {m['nproc']}"], ["memory", f"{m['mem_gib']} GiB"],
        ["kernel", f"`uname -r` = {m['uname_r']}"], ["date", m["date"]],
        ["cluster-init", f"{v['cluster-init']}, commit {m['commit']}" + (" + local changes" if m["dirty"] else "")
         + f", {v['rustc']}"],
        ["peers", f"node {v['node']}, pm2 {v['pm2']}, {v['tini']}, {v['dumb-init']}, catatonit "
                  f"{v['catatonit'].split()[-1]}, wrk {v['wrk']}"],
        ["run time", f"{r['run_seconds'] / 60:.1f} min" + (" (`--quick`)" if r.get("quick") else "")],
    ]))
    w("")
    w("Scripts: `benches/run` (installs, builds, runs, renders), `benches/bench.py` (the measurements), "
      "`benches/report.py` (this page and the plot), plus the helpers it names: `node-cluster.js`, "
      "`ceiling.py`, `collector.py`, `orphans.py`, `report.lua`.")


if __name__ == "__main__":
    main()
