//! `--worker-output prefix|json`: each worker's stdout and stderr relayed line by line, never
//! torn or interleaved mid-line, long lines cut at a bound, nothing lost when a worker dies
//! right after writing, and a worker that floods never holds up the init.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{http_get, wait_for, Init, Mode};

const LONG: Duration = Duration::from_secs(20);

/// Runs `cluster-init OPTS -- sh -c SCRIPT` with stdout captured; returns the init and a
/// thread that collects its stdout lines until it closes.
fn start(
    mode: Mode,
    opts: &[&str],
    script: &str,
) -> Option<(Init, std::thread::JoinHandle<Vec<String>>)> {
    let mut args: Vec<&str> = opts.to_vec();
    args.extend(["--", "sh", "-c", script]);
    let mut init = Init::start_with(mode, &args, &[], |cmd| {
        cmd.stdout(Stdio::piped());
    })?;
    let out = init.take_stdout().expect("piped stdout");
    let lines = std::thread::spawn(move || {
        BufReader::new(out)
            .split(b'\n')
            .map_while(Result::ok)
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .collect()
    });
    Some((init, lines))
}

/// A reader that stalls for 2 s (the pipe fills, the init queues), then reads: the lines `keep`
/// accepts, counted until `want` of them arrived or 12 s passed.
fn lines_after_a_pause(
    stream: impl std::io::Read + Send + 'static,
    want: usize,
    keep: fn(&[u8]) -> bool,
) -> usize {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            if keep(&line) && tx.send(()).is_err() {
                return;
            }
        }
    });
    let mut lines = 0;
    let end = Instant::now() + Duration::from_secs(12);
    while lines < want && Instant::now() < end {
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            lines += 1;
        }
    }
    lines
}

#[test]
fn prefix_mode_relays_every_line_of_both_streams_with_its_slot() {
    for mode in [Mode::Pid1, Mode::Subreaper] {
        let Some((mut init, out)) = start(
            mode,
            &["-w", "2", "--restart", "never", "--worker-output", "prefix"],
            "for i in 1 2 3; do echo out $CLUSTER_WORKER_ID $i; echo err $CLUSTER_WORKER_ID $i >&2; done",
        ) else {
            return;
        };
        assert_eq!(init.wait(LONG), Some(0));
        let mut out = out.join().unwrap();
        out.sort();
        let want: Vec<String> = (0..2)
            .flat_map(|w| (1..=3).map(move |i| format!("[{w}] out {w} {i}")))
            .collect();
        assert_eq!(out, want, "{mode:?}");
        let log = init.log();
        for w in 0..2 {
            for i in 1..=3 {
                assert!(
                    log.lines().any(|l| l == format!("[{w}] err {w} {i}")),
                    "{log}"
                );
            }
        }
    }
}

#[test]
fn json_mode_wraps_each_line_with_slot_pid_generation_and_stream() {
    let Some((mut init, out)) = start(
        Mode::Subreaper,
        &["-w", "1", "--restart", "never", "--worker-output", "json"],
        "echo 'a \"quoted\" \\ line'; echo $$ > /dev/null",
    ) else {
        return;
    };
    assert_eq!(init.wait(LONG), Some(0));
    let out = out.join().unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out[0]).expect("one JSON object");
    assert_eq!(v["message"], "a \"quoted\" \\ line");
    assert_eq!(v["slot"], 0);
    assert_eq!(v["generation"], 1);
    assert_eq!(v["stream"], "stdout");
    assert!(v["pid"].is_i64());
}

#[test]
fn lines_of_busy_workers_are_never_torn_or_interleaved() {
    // Four workers each write 2000 lines of 300 bytes as fast as they can; every line must come
    // out whole, its payload intact.
    let script = "i=0; pad=$(printf '%0280d' 0); while [ $i -lt 2000 ]; do echo \"w$CLUSTER_WORKER_ID n$i $pad\"; i=$((i+1)); done";
    let Some((mut init, out)) = start(
        Mode::Subreaper,
        &["-w", "4", "--restart", "never", "--worker-output", "prefix"],
        script,
    ) else {
        return;
    };
    assert_eq!(init.wait(LONG), Some(0));
    let out = out.join().unwrap();
    let pad = "0".repeat(280);
    let mut seen = std::collections::HashSet::new();
    for line in &out {
        let mut f = line.splitn(4, ' ');
        let (slot, w, n, p) = (f.next(), f.next(), f.next(), f.next());
        let slot = slot.and_then(|s| s.strip_prefix('[')?.strip_suffix(']'));
        assert!(
            slot.is_some() && w == Some(&format!("w{}", slot.unwrap())) && p == Some(&pad),
            "a torn line: {line:?}"
        );
        seen.insert((slot.unwrap().to_string(), n.unwrap().to_string()));
    }
    assert_eq!(seen.len(), 8000, "{} distinct lines of 8000", seen.len());
}

#[test]
fn a_long_line_is_cut_into_pieces_that_add_up_to_it() {
    let Some((mut init, out)) = start(
        Mode::Subreaper,
        &["-w", "1", "--restart", "never", "--worker-output", "prefix"],
        "head -c 10000 /dev/zero | tr '\\0' x; echo",
    ) else {
        return;
    };
    assert_eq!(init.wait(LONG), Some(0));
    let out = out.join().unwrap();
    assert!(out.len() >= 3, "{} pieces", out.len());
    let joined: String = out
        .iter()
        .map(|l| l.strip_prefix("[0] ").expect("prefixed"))
        .collect();
    assert_eq!(joined, "x".repeat(10000));
    assert!(out.iter().all(|l| l.len() <= 4096));
}

