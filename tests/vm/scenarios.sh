#!/bin/sh
# /init of the scenarios VM (tests/vm.rs): a cgroup v2 kernel with cpu, cpuset, memory and pids
# delegated, where each scenario runs the musl cluster-init (/bin/cluster-init) with the static
# fixture (/bin/citest) in a cgroup made for it, then powers the machine off.
#
# Results go to the second serial port (/dev/ttyS1), which nothing else writes to, one line per
# measurement: `CITEST <scenario> key=value ...`; a value that starts with `{` (a JSON plan or
# log line) runs to the end of its line. The first port (the console) gets the kernel's messages
# and each scenario's cluster-init log, for the failure messages.
# CITEST_ONLY=a,b (kernel command line) runs only those scenarios.

export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup

CI=/bin/cluster-init
T=/bin/citest
CG=/sys/fs/cgroup

result() { echo "CITEST $*" > /dev/ttyS1; }

# Whether pid $1 still runs (our own child stays a zombie until `wait`).
running() {
    s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)
    [ -n "$s" ] && [ "$s" != Z ]
}

# start_in CGROUP LOG ARGS...: cluster-init ARGS as a member of CGROUP, in the background ($!).
start_in() {
    g=$1 log=$2
    shift 2
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$g" $CI "$@" 2>"$log" &
}

# in_cgroup CGROUP CMD...: CMD as a member of CGROUP, in the foreground.
in_cgroup() {
    g=$1
    shift
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$g" "$@"
}

