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
    for section in (targets, throughput, output, footprint, idle, latency, reap, scale, churn, chaos, caveats):
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
    w("```sh\nbenches/run           # full run, about 20 minutes\nbenches/run --quick   # about 9 minutes\n```")
    w("")
    w("![throughput and RSS](benchmarks.png)")
    w("")


def targets(r, w):
    w("## Targets")
    w("")
    w("Ratios for throughput are given for the worse .. better of cluster-init's two balance modes "
      "(`reuseport`, `shared`). Each row names the issue it comes from where it is a newer one.")
    w("")
    rows = []
    for part in (targets_base, targets_reap, targets_churn, targets_idle):
        try:
            rows += part(r)
        except Exception as e:  # noqa: BLE001 - a missing section must not hide the others
            rows.append([f"({part.__name__[8:]})", f"no data from this run ({type(e).__name__}: {e})", "-"])
    w(table(["target", "measured", "met"], rows))
    w("")


def targets_base(r):
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
    cnode, cpm2 = t["node cluster"]["close_rps"], t["pm2 -i 2"]["close_rps"]
    cbest = max(v["close_rps"] for v in ci.values())
    cworst = min(v["close_rps"] for v in ci.values())
    ceil = t["by hand (ceiling)"]["rps"]
    rp = t["cluster-init reuseport"]["rps"]
    rp_err = t["cluster-init reuseport"]["errors"]
    return [
        ["throughput >= Node `cluster`, keep-alive", f"{ratio(worst_ci, node)} .. {ratio(best_ci, node)}",
         verdict(worst_ci >= node)],
        ["throughput >= Node `cluster`, new connection per request", f"{ratio(cworst, cnode)} .. {ratio(cbest, cnode)}",
         verdict(cworst >= cnode)],
        ["throughput >= 1.2x PM2 `-i 2`, keep-alive", f"{ratio(worst_ci, pm2)} .. {ratio(best_ci, pm2)}",
         verdict(worst_ci >= 1.2 * pm2)],
        ["throughput >= 1.2x PM2 `-i 2`, new connection per request", f"{ratio(cworst, cpm2)} .. {ratio(cbest, cpm2)}",
         verdict(cworst >= 1.2 * cpm2)],
        ["(issue 12) keep-alive throughput with nothing failing unchanged: `reuseport` against the hand-made "
         "ceiling in this run within 3% of the last run's 0.99x (>= 0.96x)",
         f"{ratio(rp, ceil)} ({rp:,.0f} vs {ceil:,.0f} req/s, {rp_err} errors)", verdict(rp >= 0.96 * ceil and rp_err == 0)],
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


def targets_reap(r):
    rp = r["reap"]
    res, rt = rp["results"], rp["ratios"]
    tini = res["tini"]["reap_ms"]
    rows = []
    for name in ("cluster-init (musl static)", "cluster-init (glibc)"):
        if name not in res:
            continue
        v = res[name]["reap_ms"]
        pr = rt.get(f"{name} / tini", {})
        rows.append([f"(issue 11) reaping {rp['orphans']} orphans no slower than tini, side by side: {name}"
                     + (" (what ships)" if "musl" in name else ""),
                     f"{v:.0f} vs {tini:.0f} ms, median of {rp['rounds']} interleaved rounds ({v / tini:.2f}x); "
                     f"round by round {pr.get('min', 0):.2f}x-{pr.get('max', 0):.2f}x, median {pr.get('median', 0):.2f}x",
                     verdict(v <= tini) + ("" if v <= tini else " (within the noise: see the reaping table)"
                                           if pr.get("min", 2) < 1 < pr.get("max", 0) else "")])
    return rows


def targets_churn(r):
    ch = r["churn"]
    runs = [c for c in ch["runs"] if "error" not in c]
    rows = []

    def node_of(c):
        return churn_pick([x for x in runs if x["scenario"] == c["scenario"]], "node cluster", c["connection"])

    label = {"storm": "(a) kill storm", "recycle": "(b) exit after 100 requests", "down": "(c) slot held down"}
    ci = [c for c in runs if c["manager"].startswith("cluster-init")]
    for scen in ("storm", "recycle", "down"):
        cs = [c for c in ci if c["scenario"] == scen]
        if not cs:
            continue
        parts, ok = [], True
        for c in cs:
            n = node_of(c)
            if not n:
                continue
            parts.append(f"`{c['manager']}` {c['connection']}: {c['errors']:,} vs {n['errors']:,}")
            ok_c = c["errors"] <= n["errors"]
            if c["manager"] in ("cluster-init", "cluster-init --backoff-initial 4s --backoff-max 4s"):
                ok = ok and ok_c
        rows.append([f"(issue 12) churn {label[scen]}: errors no more than Node `cluster`'s (cluster-init with its "
                     "default options, or the options the scenario names)", "; ".join(parts), verdict(ok)])
    storm = [c for c in ci if c["scenario"] == "storm"]
    if storm:
        parts = [f"`{c['manager']}` {c['connection']}: wrk {c['p99_ms']:,.0f} ms, probe "
                 f"{(c.get('probe') or {}).get('p99_ms') or 0:,.0f} ms" for c in storm]
        default_ok = all(worst_p99(c) < 500 for c in storm if c["manager"] == "cluster-init")
        tuned = sorted({c["manager"] for c in storm if c["manager"] != "cluster-init"
                        and all(worst_p99(x) < 500 for x in storm if x["manager"] == c["manager"])})
        rows.append(["(issue 12) churn (a) kill storm: p99 under 500 ms", "; ".join(parts),
                     verdict(default_ok) + ("" if default_ok else
                                            (" with the defaults; yes with " + ", ".join(f"`{t[13:]}`" for t in tuned)
                                             if tuned else " (with no option tried)"))])
    down = [c for c in ci if c["scenario"] == "down"]
    if down:
        parts = [("tcp_migrate_req=1 " if "tcp_migrate_req=1" in c["manager"] else "")
                 + f"{c['connection']}: wrk {c['p99_ms']:,.0f} ms (max {c['max_ms']:,.0f} ms), probe "
                 f"{(c.get('probe') or {}).get('p99_ms') or 0:,.0f} ms (max {(c.get('probe') or {}).get('max_ms') or 0:,.0f} ms)"
                 for c in down]
        mig = [c for c in down if "tcp_migrate_req=1" in c["manager"]]
        plain = [c for c in down if c not in mig]
        ok_plain = bool(plain) and all(worst_p99(c) < 100 for c in plain)
        ok_mig = bool(mig) and all(worst_p99(c) < 100 for c in mig)
        host = ch.get("tcp_migrate_req")
        plain_as = (f"with this machine's `tcp_migrate_req={host}`" + (" (the kernel's default)" if host == "0" else "")
                    if host is not None else "without `tcp_migrate_req`")
        rows.append(["(issue 12) churn (c) slot held down 4 s: p99 under 100 ms", "; ".join(parts),
                     verdict(ok_plain) + f" {plain_as}"
                     + (f"; {'yes' if ok_mig else '**no**'} with `tcp_migrate_req=1`" if mig else "")])
    return rows


def targets_idle(r):
    res = r["idle"]["results"]
    win = r["idle"]["window_s"]
    on = {k: v for k, v in res.items() if k.startswith("--workers max") and "interval 0" not in k}
    off = {k: v for k, v in res.items() if "interval 0" in k or k.startswith("--workers 2")}
    return [
        ["(issue 14) budget watch on (`--workers max`, every 5 s and every 1 s): idle init under 0.1% of one CPU",
         "; ".join(f"`{k.split(' (')[0]}`: {v['cpu_pct']:.3f}%, {v['wakeups_per_s']:.1f} wakeups/s" for k, v in on.items()),
         verdict(all(v["cpu_pct"] < 0.1 for v in on.values()))],
        ["(issue 14) no wakeups at all with `--budget-interval 0` and with `--workers N`",
         "; ".join(f"`{k}`: {v['wakeups']} in {win} s" for k, v in off.items()),
         verdict(all(v["wakeups"] == 0 for v in off.values()))],
    ]


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
def pct(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}%"


def reap(r, w):
    rp = r["reap"]
    res = rp["results"]
    w(f"**Reaping {rp['orphans']} orphans** that exit at once, each init PID 1 of its own PID namespace "
      "(`unshare --pid --fork --mount-proc`). A worker forks an intermediate that forks the orphans and exits "
      "(so they are reparented to PID 1), then wakes them all by closing a pipe and polls until no "
      "`/proc/PID` of theirs is left (a zombie keeps its entry). The time includes the orphans' own exits "
      "on 2 CPUs, which is most of it. "
      f"{rp['rounds']} rounds; each round runs every init once, in an order rotated from round to round, so "
      "that a burst of outside load hits them alike; the table gives the median and the spread over the rounds. "
      "*Last orphan exited* is when the last orphan had closed its files on its way out (every orphan holds "
      "the write end of a pipe that a watcher reads; EOF comes just before the last one becomes a zombie): "
      "it does not depend on PID 1 except through the CPU PID 1 takes from the exiting orphans, so "
      "*after the last exit* is what the init itself adds. The init's CPU (`schedstat`, all threads) and "
      "its context switches (voluntary + involuntary, from `/proc/1/task/*/status`) are counted from the "
      "wake-up to the last reap.")
    w("")
    rows = []
    for k, v in res.items():
        xs = [x for x in v["all_ms"] if x is not None]
        rows.append([f"**{k}**" if k.startswith("cluster-init") else k, ms(v["reap_ms"], 0),
                     f"{min(xs):.0f}-{max(xs):.0f} ms" if xs else "-", ms(v["exited_ms"], 0), ms(v["lag_ms"], 1),
                     ms(v["init_cpu_ms"], 0), fmt_int(v["init_wakeups"]), v["left"], v["runs"]])
    w(table(["PID 1", "all reaped after (median)", "spread", "last orphan exited", "reaped after the last exit",
             "init CPU", "init context switches", "zombies left", "runs"], rows))
    w("")
    rt = rp.get("ratios") or {}
    if rt:
        w("Side by side, round by round (the two inits ran one after the other in the same round): "
          "cluster-init's time over the other's.")
        w("")
        w(table(["pair", "median", "range", "per round"],
                [[k, ratio(v["median"], 1) if v["median"] else "-",
                  f"{v['min']:.2f}x-{v['max']:.2f}x" if v["min"] else "-",
                  " / ".join(f"{x:.2f}" for x in v["rounds"])] for k, v in rt.items()]))
        w("")
    prof = {k: v for k, v in (rp.get("profiles") or {}).items() if v}
    if prof:
        w("Where PID 1's CPU goes while it reaps (`perf record -e cpu-clock -F 20000` on the init, attached "
          "before the orphans are woken, one extra run each, not timed):")
        w("")
        w(table(["PID 1", "init CPU in that run", "in the kernel", "in its own code and libc", "top symbols"],
                [[k, ms(v["run"]["init_cpu_ms"], 0) if v.get("run") else "-", pct(v["kernel_pct"]),
                  pct(v["user_pct"]),
                  ", ".join(f"`{sym.split()[-1]}` {p:.0f}%" for sym, p in v["top_symbols"][:4])]
                 for k, v in prof.items()]))
        w("")
    ci = res.get("cluster-init (musl static)") or res.get("cluster-init (glibc)")
    tini = res.get("tini")
    if ci and tini:
        cm = res.get("cluster-init (musl static)", {}).get("reap_ms")
        cg = res.get("cluster-init (glibc)", {}).get("reap_ms")
        spreads = [max(x for x in v["all_ms"] if x) / min(x for x in v["all_ms"] if x)
                   for v in res.values() if any(v["all_ms"])]
        lags = [v["lag_ms"] for v in res.values() if v["lag_ms"] is not None]
        text = (f"What it means: cluster-init took {cm:.0f} ms (musl static) and {cg:.0f} ms (glibc) against "
                f"tini's {tini['reap_ms']:.0f} ms (medians). ")
        if lags:
            text += (f"Every init, cluster-init included, had reaped the last orphan within {max(lags):.0f} ms "
                     "of its exit (median): the total is the orphans' own exit, which PID 1 only slows down by "
                     "the CPU and the lock it takes meanwhile. ")
        text += (f"The same init's runs vary by up to {max(spreads):.1f}x from round to round, more than the "
                 "differences between the inits' medians: on this shared 2-CPU machine the order of the inits "
                 "is mostly noise. ")
        if prof:
            k = max(v["kernel_pct"] for v in prof.values())
            lo = min(v["kernel_pct"] for v in prof.values())
            share = f"{lo:.0f}%" if round(lo) == round(k) else f"{lo:.0f}-{k:.0f}%"
            text += (f"The profile says why they are all alike: {share} of PID 1's time is spent in the kernel's "
                     "`wait4` (`wait_consider_task` scanning "
                     "the init's 5000 children, `release_task` freeing each one, including the `/proc` "
                     "entries the poller looked up); the init's own code, per orphan a `waitpid` and a hash "
                     "lookup, is the rest. A `waitpid(-1, WNOHANG)` that finds no zombie scans every live "
                     "child under the tasklist lock the exiting orphans need too, so an init that wakes more "
                     "often while they exit (the context-switch column) does more of these scans and takes "
                     "more of that lock, whatever its own code does.")
            own = prof.get("cluster-init (musl static)")
            if own:
                text = text.replace("the init's own code, per orphan a `waitpid` and a hash lookup, is the rest",
                                    f"cluster-init's own code (per orphan a `waitpid` and a hash lookup) is the "
                                    f"other {own['user_pct']:.0f}%")
        w(text)
        w("")


def output(r, w):
    o = r["output"]
    c = o["configs"]
    base = c.get("inherit", {}).get("rps")
    w("## Worker output relay (`--worker-output`)")
    w("")
    w(f"A variant of the seed server that `console.log`s one access-log line (about 75 bytes) per request "
      "(`benches/variant-server.js`, `LOG_EACH_REQUEST=1`), 2 workers, "
      f"`{o['wrk']}`. cluster-init's stdout is a pipe drained by `wc -l` (not a terminal). With `inherit` the "
      "workers write into that pipe themselves and the init is not on the path; with `prefix` (`[slot] line`) "
      "and `json` each worker writes into a pipe of its own that the init reads and relays line by line. "
      "The four setups run at once on their own ports and the slices go round-robin over them. *Init CPU* "
      "is the init's CPU over each slice (`schedstat`) as a share of one CPU; *writes per request* counts "
      "its `write(2)` calls (`/proc/PID/io` `syscw`); *lines out* is what reached the pipe's reader against "
      "the requests answered (one line per request; a request in flight when a slice ends was logged but "
      "not counted by wrk).")
    w("")
    rows = []
    for name, v in c.items():
        lines = v.get("lines_out")
        rows.append([f"`{name}`" if "no log" not in name else f"{name} (the seed server)", fmt_int(v["rps"]),
                     ratio(v["rps"], base), ms(v["p99_ms"], 1), v["errors"], pct(v["init_cpu_pct"]),
                     f"{v['init_writes_per_request']:.2f}",
                     f"{fmt_int(lines)} / {fmt_int(v['requests'])}" if lines is not None else "-",
                     " / ".join(fmt_int(x) for x in v["rounds"])])
    w(table(["--worker-output", "req/s", "vs inherit", "p99", "errors", "init CPU", "init writes per request",
             "lines out / requests", "slices (req/s)"], rows))
    w("")
    pre, js, quiet = c.get("prefix"), c.get("json"), c.get("inherit, no log line")
    if base and pre and js:
        def cost(v):
            x = 1 - v["rps"] / base
            return f"{x:.0%} of the throughput" if x > 0.005 else "no measurable throughput"

        text = (f"What it means: relaying costs {cost(pre)} with `prefix` and {cost(js)} with `json` against "
                f"`inherit` in this run (p99 {pre['p99_ms']:.0f} and {js['p99_ms']:.0f} ms against "
                f"{c['inherit']['p99_ms']:.0f} ms), and the init, idle with "
                f"`inherit`, then uses {pre['init_cpu_pct']:.0f}% (`prefix`) and {js['init_cpu_pct']:.0f}% "
                "(`json`) of one CPU, on the same 2 CPUs as the workers and wrk. ")
        if quiet:
            bigger = quiet["rps"] / base > base / min(pre["rps"], js["rps"])
            text += (("The log line itself is the larger cost" if bigger else "The log line itself costs less")
                     + ": the same server without it does "
                     f"{quiet['rps']:,.0f} req/s ({quiet['rps'] / base:.2f}x), because a Node `console.log` to "
                     "a pipe is a synchronous `write(2)` in the worker. ")
        wpl = pre["init_writes_per_request"]
        text += (f"The init makes {wpl:.2f} `write(2)` per relayed line: the lines one read of a worker's "
                 "pipe brought go out together (src/sink.rs `Sink::lines`), as soon as they are read"
                 + (f", about {1 / wpl:.1f} lines per write here. " if 0 < wpl < 0.9 else ". "))
        logged = [v for k, v in c.items() if "no log" not in k and v.get("lines_out") is not None]
        if logged and all(v["lines_out"] >= v["requests"] for v in logged):
            text += "No line was lost (lines out >= requests answered, in every mode)."
        elif logged:
            text += "**Lines were lost**: fewer lines reached the reader than requests were answered."
        w(text)
        w("")


def idle(r, w):
    d = r["idle"]
    res = d["results"]
    w("## Idle cost of the budget watch")
    w("")
    w(f"An idle pool (`-- sleep`, 2 workers), every setup at once, counted over {d['window_s']} s after a 2 s "
      "settle: *wakeups* are the init's context switches (voluntary + involuntary, summed over its threads "
      "from `/proc/PID/task/*/status`), CPU is `schedstat` (nanoseconds) over the window. `--workers max` "
      "re-reads the CPU and memory budget every `--budget-interval` (default 5 s) to resize the pool; "
      "`--budget-interval 0` reads it only at start, and a fixed `--workers N` never does.")
    w("")
    w(table(["setup", "threads", "wakeups", "per second", "CPU", "share of one CPU"],
            [[f"`{k}`", v["threads"], v["wakeups"], f"{v['wakeups_per_s']:.2f}", ms(v["cpu_ms"], 2),
              pct(v["cpu_pct"], 4)] for k, v in res.items()]))
    w("")
    on = [v for k, v in res.items() if "interval 0" not in k and k.startswith("--workers max")]
    off = [v for k, v in res.items() if "interval 0" in k or "--workers 2" in k]
    if on and off:
        w(f"What it means: with the watch on, the idle init wakes {min(v['wakeups_per_s'] for v in on):.1f}-"
          f"{max(v['wakeups_per_s'] for v in on):.1f} times a second and uses at most "
          f"{max(v['cpu_pct'] for v in on):.3f}% of one CPU; with `--budget-interval 0` or a fixed `--workers N` "
          + ("it does not wake at all: no timer runs in an idle pool."
             if all(v["wakeups"] == 0 for v in off)
             else f"it still woke {max(v['wakeups'] for v in off)} times in {d['window_s']} s."))
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


SCENARIOS = {
    "storm": "(a) A random worker SIGKILLed every 300 ms",
    "recycle": "(b) Every worker exits by itself after {n} requests",
    "down": "(c) One worker SIGKILLed once, its slot held down",
}


def probe_cell(pb):
    if not pb:
        return "-", "-", "-"
    failed = sum(pb["errors"].values())
    return (f"{ms(pb['p50_ms'], 1)} / {ms(pb['p99_ms'], 0)} / {ms(pb['max_ms'], 0)}",
            f"{failed}" + (" (" + ", ".join(f"{v} {k}" for k, v in pb["errors"].items()) + ")" if failed else ""),
            str(pb["over_1s"]))


def worst_p99(c):
    """The worse of wrk's p99 (corrected for coordinated omission) and the probe's (real requests)."""
    pb = c.get("probe") or {}
    return max(c["p99_ms"], pb.get("p99_ms") or 0)


def churn_rows(runs):
    rows = []
    for c in runs:
        if "error" in c:
            rows.append([c["manager"], c["connection"], f"run failed: {c['error']}"] + [""] * 11)
            continue
        e = c["errors_detail"]
        detail = ", ".join(f"{e[k]} {k}" for k in ("connect", "read", "write", "timeout", "status") if e.get(k))
        notes = []
        if c.get("down_s") is not None:
            notes.append(f"replacement started {c['down_s'] * 1000:,.0f} ms after the kill")
        if c.get("steering_updates") is not None:
            notes.append(f"{c['steering_updates']} steering updates")
        if c.get("pm2"):
            st = [f"{a['status']} ({a['restarts']} restarts)" for a in c["pm2"]]
            notes.append("PM2 says: " + ", ".join(st))
        if c.get("busy_before_pct") is not None:
            notes.append(f"machine {c['busy_before_pct']}% busy in the second before")
        lat, failed, slow = probe_cell(c.get("probe"))
        rows.append([f"**{c['manager']}**" if c["manager"].startswith("cluster-init") else c["manager"],
                     c["connection"], fmt_int(c["requests"]), fmt_int(c["rps"]),
                     f"{c['errors']:,}" + (f" ({detail})" if detail else ""),
                     f"{ms(c['p50_ms'], 1)} / {ms(c['p99_ms'], 0)} / {ms(c['max_ms'], 0)}",
                     lat, failed, slow,
                     c["kills"] or "", c["workers_started"], pct(c["no_worker_pct"], 0), "; ".join(notes)])
    return rows


def churn(r, w):
    ch = r["churn"]
    runs = ch["runs"]
    w("## Churn: workers dying under load")
    w("")
    w("cluster-init, Node `cluster` (`benches/node-cluster.js`, which forks a worker again as soon as one "
      "exits, as a hand-written primary does) and PM2 `-i 2` (its defaults), each with 2 workers of the same "
      "server, each started fresh for every row, under `wrk -t2 -c64` for the whole window, once with "
      "keep-alive and once with a new connection per request (`Connection: close`: every request needs the "
      "accept path, which is where steering shows). *wrk errors* are wrk's socket errors and non-2xx "
      "responses; wrk counts every failed attempt, so a client reconnecting at once to a listener that "
      "takes connections and drops them counts many. wrk runs with `--timeout 10s` so that a request that "
      "waited for a worker shows in its latency, and wrk corrects its latencies for coordinated omission "
      "(a response that took T adds the samples its connection would have produced meanwhile), so a few "
      "stalled connections weigh heavily on its p99. Beside wrk, an open-loop probe (`benches/probe.py`) "
      f"opens a new connection every {1000 / ch.get('probe_rate', 100):.0f} ms whatever the earlier ones do, "
      "each request with its own 10 s timeout: its latencies are real requests' (what a new user arriving "
      "at a steady rate sees), and *probe > 1 s* counts those that waited more than a second. The targets "
      "are judged on the worse of the two p99s. *Workers started* and *no worker process* come from polling "
      "the manager's children every 10 ms.")
    w("")
    for scen in ("storm", "recycle", "down"):
        rs = [c for c in runs if c.get("scenario") == scen]
        if not rs:
            continue
        title = SCENARIOS[scen].format(n=ch.get("recycle_after"))
        secs = ch["down_window_s"] if scen == "down" else ch["window_s"]
        w(f"**{title}**, {secs} s window.")
        w("")
        w(table(["manager", "wrk connection", "wrk requests", "req/s", "wrk errors", "wrk p50 / p99 / max",
                 "probe p50 / p99 / max", "probe failed", "probe > 1 s", "kills", "workers started",
                 "no worker process", "notes"], churn_rows(rs)))
        w("")
        w(churn_meaning(scen, rs, ch))
        w("")


def churn_pick(rs, manager, conn):
    for c in rs:
        if c.get("manager") == manager and c.get("connection") == conn and "error" not in c:
            return c
    return None


def churn_brief(c, node=None):
    """`manager`, connection: the numbers a reader compares, in one phrase."""
    pb = c.get("probe") or {}
    text = (f"`{c['manager']}` ({c['connection']}): wrk p99 {c['p99_ms']:,.0f} ms, the probe's p50/p99 "
            f"{pb.get('p50_ms') or 0:,.0f}/{pb.get('p99_ms') or 0:,.0f} ms, {c['errors']:,} wrk errors")
    if node:
        text += f" (Node `cluster`: {node['errors']:,})"
    return text


def churn_meaning(scen, rs, ch):
    node = {conn: churn_pick(rs, "node cluster", conn) for conn in ("keep-alive", "close")}
    cis = [c for c in rs if c.get("manager", "").startswith("cluster-init") and "error" not in c]
    others = [c for c in rs if not c.get("manager", "").startswith("cluster-init") and "error" not in c]

    def each(cs):
        return "; ".join(churn_brief(c, node.get(c["connection"]) if c["manager"] != "node cluster" else None)
                         for c in cs) + "."

    if scen == "storm":
        dflt = [c for c in cis if c["manager"] == "cluster-init"]
        parts = ["What it means: cluster-init counts a SIGKILL from outside as a crash, so every kill of a slot's "
                 "worker doubles that slot's restart delay (250 ms, 500 ms, 1 s, ... up to 30 s, until a *ready* "
                 "life of `--backoff-reset` starts it over). With the defaults both slots are soon down at once "
                 + (f"(no worker process {max(c['no_worker_pct'] for c in dflt):.0f}% of the window)" if dflt else "")
                 + "; new connections are not refused (the init keeps the sockets: no connect errors) but wait in "
                 "the queue of whichever slot the kernel's hash picked until that slot's next worker runs. "
                 "`--backoff-reset 1s` changes nothing here: a worker lives 300-600 ms between kills, never the "
                 "1 s it would need to start its slot's backoff over. What a user whose workers are killed from "
                 "outside (not crashing by themselves) would set is a short backoff, `--backoff-initial 10ms "
                 "--backoff-max 100ms`: a killed slot is back within 100 ms plus Node's start. What is left of "
                 "the tail is Node's start: with `--ready started` (the default) a slot is steered to again as "
                 "soon as its new worker has exec'd, so connections queue on its socket for the 100-200 ms Node "
                 "takes to listen; `--ready 150ms` keeps a new worker out of the steering that long.",
                 each(cis),
                 "Node `cluster` and PM2 restart at once, and their primary accepts every connection itself "
                 "and hands it only to a worker that listens, so a connection never waits for a dead or "
                 "starting worker; their errors are the connections handed to a worker that died.",
                 each(others)]
        return " ".join(parts)
    if scen == "recycle":
        parts = [f"What it means: a worker that served {ch.get('recycle_after')} requests and exits 0 is, for "
                 "cluster-init, *recycled*: restarted at once (at most every 50 ms per slot), never backed off, "
                 "and its slot is out of the steering from its exit to its successor's exec. Its own keep-alive "
                 "connections are cut (wrk's read errors), connections already in its socket's queue wait for "
                 "the successor, and with `--ready started` new connections reach the successor's socket while "
                 "its Node is still starting: the tail is Node's start time.", each(cis)]
        pm = [c for c in rs if c.get("manager") == "pm2 -i 2" and c.get("pm2")]
        if any(a["status"] == "errored" for c in pm for a in c["pm2"]):
            parts.append("PM2 gave up: it counts an exit within `min_uptime` (1 s) of the start as an unstable "
                         "restart, and after `max_restarts` (16) of them within 16 s of the app's start it stops "
                         "restarting the worker (status `errored`), exit code 0 or not; then nothing listens "
                         "(connections refused, the probe's failures).")
        parts.append("Node `cluster` hands each accepted connection to a worker over IPC; connections handed "
                     "to a worker that is exiting are dropped, and while no worker is up it closes the "
                     "listening socket, which is where its errors come from (wrk counts every one of its "
                     "immediate retries).")
        parts.append(each(others))
        return " ".join(parts)
    parts = ["What it means: cluster-init, with `--backoff-initial 4s --backoff-max 4s`, restarts the killed "
             "worker after 2-4 s (the first delay is drawn in [base/2, base]; the *replacement started* note "
             "gives this run's); meanwhile its slot is out of the steering and every new connection goes to "
             "the other worker, which then serves all the load alone. Node `cluster` and PM2 restart at "
             "once, so they have no slot held down: their window measures one kill and an immediate restart.",
             each(cis + others),
             "cluster-init's long wrk tail is a handful of connections: those that were in the killed worker's "
             "accept queue, or reached its socket between its death and the steering update that follows the "
             "init's reaping of it. They stay queued on that socket until the slot's next worker accepts them, "
             "the whole time the slot is held down (wrk's max), and wrk's correction for coordinated omission "
             "turns each such stalled connection into the requests it would have sent, hence its p99. The "
             "probe shows what other new connections met. The init hands them over where the kernel can: "
             "with `net.ipv4.tcp_migrate_req=1` it parks a slot whose restart delay is 500 ms or more, closing "
             "its socket so that the kernel moves the queue to a live one (the `tcp_migrate_req=1` row, which "
             "sets it for that run only; this machine's own setting is "
             + (f"`tcp_migrate_req={ch.get('tcp_migrate_req')}`" if ch.get("tcp_migrate_req") is not None
                else "without `tcp_migrate_req`")
             + (", the kernel's default" if ch.get("tcp_migrate_req") == "0" else "")
             + "; Kubernetes counts it among the unsafe sysctls a cluster must allow)."]
    return " ".join(parts)


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
    notes += new_caveats(r)
    notes.append("Start to all spawned includes cluster-init's own start (exec, dynamic loading, CPU detection, "
                 "runtime), which the posix_spawn loop does not have.")
    busy = [c["busy_before_pct"] for c in (r.get("churn") or {}).get("runs", []) if c.get("busy_before_pct") is not None]
    notes.append("The machine is a shared 2-vCPU VM, and other work ran during the benchmark "
                 "(other sessions' builds and test suites)"
                 + (f": before the churn rows, with none of ours running, other work kept it {min(busy)}-"
                    f"{max(busy)}% busy (per row in the notes)" if busy else "")
                 + ". The slices columns and the reaping spread show what that does. wrk runs on the same 2 CPUs "
                 "as the servers, so every config is client-bound to the same degree. The churn rows run one "
                 "after the other (each manager fresh), not interleaved: a burst of outside load can hit one row "
                 "and not the next.")
    for n in notes:
        w("- " + n)
    w("")


def new_caveats(r):
    notes = []
    try:
        rp = r["reap"]["results"]
        cm, ti = rp["cluster-init (musl static)"]["reap_ms"], rp["tini"]["reap_ms"]
        prof = [v["kernel_pct"] for v in (r["reap"].get("profiles") or {}).values() if v]
        if cm > ti:
            notes.append(f"Reaping: the static cluster-init's median ({cm:.0f} ms) is above tini's ({ti:.0f} ms) in "
                         "this run; see the reaping table for the spread, which is larger than the gap"
                         + (f", and the profile, which puts {min(prof):.0f}-{max(prof):.0f}% of the profiled inits' "
                            "time in the kernel (`wait4`)" if prof else "") + ".")
    except (KeyError, TypeError):
        pass
    try:
        runs = [c for c in r["churn"]["runs"] if "error" not in c]
        for c in runs:
            if c["manager"] == "cluster-init" and c["scenario"] == "storm" and c["p99_ms"] >= 500:
                notes.append(f"Kill storm with the default backoff ({c['connection']}): p99 {c['p99_ms']:,.0f} ms, over "
                             "the 500 ms target. The backoff treats a SIGKILL from outside as a crash, so a slot "
                             "killed again and again stays down longer and longer, and the connections queued on "
                             "its socket wait for it (see the churn section for the options tried).")
                break
        down = [c for c in runs if c["scenario"] == "down" and c["manager"].startswith("cluster-init")]
        for conn in ("keep-alive", "close"):
            n = churn_pick([x for x in runs if x["scenario"] == "down"], "node cluster", conn)
            worse = [c for c in down if c["connection"] == conn and n and c["errors"] > n["errors"]]
            if not worse:
                continue
            counts = " and ".join(f"{c['errors']}" for c in worse)
            if conn == "keep-alive":
                notes.append(f"Slot held down, keep-alive: {counts} wrk errors against Node `cluster`'s "
                             f"{n['errors']}. These are read errors, one per keep-alive connection the killed "
                             "worker held with a request in flight, the same for every manager: the count follows "
                             "how many of wrk's 64 connections that worker had (`reuseport` hashes them over the "
                             "slots, Node's round-robin deals them out), not the steering.")
            else:
                notes.append(f"Slot held down, new connection per request: {counts} wrk errors against Node "
                             f"`cluster`'s {n['errors']}.")
        for c in down:
            n = churn_pick([x for x in runs if x["scenario"] == "down"], "node cluster", c["connection"])
            if not n or worst_p99(c) < 100:
                continue
            pb = c.get("probe") or {}
            opts, _, extra = c["manager"][len("cluster-init "):].partition(", ")
            name = (f"`{opts}`" if opts else "defaults") + (f", {extra}" if extra else "")
            back = max((x.get("down_s") or 0) for x in runs if x["scenario"] == "down"
                       and not x["manager"].startswith("cluster-init"))
            if c["p99_ms"] >= 100:
                notes.append(f"Slot held down ({name}, {c['connection']}): wrk's p99 is {c['p99_ms']:,.0f} ms and its "
                             f"max {c['max_ms']:,.0f} ms against Node `cluster`'s {n['p99_ms']:,.0f} and "
                             f"{n['max_ms']:,.0f} ms. The connections that were in the killed worker's accept "
                             "queue, or reached its socket before the init had reaped it and updated the "
                             "steering, stay in that socket's queue for the whole time the slot is down (Node "
                             "`cluster`'s primary accepts every connection itself and hands it to a live worker).")
            elif max(c["max_ms"], pb.get("max_ms") or 0) >= 1000:
                notes.append(f"Slot held down ({name}, {c['connection']}): wrk's p99 is {c['p99_ms']:,.0f} ms and "
                             f"the probe's {pb.get('p99_ms') or 0:,.0f} ms, but the slowest request took "
                             f"{max(c['max_ms'], pb.get('max_ms') or 0):,.0f} ms: a few connections still waited "
                             "for the slot's next worker.")
            else:
                pm = churn_pick([x for x in runs if x["scenario"] == "down"], "pm2 -i 2", c["connection"])
                notes.append(f"Slot held down ({name}, {c['connection']}): wrk's p99 is {c['p99_ms']:,.0f} ms but the "
                             f"probe's is {pb.get('p99_ms') or 0:,.0f} ms (Node `cluster` "
                             f"{(n.get('probe') or {}).get('p99_ms') or 0:,.0f} ms"
                             + (f", PM2 {(pm.get('probe') or {}).get('p99_ms') or 0:,.0f} ms" if pm else "")
                             + "). No connection waited for the dead worker; the one worker left serves wrk's 64 "
                             "connections and the probe alone for the seconds the slot is held down, and the "
                             "probe's new connections queue behind that load. Node `cluster` and PM2 had their "
                             f"second worker back within {back * 1000:,.0f} ms.")
    except (KeyError, TypeError):
        pass
    try:
        o = r["output"]["configs"]
        if o["prefix"]["init_cpu_pct"] > 5:
            notes.append(f"`--worker-output prefix` puts the init on the data path: {o['prefix']['init_cpu_pct']:.0f}% of "
                         f"one CPU at {o['prefix']['rps']:,.0f} lines/s, "
                         f"{o['prefix']['init_writes_per_request']:.2f} `write(2)` per line.")
    except (KeyError, TypeError):
        pass
    return notes


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
      "`ceiling.py`, `collector.py`, `orphans.py`, `report.lua`, `variant-server.js` (the seed server that exits after "
      "N requests or logs a line per request).")


if __name__ == "__main__":
    main()