#[test]
fn what_a_worker_writes_just_before_it_dies_is_relayed() {
    let Some((mut init, out)) = start(
        Mode::Pid1,
        &["-w", "1", "--restart", "never", "--worker-output", "prefix"],
        "i=0; while [ $i -lt 500 ]; do echo last words $i; i=$((i+1)); done; kill -9 $$",
    ) else {
        return;
    };
    assert_eq!(init.wait(LONG), Some(137));
    let out = out.join().unwrap();
    assert_eq!(out.len(), 500, "{} lines of 500", out.len());
    assert_eq!(out.last().map(String::as_str), Some("[0] last words 499"));
}

#[test]
fn a_flooding_worker_never_holds_up_the_init_or_the_other_workers() {
    let admin = format!("127.0.0.1:{}", common::free_port());
    // Slot 0 writes without end; slot 1 writes one line a second.
    let script = "if [ $CLUSTER_WORKER_ID = 0 ]; then exec yes flood; fi; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    let Some((mut init, out)) = start(
        Mode::Subreaper,
        &[
            "-w",
            "2",
            "--worker-output",
            "prefix",
            "--admin-listen",
            &admin,
        ],
        script,
    ) else {
        return;
    };
    wait_for(LONG, || {
        http_get(&admin, "/livez", Duration::from_secs(1)).ok()
    })
    .expect("admin up");
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(
            http_get(&admin, "/livez", Duration::from_secs(2)).map(|r| r.0),
            Ok(200)
        );
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    init.signal(libc::SIGTERM);
    assert!(
        init.wait(Duration::from_secs(5)).is_some(),
        "no stop under the flood"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let out = out.join().unwrap();
    let ticks = out.iter().filter(|l| l.starts_with("[1] tick ")).count();
    assert!(ticks >= 5, "slot 1 was drowned: {ticks} ticks");
    // `yes` is killed in the middle of a write: the last bytes it wrote may end mid-line, and
    // that last piece is relayed as the worker's last line. Any other piece is a torn line.
    let last_flood = out.iter().rposition(|l| l.starts_with("[0] "));
    let torn: Vec<_> = out
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            let whole = *l == "[0] flood" || l.starts_with("[1] tick ");
            let cut_at_kill = Some(*i) == last_flood && "[0] flood".starts_with(l.as_str());
            !whole && !cut_at_kill
        })
        .take(5)
        .collect();
    assert!(torn.is_empty(), "torn lines: {torn:?}");
}

/// A reader that stops for a while (a log shipper's hiccup): the lines it missed all arrive
/// once it reads again, while the worker writes nothing more, with no line to push them out.
#[test]
fn lines_queued_while_the_reader_paused_go_out_when_it_reads_again() {
    // 400 lines of about 300 bytes, then silence: what the pipe out cannot hold waits in the
    // init's queue, below the mark at which relays stop reading.
    let script = "i=0; pad=$(printf '%0280d' 0); while [ $i -lt 400 ]; do echo \"n$i $pad\"; i=$((i+1)); done; exec sleep 60";
    let mut args = vec!["-w", "1", "--worker-output", "prefix", "--"];
    args.extend(["sh", "-c", script]);
    let Some(mut init) = Init::start_with(Mode::Subreaper, &args, &[], |cmd| {
        cmd.stdout(Stdio::piped());
    }) else {
        return;
    };
    let out = init.take_stdout().expect("piped stdout");
    let lines = lines_after_a_pause(out, 400, |_| true);
    init.signal(libc::SIGTERM);
    let _ = init.wait(LONG);
    assert_eq!(
        lines,
        400,
        "{lines} of 400 lines arrived; log:\n{}",
        init.log()
    );
}

/// One stream stuck (stdout never read) must not hold up the other: stderr's lines all arrive
/// once its reader, paused for a while, reads again.
#[test]
fn a_stuck_stdout_does_not_hold_up_stderr() {
    // Slot 0 fills stdout and more; slot 1 writes 400 lines of about 1 KB to stderr; then both
    // stay quiet.
    let script = "pad=$(printf '%01000d' 0); i=0; if [ $CLUSTER_WORKER_ID = 0 ]; then while [ $i -lt 200 ]; do echo \"o$i $pad\"; i=$((i+1)); done; else while [ $i -lt 400 ]; do echo \"e$i $pad\" >&2; i=$((i+1)); done; fi; exec sleep 60";
    let (err_r, err_w) = nix::unistd::pipe().expect("pipe");
    let args = [
        "-w",
        "2",
        "--worker-output",
        "prefix",
        "--",
        "sh",
        "-c",
        script,
    ];
    let Some(mut init) = Init::start_with(Mode::Subreaper, &args, &[], move |cmd| {
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(err_w));
    }) else {
        return;
    };
    // Held open, never read.
    let _stdout = init.take_stdout().expect("piped stdout");
    let lines = lines_after_a_pause(std::fs::File::from(err_r), 400, |l| l.starts_with(b"[1] e"));
    init.signal(libc::SIGTERM);
    // Stopping never waits for the stuck stream.
    assert!(init.wait(LONG).is_some(), "no stop with stdout stuck");
    assert_eq!(lines, 400, "{lines} of 400 stderr lines arrived");
}
