//! Property tests of every parser of outside input, through the public API: the command line's
//! specs (workers, durations, sizes, signals, readiness, CPU quantities, listen addresses), the
//! cgroup and mountinfo files `cpu::detect` reads, and the sd_notify datagrams workers send.
//!
//! Each parser gets three kinds of property: it never panics on arbitrary input; what it accepts
//! prints back (where a `Display` exists) to something that parses to the same value; and
//! generated inputs of a known shape parse to the value they were made from, or are refused.
//!
//! Not covered: `telemetry::config` (the `OTEL_*` variables) is a private module, reachable only
//! through a running binary.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_init::cli::{parse_duration, parse_size, ReadyMode, Sig, WorkerSpec};
use cluster_init::cpu::{self, Bound, CpuBudget, Rounding};
use cluster_init::listen::{parse_list, Address, Host, ListenSpec};
use cluster_init::notify::{self, Notice};
use cluster_init::pool::MAX_WORKERS;
use proptest::prelude::*;

/// A moderate case count: the whole file runs in a few seconds.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // No regression files written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that look like what people (and typos) put in flags: digits, units, signs, dots,
/// separators, brackets, with arbitrary Unicode now and then.
fn flag_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9a-zA-Z.+\\-:=/\\[\\] ,@_%]{0,24}",
        // Close to valid: a number, maybe a unit or a `max` form, maybe padded.
        3 => " ?[-+]?[0-9]{0,4}(\\.[0-9]{0,3})?(ms|s|m|h|K|Ki|M|G|TB|B|max|max-)?[0-9]{0,3} ?",
        1 => any::<String>(),
    ]
}