# stop PID: SIGTERM, then SIGKILL after 15 s; the exit status in $code. (Not in a $(...):
# a subshell cannot wait for its parent's children.)
stop() {
    kill -TERM "$1"
    i=0
    while running "$1" && [ $i -lt 150 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    running "$1" && kill -KILL "$1"
    wait "$1"
    code=$?
}

# waitline FILE STRING SECONDS: the first line containing STRING, waiting for it; else `none`.
waitline() {
    i=0
    while ! grep -qF -- "$2" "$1" && [ $i -lt $(($3 * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    l=$(grep -F -- "$2" "$1" | head -1)
    echo "${l:-none}"
}

dump() {
    echo "--- log of $1 ---"
    cat "$2"
    echo "--- end of $1 ---"
}

# A limit on a parent, none on its child: the parent's cpu.max caps the child.
s_nested_cpu_max() {
    mkdir $CG/nest
    echo "200000 100000" > $CG/nest/cpu.max
    echo +cpu > $CG/nest/cgroup.subtree_control
    mkdir $CG/nest/child
    in_cgroup $CG/nest/child $CI --dry-run -- $T idle > /tmp/nest.plan 2>/tmp/nest.log
    start_in $CG/nest/child /tmp/nest-run.log --log-format json -- $T idle
    p=$!
    w=$($T waitworkers $p 2 10000)
    stop $p
    dump nested_cpu_max /tmp/nest-run.log
    result nested_cpu_max child_cpu_max=$(tr ' ' _ < $CG/nest/child/cpu.max) workers=${w% *} exit_code=$code
    result nested_cpu_max plan=$(cat /tmp/nest.plan)
}

# Two of the four CPUs in the cgroup's cpuset.
s_cpuset() {
    mkdir $CG/cs
    echo 0-1 > $CG/cs/cpuset.cpus
    in_cgroup $CG/cs $CI --dry-run -- $T idle > /tmp/cs.plan 2>/tmp/cs.log
    start_in $CG/cs /tmp/cs-run.log --log-format json -- $T idle
    p=$!
    w=$($T waitworkers $p 2 10000)
    stop $p
    dump cpuset /tmp/cs-run.log
    result cpuset effective=$(cat $CG/cs/cpuset.cpus.effective) workers=${w% *} exit_code=$code
    result cpuset plan=$(cat /tmp/cs.plan)
}

# What a container sees: a cgroup namespace rooted at its cgroup (1.5 CPUs), a cgroupfs mounted
# inside it, and the process in a child of that root (without the cpu controller: the limit is
# only on the root).
s_cgroup_ns() {
    mkdir $CG/ctr
    echo "150000 100000" > $CG/ctr/cpu.max
    inside=$($T cgns $CG/ctr app /bin/cat /proc/self/cgroup)
    $T cgns $CG/ctr app $CI --dry-run -- $T idle > /tmp/ns.plan 2>/tmp/ns.log
    dump cgroup_ns /tmp/ns.log
    result cgroup_ns inside_cgroup=$inside
    result cgroup_ns plan=$(cat /tmp/ns.plan)
}

# A worker that outgrows memory.max is killed by the kernel's OOM killer.
s_oom() {
    mkdir $CG/oom
    echo 48M > $CG/oom/memory.max
    echo 0 > $CG/oom/memory.swap.max 2>/dev/null
    start_in $CG/oom /tmp/oom.log --workers 1 --log-format json --backoff-initial 10s -- $T hog 256
    p=$!
    line=$(waitline /tmp/oom.log "worker exited" 15)
    kills=$(grep oom_kill $CG/oom/memory.events | cut -d' ' -f2)
    stop $p
    dump oom /tmp/oom.log
    result oom oom_kill=$kills exit_code=$code
    result oom exit_line=$line
}

# memory.oom.group = 1: one OOM kill would end every process of the cgroup.
s_oom_group() {
    mkdir $CG/oomg
    echo 1 > $CG/oomg/memory.oom.group
    start_in $CG/oomg /tmp/oomg.log --workers 1 --log-format json -- $T idle
    p=$!
    w=$($T waitworkers $p 1 10000)
    stop $p
    dump oom_group /tmp/oomg.log
    line=$(grep -F memory.oom.group /tmp/oomg.log | head -1)
    result oom_group workers=${w% *} exit_code=$code
    result oom_group warn_line=${line:-none}
}

# pids.max 3 leaves room for cluster-init (one task per thread) and 2 of its 4 workers; then it
# is raised.
s_pids_max() {
    mkdir $CG/pids
    echo 3 > $CG/pids/pids.max
    start_in $CG/pids /tmp/pids.log --workers 4 --log-format json --backoff-initial 200ms --backoff-max 1s -- $T idle
    p=$!
    w=$($T waitworkers $p 2 10000)
    line=$(waitline /tmp/pids.log spawn_failed 10)
    sleep 1
    failed=$(grep -c spawn_failed /tmp/pids.log)
    at_limit=$($T workers $p)
    # Threads count against pids.max too: what is left of the 3 is the room for workers.
    threads=$(sed -n 's/^Threads:[[:space:]]*//p' /proc/$p/status)
    running $p && alive=yes || alive=no
    refused=$(grep max $CG/pids/pids.events | cut -d' ' -f2)
    echo max > $CG/pids/pids.max
    after=$($T waitworkers $p 4 15000)
    stop $p
    dump pids_max /tmp/pids.log
    result pids_max pids_max=3 init_threads=$threads workers_at_limit=$at_limit forks_refused=$refused spawn_failed_lines=$failed init_alive=$alive workers_after_raise=${after% *} recovery_ms=${after#* } exit_code=$code
    result pids_max spawn_failed_line=$line
}

# The live budget: cpu.max 1 -> 3 -> 2 CPUs while the pool runs.
s_live_cpu() {
    mkdir $CG/lb
    echo "100000 100000" > $CG/lb/cpu.max
    start_in $CG/lb /tmp/lb.log --workers max --budget-interval 500ms --log-format json -- $T idle
    p=$!
    a=$($T waitworkers $p 1 10000)
    echo "300000 100000" > $CG/lb/cpu.max
    b=$($T waitworkers $p 3 10000)
    echo "200000 100000" > $CG/lb/cpu.max
    c=$($T waitworkers $p 2 10000)
    stop $p
    dump live_cpu /tmp/lb.log
    result live_cpu cpus=1,3,2 workers=${a% *},${b% *},${c% *} ms=${a#* },${b#* },${c#* } exit_code=$code
}

# The live budget by memory: 2 CPUs, memory.max 400M, 300M per worker; then 700M.
s_live_memory() {
    mkdir $CG/lm
    echo "200000 100000" > $CG/lm/cpu.max
    echo 400M > $CG/lm/memory.max
    args="--workers max --worker-memory 300M --budget-interval 500ms --log-format json"
    in_cgroup $CG/lm $CI $args --dry-run -- $T idle > /tmp/lm.plan 2>/dev/null
    start_in $CG/lm /tmp/lm.log $args -- $T idle
    p=$!
    a=$($T waitworkers $p 1 10000)
    echo 700M > $CG/lm/memory.max
    b=$($T waitworkers $p 2 10000)
    stop $p
    dump live_memory /tmp/lm.log
    result live_memory memory_max=400M,700M workers=${a% *},${b% *} ms=${a#* },${b#* } exit_code=$code
    result live_memory plan=$(cat /tmp/lm.plan)
}

# The runc tier on cgroup v2: a scratch-like bundle (/runc/config.json, made by tests/vm.rs from
# runc's default spec: read-only root, uid 65532, 1.5 CPUs, its own cgroup namespace as containerd
# gives on cgroup v2) running cluster-init --ready notify with the fixture server; then a worker
# SIGKILLed from outside, and real-time signals through `runc kill`.
s_runc_v2() {
    if [ ! -x /bin/runc ]; then
        result runc_v2 skipped=no_runc_in_the_initramfs
        return
    fi
    mkdir -p /run /tmp/bundle/rootfs
    mount -t tmpfs tmpfs /run
    cp /bin/cluster-init /bin/citest /tmp/bundle/rootfs/
    cp /runc/config.json /tmp/bundle/config.json
    # --no-pivot: the VM's root is the initramfs, which pivot_root refuses.
    runc run --no-pivot --bundle /tmp/bundle ci > /tmp/runc.out 2> /tmp/runc.log &
    rp=$!
    cpid= answer=
    i=0
    while [ -z "$cpid" ] && [ $i -lt 300 ] && running $rp; do
        st=$(runc state ci 2>/dev/null)
        echo "$st" | grep -qF '"status": "running"' && cpid=$(echo "$st" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p')
        [ -z "$cpid" ] && sleep 0.1
        i=$((i + 1))
    done
    ran=no w=none cpu_max=none
    if [ -n "$cpid" ]; then
        ran=yes
        cpu_max=$(tr ' ' _ < $CG/runc-ci/cpu.max)
        w=$($T waitworkers "$cpid" 1 15000)
    fi
    ready=no
    i=0
    while [ -n "$cpid" ] && [ $i -lt 150 ] && running $rp; do
        if nsenter -t "$cpid" -n wget -q -O /dev/null http://127.0.0.1:9090/readyz 2>/dev/null; then
            ready=yes
            break
        fi
        sleep 0.1
        i=$((i + 1))
    done
    [ -n "$cpid" ] && answer=$(nsenter -t "$cpid" -n wget -q -O- http://127.0.0.1:8080/ 2>/dev/null | tr ' ' ,)
    # A worker SIGKILLed from outside the container is replaced; then real-time signals sent with
    # `runc kill` reach the new one, each instance.
    restarted=no rt=none
    if [ -n "$cpid" ] && [ "$ready" = yes ]; then
        old=$(tr -d ' ' < /proc/$cpid/task/$cpid/children)
        kill -KILL "$old"
        new=$old
        i=0
        while [ $i -lt 100 ] && { [ -z "$new" ] || [ "$new" = "$old" ]; }; do
            sleep 0.1
            new=$(tr -d ' ' < /proc/$cpid/task/$cpid/children)
            i=$((i + 1))
        done
        [ -n "$new" ] && [ "$new" != "$old" ] && restarted=yes
        # The replacement counts from its start: wait until it answers, then signal it.
        i=0
        until nsenter -t "$cpid" -n wget -q -O /dev/null http://127.0.0.1:8080/ 2>/dev/null || [ $i -ge 50 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        runc kill ci 36 && runc kill ci 36 && runc kill ci 34
        i=0
        while [ $i -lt 50 ]; do
            rt=$(nsenter -t "$cpid" -n wget -q -O- http://127.0.0.1:8080/ 2>/dev/null | sed -n 's/.*rt=\([^ ]*\).*/\1/p')
            [ "$rt" = "34:1,36:2," ] && break
            sleep 0.1
            i=$((i + 1))
        done
    fi
    t0=$(cut -d' ' -f1 /proc/uptime)
    runc kill ci TERM 2>>/tmp/runc.log
    i=0
    while running $rp && [ $i -lt 200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    running $rp && runc kill ci KILL
    wait $rp
    code=$?
    stop_s=$(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $t0 }")
    runc delete --force ci 2>/dev/null
    dump runc_v2 /tmp/runc.log
    result runc_v2 ran=$ran cgroup_cpu_max=$cpu_max workers=${w% *} ready=$ready answer=${answer:-none} restarted=$restarted rt=${rt:-none} exit_code=$code stop_seconds=$stop_s
}

echo "+cpu +cpuset +memory +pids" > $CG/cgroup.subtree_control
result boot cpus=$(nproc) kernel=$(uname -r) controllers=$(tr ' ' , < $CG/cgroup.subtree_control)

for s in nested_cpu_max cpuset cgroup_ns oom oom_group pids_max live_cpu live_memory runc_v2; do
    if [ -n "$CITEST_ONLY" ] && ! echo ",$CITEST_ONLY," | grep -qF ",$s,"; then
        continue
    fi
    echo "=== scenario $s ==="
    t0=$(cut -d' ' -f1 /proc/uptime)
    s_$s
    result "$s" seconds=$(awk "BEGIN { print $(cut -d' ' -f1 /proc/uptime) - $t0 }")
done
result done ok=yes
sync
poweroff -f