// ---------------------------------------------------------------------------------------------
// --workers
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn worker_spec_never_panics_and_what_it_accepts_prints_back(s in flag_like()) {
        if let Ok(spec) = s.parse::<WorkerSpec>() {
            prop_assert_eq!(spec.to_string().parse::<WorkerSpec>(), Ok(spec), "from {:?}", s);
            if let WorkerSpec::Count(n) = spec {
                prop_assert!(n >= 1, "{:?} gave 0 workers", s);
            }
        }
    }

    #[test]
    fn worker_counts_and_max_minus_k_parse_to_themselves(n in 1u32..=MAX_WORKERS, k in any::<u32>()) {
        prop_assert_eq!(n.to_string().parse(), Ok(WorkerSpec::Count(n)));
        prop_assert_eq!(format!(" {n} ").parse(), Ok(WorkerSpec::Count(n)));
        prop_assert_eq!(format!("max-{k}").parse(), Ok(WorkerSpec::Max { minus: k }));
        prop_assert_eq!(WorkerSpec::Count(n).to_string().parse(), Ok(WorkerSpec::Count(n)));
        prop_assert_eq!(
            WorkerSpec::Max { minus: k }.to_string().parse(),
            Ok(WorkerSpec::Max { minus: k })
        );
    }

    #[test]
    fn zero_negative_fractional_and_oversized_worker_counts_are_refused(
        n in any::<u32>(),
        frac in 1u32..1000,
        big in (u64::from(u32::MAX) + 1)..,
        over in (MAX_WORKERS + 1)..,
    ) {
        for bad in [
            format!("{over}"),
            "0".to_string(),
            "0".repeat(1 + n as usize % 5),
            format!("-{n}"),
            format!("+{n}"),
            format!("{n}.{frac}"),
            format!("{n}.0"),
            format!("{big}"),
            format!("max+{n}"),
            format!("max-{big}"),
            format!("max--{n}"),
            format!("max-{n}.5"),
            format!("{n}x"),
        ] {
            prop_assert!(bad.parse::<WorkerSpec>().is_err(), "{:?} accepted", bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations, --ready, sizes
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_never_panic_and_stay_bounded(s in flag_like()) {
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(d.as_secs_f64() <= 1e9, "{:?} gave {:?}", s, d);
        }
    }

    #[test]
    fn whole_units_parse_to_what_they_say(n in 0u64..200_000) {
        prop_assert_eq!(parse_duration(&format!("{n}ms")), Ok(Duration::from_millis(n)));
        prop_assert_eq!(parse_duration(&format!("{n}s")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(parse_duration(&format!("{n}m")), Ok(Duration::from_secs(n * 60)));
        prop_assert_eq!(parse_duration(&format!("{n}h")), Ok(Duration::from_secs(n * 3600)));
    }

    #[test]
    fn compound_durations_add_up(h in 0u64..100, m in 0u64..100, s in 0u64..100, ms in 0u64..1000) {
        let want = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(ms);
        let got = parse_duration(&format!("{h}h{m}m{s}s{ms}ms")).expect("well formed");
        // Summed in f64 seconds: allow a microsecond of rounding.
        prop_assert!(got.abs_diff(want) < Duration::from_micros(1), "{:?} != {:?}", got, want);
    }

    #[test]
    fn bare_non_zero_numbers_negatives_and_unknown_units_are_refused(
        n in 1u64..,
        unit in "[a-zA-Z]{1,3}",
    ) {
        prop_assert!(parse_duration(&n.to_string()).is_err(), "bare {} accepted", n);
        let negative = format!("-{n}s");
        prop_assert!(parse_duration(&negative).is_err(), "{} accepted", negative);
        if !["ms", "s", "m", "h"].contains(&unit.as_str()) {
            prop_assert!(parse_duration(&format!("{n}{unit}")).is_err(), "{}{} accepted", n, unit);
        }
    }

    #[test]
    fn ready_modes_never_panic_and_print_back(s in flag_like()) {
        if let Ok(mode) = s.parse::<ReadyMode>() {
            let printed = mode.to_string();
            let again = printed.parse::<ReadyMode>();
            prop_assert!(again.is_ok(), "{:?} -> {:?} does not parse", s, printed);
            // Display shows whole milliseconds; printing is stable from there on.
            prop_assert_eq!(again.unwrap().to_string(), printed);
        }
    }

    #[test]
    fn ready_after_whole_milliseconds_round_trips(n in 0u64..1_000_000_000) {
        let mode = ReadyMode::After(Duration::from_millis(n));
        prop_assert_eq!(mode.to_string().parse(), Ok(mode));
        prop_assert_eq!(format!("{n}ms").parse(), Ok(mode));
    }

    #[test]
    fn sizes_never_panic_and_stay_in_range(s in flag_like()) {
        if let Ok(bytes) = parse_size(&s) {
            prop_assert!((1..1_000_000_000_000_000_000).contains(&bytes), "{:?} gave {}", s, bytes);
        }
    }

    #[test]
    fn sizes_with_binary_units_are_exact(n in 1u64..1_000_000, bytes in 1u64..(1 << 53)) {
        prop_assert_eq!(parse_size(&bytes.to_string()), Ok(bytes));
        for (units, shift) in [(["K", "Ki", "KB"], 10), (["M", "Mi", "MB"], 20), (["G", "Gi", "GB"], 30)] {
            for unit in units {
                prop_assert_eq!(parse_size(&format!("{n}{unit}")), Ok(n << shift), "{}{}", n, unit);
            }
        }
    }

    #[test]
    fn negative_zero_and_unknown_sizes_are_refused(n in 1u64..1_000_000, unit in "[a-zA-Z]{1,3}") {
        let negative = format!("-{n}M");
        prop_assert!(parse_size(&negative).is_err(), "{} accepted", negative);
        prop_assert!(parse_size("0").is_err());
        let zero = format!("0{unit}");
        prop_assert!(parse_size(&zero).is_err(), "{} accepted", zero);
        let known = ["B", "K", "Ki", "KB", "k", "M", "Mi", "MB", "G", "Gi", "GB", "T", "Ti", "TB"];
        if !known.contains(&unit.as_str()) {
            prop_assert!(parse_size(&format!("{n}{unit}")).is_err(), "{}{} accepted", n, unit);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

fn signal_like() -> impl Strategy<Value = String> {
    prop_oneof![
        flag_like(),
        // The real-time forms, with offsets of every size and sign.
        (
            "(sig|SIG)?(RTMIN\\+|RTMAX-|rtmin\\+|rtmax-)",
            prop_oneof![
                any::<i32>(),
                -100i32..100,
                (0i32..100).prop_map(|k| i32::MAX - k),
                (0i32..100).prop_map(|k| i32::MIN + k),
            ],
        )
            .prop_map(|(prefix, n)| format!("{prefix}{n}")),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signals_never_panic_and_stay_deliverable(s in signal_like()) {
        if let Ok(Sig(n)) = s.parse::<Sig>() {
            let realtime = (cluster_init::signals::SIGRTMIN..=cluster_init::signals::SIGRTMAX).contains(&n);
            prop_assert!((1..32).contains(&n) || realtime, "{:?} gave signal {}", s, n);
            prop_assert!(n != libc::SIGSTOP, "{:?} gave SIGSTOP", s);
            // A real-time name names a real-time signal, never a standard one.
            let upper = s.to_ascii_uppercase();
            if upper.contains("RTMIN+") || upper.contains("RTMAX-") {
                prop_assert!(realtime, "{:?} gave the standard signal {}", s, n);
            }
        }
    }

    #[test]
    fn every_deliverable_signal_parses_by_number_and_by_name(
        n in prop_oneof![1i32..32, cluster_init::signals::SIGRTMIN..=cluster_init::signals::SIGRTMAX],
    ) {
        prop_assume!(n != libc::SIGSTOP);
        let name = Sig(n).name();
        prop_assert_eq!(n.to_string().parse(), Ok(Sig(n)));
        prop_assert_eq!(name.parse(), Ok(Sig(n)), "{}", name);
        prop_assert_eq!(name.to_ascii_lowercase().parse(), Ok(Sig(n)), "{}", name);
        prop_assert_eq!(name.trim_start_matches("SIG").parse(), Ok(Sig(n)), "{}", name);
        if n >= cluster_init::signals::SIGRTMIN {
            let back = cluster_init::signals::SIGRTMAX - n;
            prop_assert_eq!(format!("SIGRTMAX-{back}").parse(), Ok(Sig(n)));
        }
    }

    #[test]
    fn numbers_outside_the_signal_ranges_are_refused(n in any::<i32>()) {
        let deliverable = (1..32).contains(&n) || (cluster_init::signals::SIGRTMIN..=cluster_init::signals::SIGRTMAX).contains(&n);
        prop_assume!(!deliverable || n == libc::SIGSTOP);
        prop_assert!(n.to_string().parse::<Sig>().is_err(), "{} accepted", n);
    }
}

// ---------------------------------------------------------------------------------------------
// CPU quantities (--cpus)
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn quantities_never_panic_and_are_positive_and_finite(s in flag_like()) {
        if let Ok(q) = cpu::parse_quantity(&s) {
            prop_assert!(q.is_finite() && q > 0.0, "{:?} gave {}", s, q);
        }
    }

    #[test]
    fn millicores_are_thousandths_and_decimals_are_themselves(
        m in 1u64..1_000_000_000,
        whole in 0u32..1000,
        frac in 0u32..1000,
    ) {
        prop_assert_eq!(cpu::parse_quantity(&format!("{m}m")), Ok(m as f64 / 1000.0));
        let decimal = format!("{whole}.{frac:03}");
        let want: f64 = decimal.parse().unwrap();
        if want > 0.0 {
            prop_assert_eq!(cpu::parse_quantity(&decimal), Ok(want));
        } else {
            prop_assert!(cpu::parse_quantity(&decimal).is_err());
        }
    }

    #[test]
    fn negative_zero_exponent_and_signed_quantities_are_refused(m in 1u32.., e in 0u32..10) {
        for bad in [
            format!("-{m}"),
            format!("-{m}m"),
            format!("+{m}"),
            format!("{m}e{e}"),
            format!("{m}k"),
            format!("{m},5"),
            "0".to_string(),
            "0m".to_string(),
            format!("0.{}", "0".repeat(e as usize + 1)),
        ] {
            prop_assert!(cpu::parse_quantity(&bad).is_err(), "{:?} accepted", bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// --listen
// ---------------------------------------------------------------------------------------------

/// A listen address, built as a value.
fn address() -> impl Strategy<Value = Address> {
    let host_name = "[a-z0-9_-]{1,12}(\\.[a-z0-9_-]{1,12}){0,3}"
        .prop_filter("an IPv4 address is not a name", |h| {
            h.parse::<Ipv4Addr>().is_err()
        });
    prop_oneof![
        any::<u16>().prop_map(|port| Address::Tcp {
            host: Host::Any,
            port
        }),
        (any::<Ipv4Addr>(), any::<u16>()).prop_map(|(ip, port)| Address::Tcp {
            host: Host::Ip(IpAddr::V4(ip)),
            port
        }),
        (any::<Ipv6Addr>(), any::<u16>()).prop_map(|(ip, port)| Address::Tcp {
            host: Host::Ip(IpAddr::V6(ip)),
            port
        }),
        (host_name, any::<u16>()).prop_map(|(name, port)| Address::Tcp {
            host: Host::Name(name),
            port
        }),
        // No comma (the list separator) and no surrounding space (list items are trimmed).
        "/[!-~&&[^,]]{0,90}".prop_map(|p| Address::Unix(PathBuf::from(p))),
    ]
}

/// A listen spec, built as a value: names are printable ASCII without `:`, `/`, `=` or `,`.
fn listen_spec() -> impl Strategy<Value = ListenSpec> {
    (proptest::option::of("[!-~&&[^:/=,]]{1,20}"), address())
        .prop_map(|(name, addr)| ListenSpec { name, addr })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn listen_specs_never_panic_and_what_they_accept_prints_back(s in flag_like()) {
        if let Ok(spec) = s.parse::<ListenSpec>() {
            prop_assert_eq!(spec.to_string().parse::<ListenSpec>(), Ok(spec.clone()), "from {:?}", s);
            prop_assert!(!spec.fd_name().is_empty() && !spec.fd_name().contains(':'));
        }
        if let Ok(list) = parse_list(&s) {
            prop_assert!(list.len() <= s.split(',').count());
        }
    }

    #[test]
    fn generated_listen_specs_round_trip(spec in listen_spec()) {
        let printed = spec.to_string();
        prop_assert_eq!(printed.parse::<ListenSpec>(), Ok(spec), "printed as {:?}", printed);
    }

    #[test]
    fn generated_listen_lists_round_trip(specs in proptest::collection::vec(listen_spec(), 0..6)) {
        let joined = specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" , ");
        prop_assert_eq!(parse_list(&format!(",{joined},")), Ok(specs), "from {:?}", joined);
    }

    #[test]
    fn malformed_listen_addresses_are_refused(port in any::<u16>(), big in 65536u32.., name in "[a-z]{1,8}") {
        for bad in [
            format!("127.0.0.1:{big}"),
            format!(":{big}"),
            format!("{big}"),
            format!("::1:{port}"),
            format!("[::1]{port}"),
            format!("[{name}]:{port}"),
            format!("/run/{name}.sock"),
            format!("unix:@{name}"),
            "unix:".to_string(),
            format!("unix:/{}", "x".repeat(200)),
            format!("={port}"),
            format!("{name} x={port}"),
            format!("{name}é=:{port}"),
            format!("{name}:+{port}"),
            format!("{name}:"),
            format!("{name}..x:{port}"),
        ] {
            prop_assert!(bad.parse::<ListenSpec>().is_err(), "{:?} accepted", bad);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sd_notify datagrams
// ---------------------------------------------------------------------------------------------

/// One assignment as the notice it should become and the line a worker would send.
fn notice() -> impl Strategy<Value = (Notice, String)> {
    let known = [
        "READY",
        "STOPPING",
        "RELOADING",
        "WATCHDOG",
        "STATUS",
        "MAINPID",
        "ERRNO",
    ];
    prop_oneof![
        Just((Notice::Ready, "READY=1".to_string())),
        Just((Notice::Stopping, "STOPPING=1".to_string())),
        Just((Notice::Reloading, "RELOADING=1".to_string())),
        Just((Notice::Watchdog, "WATCHDOG=1".to_string())),
        Just((Notice::WatchdogTrigger, "WATCHDOG=trigger".to_string())),
        "[^\n]{0,40}".prop_map(|s| (Notice::Status(s.clone()), format!("STATUS={s}"))),
        (1..=i32::MAX).prop_map(|p| (Notice::MainPid(p), format!("MAINPID={p}"))),
        (0..=i32::MAX).prop_map(|e| (Notice::Errno(e), format!("ERRNO={e}"))),
        ("[A-Z_]{1,16}", "[^\n]{0,20}")
            .prop_filter("a known key", move |(k, _)| !known.contains(&k.as_str()))
            .prop_map(|(k, v)| {
                let line = format!("{k}={v}");
                (Notice::Other(line.clone()), line)
            }),
    ]
}

/// A line the parser must skip: no `=`, an empty key, a known key with a value we cannot use,
/// or not UTF-8.
fn junk_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[^\n=]{0,20}".prop_map(String::into_bytes),
        "=[^\n]{0,10}".prop_map(String::into_bytes),
        "(READY|STOPPING|RELOADING|WATCHDOG)=(0|2|yes|)".prop_map(String::into_bytes),
        "MAINPID=(0|-[0-9]{1,5}|abc|99999999999)".prop_map(String::into_bytes),
        "ERRNO=(-[1-9][0-9]{0,4}|x|)".prop_map(String::into_bytes),
        Just(b"STATUS=\xff\xfe".to_vec()),
        Just(b"READY=1\xc0".to_vec()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let notices = notify::parse(&bytes);
        prop_assert!(notices.len() <= bytes.split(|&b| b == b'\n').count());
    }

    #[test]
    fn valid_assignments_come_out_in_order_between_junk(
        lines in proptest::collection::vec(
            prop_oneof![
                3 => notice().prop_map(|(n, l)| (Some(n), l.into_bytes())),
                1 => junk_line().prop_map(|l| (None, l)),
            ],
            0..12,
        ),
        trailing_newline in any::<bool>(),
    ) {
        let mut datagram = lines.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>().join(&b'\n');
        if trailing_newline {
            datagram.push(b'\n');
        }
        let want: Vec<Notice> = lines.into_iter().filter_map(|(n, _)| n).collect();
        prop_assert_eq!(notify::parse(&datagram), want, "{:?}", String::from_utf8_lossy(&datagram));
    }
}

// ---------------------------------------------------------------------------------------------
// The CPU budget from /proc and /sys fixture trees
// ---------------------------------------------------------------------------------------------

const MOUNTINFO: &str = "proc/self/mountinfo";
const CGROUP: &str = "proc/self/cgroup";
/// The files detection reads; every warning names one of them.
const READ: [&str; 6] = [
    "/proc/self/mountinfo",
    "/proc/self/cgroup",
    "cpu.max",
    "cpu.cfs_quota_us",
    "cpu.cfs_period_us",
    "cpuset.cpus.effective",
];
const NOTHING_FOUND: &str = "no affinity mask and no cgroup quota found: assuming 1 CPU";

/// Cgroup paths as `/proc/self/cgroup` and mountinfo roots show them, odd ones included.
fn cgroup_path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "/", "/a", "/a/b", "/kubepods/pod1", "/kubepods/pod1/ctr", "/ctr", "/a/../b",
            "/./a", "a", "", "//a", "/a b", "/a\\040b", "/docker/abc",
        ])
        .prop_map(str::to_string),
        1 => "[ -~]{0,16}",
    ]
}

/// Where mountinfo says a hierarchy is mounted.
fn mount_point() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu",
            "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpuacct", "/", "sys", "/sys/fs/cgroup/",
        ])
        .prop_map(str::to_string),
        1 => "/[a-z/]{0,12}",
    ]
}

/// A mountinfo line: a well-formed cgroup mount, another filesystem, or junk.
fn mount_line() -> impl Strategy<Value = String> {
    let options = prop::sample::select(vec![
        "cpu",
        "cpu,cpuacct",
        "cpuacct",
        "memory",
        "",
        "rw,cpu",
    ]);
    prop_oneof![
        3 => (cgroup_path(), mount_point()).prop_map(|(root, point)| {
            format!("30 23 0:26 {root} {point} rw,relatime shared:4 - cgroup2 cgroup2 rw")
        }),
        3 => (cgroup_path(), mount_point(), options).prop_map(|(root, point, opts)| {
            format!("32 31 0:29 {root} {point} rw,nosuid master:1 - cgroup cgroup rw,{opts}")
        }),
        1 => Just("22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw".to_string()),
        1 => "[0-9a-z :/,-]{0,40}",
        1 => "[ -~]{0,30} - (cgroup|cgroup2)( [ -~]{0,10}){0,2}",
        1 => any::<String>(),
    ]
}

/// A `/proc/self/cgroup` line.
fn cgroup_line() -> impl Strategy<Value = String> {
    let controllers = prop::sample::select(vec![
        "cpu",
        "cpu,cpuacct",
        "cpuacct,cpu",
        "memory",
        "name=systemd",
    ]);
    prop_oneof![
        3 => cgroup_path().prop_map(|p| format!("0::{p}")),
        3 => (1u8..12, controllers, cgroup_path()).prop_map(|(n, c, p)| format!("{n}:{c}:{p}")),
        1 => "[0-9a-z:/,]{0,20}",
        1 => any::<String>(),
    ]
}

/// Contents of a limit file: well-formed, the "no limit" spellings, extremes, junk, not UTF-8.
fn limit_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (1u64..10_000_000, 1u64..10_000_000).prop_map(|(q, p)| format!("{q} {p}\n").into_bytes()),
        (1u64..10_000_000).prop_map(|n| format!("{n}\n").into_bytes()),
        (any::<u64>(), any::<u64>()).prop_map(|(q, p)| format!("{q} {p}").into_bytes()),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        prop::sample::select(vec![
            "max 100000\n",
            "max\n",
            "-1\n",
            "0\n",
            "0 100000",
            "100000 0",
            "",
            " \n",
            "-5",
            "1 2 3",
            "max max",
            "0-3,8\n",
            "0-",
            "3-1",
            "1,,2",
            "0-4294967295",
            "0-4294967294",
            "18446744073709551615 1",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec((0u32..64, 0u32..8), 1..5).prop_map(|ranges| {
            let list: Vec<String> = ranges
                .iter()
                .map(|(a, n)| format!("{a}-{}", a + n))
                .collect();
            list.join(",").into_bytes()
        }),
        "[ -~]{0,20}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..16),
    ]
}

/// A limit file somewhere in the tree, or a directory where the file should be.
fn limit_file() -> impl Strategy<Value = (String, &'static str, Option<Vec<u8>>)> {
    let dirs = prop::sample::select(vec![
        "sys/fs/cgroup",
        "sys/fs/cgroup/a",
        "sys/fs/cgroup/a/b",
        "sys/fs/cgroup/b",
        "sys/fs/cgroup/ctr",
        "sys/fs/cgroup/kubepods/pod1/ctr",
        "sys/fs/cgroup/unified",
        "sys/fs/cgroup/unified/a",
        "sys/fs/cgroup/cpu",
        "sys/fs/cgroup/cpu/a",
        "sys/fs/cgroup/cpu/a/b",
        "sys/fs/cgroup/cpu,cpuacct",
        "sys/fs/cgroup/cpu,cpuacct/docker/abc",
        "sys/fs/cgroup/a b",
        "sys",
    ]);
    let names = prop::sample::select(vec![
        "cpu.max",
        "cpu.cfs_quota_us",
        "cpu.cfs_period_us",
        "cpuset.cpus.effective",
    ]);
    (
        dirs.prop_map(str::to_string),
        names,
        prop_oneof![9 => limit_text().prop_map(Some), 1 => Just(None)],
    )
}

#[derive(Debug, Clone)]
struct Tree {
    mountinfo: Option<Vec<String>>,
    cgroup: Option<Vec<String>>,
    files: Vec<(String, &'static str, Option<Vec<u8>>)>,
}

/// Any tree: mostly one that is nearly right (a cgroup mount that shows our cgroup, limit files
/// on the walk up from it, a few junk lines), so the limit parsers are reached; sometimes one
/// of unrelated pieces.
fn tree() -> impl Strategy<Value = Tree> {
    prop_oneof![3 => nearly_right_tree(), 1 => loose_tree()]
}

fn loose_tree() -> impl Strategy<Value = Tree> {
    use proptest::collection::vec;
    (
        prop_oneof![9 => vec(mount_line(), 0..6).prop_map(Some), 1 => Just(None)],
        prop_oneof![9 => vec(cgroup_line(), 0..4).prop_map(Some), 1 => Just(None)],
        vec(limit_file(), 0..10),
    )
        .prop_map(|(mountinfo, cgroup, files)| Tree {
            mountinfo,
            cgroup,
            files,
        })
}

fn nearly_right_tree() -> impl Strategy<Value = Tree> {
    use proptest::collection::vec;
    let components = vec(
        prop::sample::select(vec!["a", "b", "kubepods", "pod1", "ctr"]),
        0..4,
    );
    let names = prop::sample::select(vec![
        "cpu.max",
        "cpu.cfs_quota_us",
        "cpu.cfs_period_us",
        "cpuset.cpus.effective",
    ]);
    let limit = prop_oneof![9 => limit_text().prop_map(Some), 1 => Just(None)];
    (
        any::<bool>(),
        components,
        0usize..3,
        vec(mount_line(), 0..3),
        vec(cgroup_line(), 0..2),
        vec((any::<prop::sample::Index>(), names, limit), 0..8),
    )
        .prop_map(|(v1, comps, root_len, mut mounts, mut cgroups, limits)| {
            let root_len = root_len.min(comps.len());
            let path = format!("/{}", comps.join("/"));
            let root = format!("/{}", comps[..root_len].join("/"));
            let (point, fstype, options, controllers) = if v1 {
                ("/sys/fs/cgroup/cpu", "cgroup", "rw,cpu", "4:cpu,cpuacct:")
            } else {
                ("/sys/fs/cgroup", "cgroup2", "rw", "0::")
            };
            // The real lines go among the junk, at a place the junk's length picks.
            let at = mounts.len() / 2;
            mounts.insert(
                at,
                format!("30 23 0:26 {root} {point} rw,relatime - {fstype} {fstype} {options}"),
            );
            cgroups.insert(cgroups.len() / 2, format!("{controllers}{path}"));
            // The directories the walk visits: the mount point and each level below it.
            let below = &comps[root_len..];
            let dirs: Vec<String> = (0..=below.len())
                .map(|i| {
                    let rel = point.trim_start_matches('/');
                    [rel]
                        .into_iter()
                        .chain(below[..i].iter().copied())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            let files = limits
                .into_iter()
                .map(|(i, name, content)| (i.get(&dirs).clone(), name, content))
                .collect();
            Tree {
                mountinfo: Some(mounts),
                cgroup: Some(cgroups),
                files,
            }
        })
}

/// The affinity `sched_getaffinity` reported: nothing, zero (treated as nothing), or a count.
fn sched() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(0)), 6 => (1u32..=4096).prop_map(Some)]
}

impl Tree {
    /// Writes the tree under a fresh directory. Clashes (a file where another entry wants a
    /// directory) are skipped: the tree is whatever could be made.
    fn write(&self) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let put = |rel: &str, bytes: &[u8]| {
            let path = root.path().join(rel);
            let _ = std::fs::create_dir_all(path.parent().unwrap());
            let _ = std::fs::write(path, bytes);
        };
        if let Some(lines) = &self.mountinfo {
            put(MOUNTINFO, lines.join("\n").as_bytes());
        }
        if let Some(lines) = &self.cgroup {
            put(CGROUP, lines.join("\n").as_bytes());
        }
        for (dir, name, content) in &self.files {
            let rel = format!("{dir}/{name}");
            match content {
                Some(bytes) => put(&rel, bytes),
                None => {
                    let _ = std::fs::create_dir_all(root.path().join(rel));
                }
            }
        }
        root
    }
}

/// What the module promises for any tree: a finite positive budget, never above the affinity
/// mask, naming what bounded it, at least one worker for `max`, and warnings that name a file.
fn check_promises(b: &CpuBudget, sched: Option<u32>) -> Result<(), TestCaseError> {
    prop_assert!(
        b.budget.is_finite() && b.budget > 0.0,
        "budget {}",
        b.budget
    );
    for rounding in [Rounding::Floor, Rounding::Ceil] {
        prop_assert!(cpu::workers_for(b.budget, rounding, 0) >= 1);
    }
    if let Some(n) = sched.filter(|&n| n > 0) {
        prop_assert!(
            b.budget <= f64::from(n),
            "budget {} above affinity {}",
            b.budget,
            n
        );
    }
    match b.bounded_by {
        Bound::Quota => {
            let q = b
                .quota
                .as_ref()
                .expect("bounded by a quota it does not name");
            prop_assert_eq!(q.cpus, b.budget);
            prop_assert!(READ.iter().any(|f| q.file.to_string_lossy().ends_with(f)));
        }
        Bound::Affinity => match &b.affinity {
            Some(a) => prop_assert_eq!(a.cpus, b.budget),
            None => {
                prop_assert_eq!(b.budget, 1.0);
                prop_assert!(
                    b.warnings.iter().any(|w| w == NOTHING_FOUND),
                    "{:?}",
                    b.warnings
                );
            }
        },
        Bound::Explicit => prop_assert!(false, "detection claimed an explicit budget"),
    }
    for w in &b.warnings {
        let names_a_file = READ.iter().any(|f| w.contains(&format!("{f}: ")));
        prop_assert!(
            names_a_file || w == NOTHING_FOUND,
            "warning names no file: {:?}",
            w
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn detection_on_any_tree_keeps_its_promises(tree in tree(), sched in sched()) {
        let root = tree.write();
        let b = cpu::detect(root.path(), sched);
        check_promises(&b, sched)?;
    }

    #[test]
    fn a_v2_cpu_max_at_the_leaf_bounds_the_budget(
        quota in 1u64..10_000_000,
        period in 1u64..10_000_000,
        dirs in proptest::collection::vec("[a-z0-9]{1,8}", 0..4),
        sched in 1u32..=256,
    ) {
        let path = format!("/{}", dirs.join("/"));
        let leaf = Path::new("sys/fs/cgroup").join(path.trim_start_matches('/'));
        let tree = Tree {
            mountinfo: Some(vec![
                "30 23 0:26 / /sys/fs/cgroup rw,relatime shared:4 - cgroup2 cgroup2 rw".into(),
            ]),
            cgroup: Some(vec![format!("0::{path}")]),
            files: vec![(leaf.display().to_string(), "cpu.max", Some(format!("{quota} {period}\n").into_bytes()))],
        };
        let root = tree.write();
        let b = cpu::detect(root.path(), Some(sched));
        check_promises(&b, Some(sched))?;
        prop_assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        let cpus = quota as f64 / period as f64;
        if cpus < f64::from(sched) {
            prop_assert_eq!((b.budget, b.bounded_by), (cpus, Bound::Quota));
            let file = Path::new("/").join(&leaf).join("cpu.max");
            prop_assert_eq!(&b.quota.as_ref().unwrap().file, &file);
        } else {
            prop_assert_eq!((b.budget, b.bounded_by), (f64::from(sched), Bound::Affinity));
        }
    }

    #[test]
    fn the_tightest_v1_quota_among_ancestors_wins(
        limits in proptest::collection::vec(
            proptest::option::of((1u64..1_000_000, prop_oneof![1u64..1000, 1u64..1_000_000])),
            1..5,
        ),
    ) {
        // One directory per level under the v1 mount, each with a quota or -1 (no limit).
        let mut tree = Tree {
            mountinfo: Some(vec![
                "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu".into(),
            ]),
            cgroup: Some(vec![format!("3:cpu:/{}", vec!["l"; limits.len() - 1].join("/"))]),
            files: Vec::new(),
        };
        let mut dir = "sys/fs/cgroup/cpu".to_string();
        for (level, limit) in limits.iter().enumerate() {
            if level > 0 {
                dir.push_str("/l");
            }
            let (quota, period) = match limit {
                Some((q, p)) => (q.to_string(), p.to_string()),
                None => ("-1".to_string(), "100000".to_string()),
            };
            tree.files.push((dir.clone(), "cpu.cfs_quota_us", Some(quota.into_bytes())));
            tree.files.push((dir.clone(), "cpu.cfs_period_us", Some(period.into_bytes())));
        }
        let root = tree.write();
        let b = cpu::detect(root.path(), Some(4096));
        check_promises(&b, Some(4096))?;
        prop_assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        let tightest = limits
            .iter()
            .flatten()
            .map(|&(q, p)| q as f64 / p as f64)
            .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.min(c))));
        // A quota above the mask (a short period) does not bound: the mask does.
        match tightest.filter(|&cpus| cpus < 4096.0) {
            Some(cpus) => prop_assert_eq!((b.budget, b.bounded_by), (cpus, Bound::Quota)),
            None => prop_assert_eq!((b.budget, b.bounded_by), (4096.0, Bound::Affinity)),
        }
    }

    #[test]
    fn a_cpuset_list_smaller_than_the_mask_bounds_the_budget(
        ranges in proptest::collection::vec((0u32..1024, 0u32..16), 1..6),
        sched in 1u32..=256,
    ) {
        let list: Vec<String> = ranges
            .iter()
            .map(|&(a, n)| if n == 0 { a.to_string() } else { format!("{a}-{}", a + n) })
            .collect();
        // The kernel's lists have no overlaps, but the parser only counts what it is given.
        let count: u32 = ranges.iter().map(|&(_, n)| n + 1).sum();
        let tree = Tree {
            mountinfo: Some(vec!["30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw".into()]),
            cgroup: Some(vec!["0::/app".into()]),
            files: vec![(
                "sys/fs/cgroup/app".into(),
                "cpuset.cpus.effective",
                Some(format!("{}\n", list.join(",")).into_bytes()),
            )],
        };
        let root = tree.write();
        let b = cpu::detect(root.path(), Some(sched));
        check_promises(&b, Some(sched))?;
        prop_assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        prop_assert_eq!(b.budget, f64::from(count.min(sched)), "list {:?}", list);
        let source = &b.affinity.as_ref().unwrap().source;
        if count < sched {
            prop_assert_eq!(source.as_str(), "/sys/fs/cgroup/app/cpuset.cpus.effective");
        } else {
            prop_assert_eq!(source.as_str(), "sched_getaffinity");
        }
    }
}
