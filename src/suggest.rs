//! What the user probably meant: the closest flag to an unknown one (`--worker` -> `--workers`)
//! and the `CLUSTER_INIT_*` variables that are not options (`CLUSTER_INIT_WORKER=1` would
//! otherwise be ignored without a word and the pool run `max` workers).
//!
//! Hand-written rather than clap's `suggestions` feature: one small distance serves both the
//! flags and the variables, which clap never sees as unknown.

use std::ffi::OsString;

/// Prefix of every option's environment variable.
pub const ENV_PREFIX: &str = "CLUSTER_INIT_";

/// `CLUSTER_INIT_*` names that cluster-init never reads but its own test and build tooling sets
/// (CI exports `CLUSTER_INIT_STRICT_TESTS=1` to every test, and the binary inherits it): warning
/// about them would only add a line to every test's stderr.
pub const TOOLING_VARS: &[&str] = &[
    "CLUSTER_INIT_STRICT_TESTS",
    "CLUSTER_INIT_TEST_BIN",
    "CLUSTER_INIT_BIN",
    "CLUSTER_INIT_IMAGE",
    "CLUSTER_INIT_VM_KERNEL",
    "CLUSTER_INIT_VM_ACCEL",
    "CLUSTER_INIT_VM_SCENARIOS",
];

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours (`STOP_TIEMOUT`) each cost 1.
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Three rows are enough: a swap looks back two rows.
    let mut two_back = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(two_back[j - 2] + 1);
            }
        }
        std::mem::swap(&mut two_back, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be what was meant: at most one
/// edit per three characters (and at least one), so `WORKER` finds `WORKERS` while `FOO` finds
/// nothing rather than the unrelated `HUP`. Case is ignored (it is one common slip). Give bare
/// names: a shared prefix (`--`, `CLUSTER_INIT_`) would loosen the bound.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_uppercase();
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(&name, &c.to_ascii_uppercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// One warning per `CLUSTER_INIT_*` variable in `vars` that is not in `known` (nor one of the
/// [`TOOLING_VARS`]), sorted by name, each naming the closest known variable when there is one.
/// The prefix is matched without regard to case: `cluster_init_workers` is a slip too.
pub fn unknown_vars(vars: impl IntoIterator<Item = OsString>, known: &[String]) -> Vec<String> {
    let mut unknown: Vec<String> = Vec::new();
    for var in vars {
        let var = var.to_string_lossy().into_owned();
        let ours = var
            .get(..ENV_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX));
        if ours && !known.contains(&var) && !TOOLING_VARS.contains(&var.as_str()) {
            // Kept sorted by insertion: a handful of names, and a general sort would cost PID 1's
            // static binary kilobytes for nothing.
            let at = unknown.partition_point(|v| *v < var);
            unknown.insert(at, var);
        }
    }
    unknown
        .into_iter()
        .map(|var| {
            // The shared prefix would make every name look close to every other.
            let suffixes = known.iter().filter_map(|k| k.get(ENV_PREFIX.len()..));
            match closest(&var[ENV_PREFIX.len()..], suffixes) {
                Some(near) => format!(
                    "{var} is not an option of cluster-init (did you mean {ENV_PREFIX}{near}?)"
                ),
                None => format!("{var} is not an option of cluster-init; it is ignored"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("WORKER", "WORKERS"), 1);
        assert_eq!(distance("WORKERS", "WORKER"), 1);
        assert_eq!(distance("STOP_TIEMOUT", "STOP_TIMEOUT"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("FOO", "HUP"), 3);
        assert_eq!(distance("ca", "abc"), 3);
    }

    #[test]
    fn closest_needs_to_be_close() {
        let flags = ["workers", "restart", "hup", "stop-timeout"];
        assert_eq!(closest("worker", flags), Some("workers"));
        assert_eq!(closest("WORKERS", flags), Some("workers"));
        assert_eq!(closest("stop-timout", flags), Some("stop-timeout"));
        assert_eq!(closest("foo", flags), None);
        assert_eq!(closest("x", flags), None);
        assert_eq!(closest("frobnicate-everything", flags), None);
    }

    #[test]
    fn unknown_vars_are_named_with_their_closest_option() {
        let known = vec![
            "CLUSTER_INIT_WORKERS".to_string(),
            "CLUSTER_INIT_STOP_TIMEOUT".to_string(),
            "CLUSTER_INIT_HUP".to_string(),
        ];
        let vars = [
            "PATH",
            "CLUSTER_INIT_WORKERS",
            "CLUSTER_INIT_WORKER",
            "CLUSTER_INIT_ZZZZZZZZZZZ",
            "CLUSTER_INIT_FOO",
            "CLUSTER_INIT_",
            "CLUSTER_INIT_STRICT_TESTS",
            "cluster_init_stop_timeout",
            "CLUSTER_INITIAL",
        ]
        .map(OsString::from);
        assert_eq!(
            unknown_vars(vars, &known),
            [
                "CLUSTER_INIT_ is not an option of cluster-init; it is ignored",
                "CLUSTER_INIT_FOO is not an option of cluster-init; it is ignored",
                "CLUSTER_INIT_WORKER is not an option of cluster-init \
                 (did you mean CLUSTER_INIT_WORKERS?)",
                "CLUSTER_INIT_ZZZZZZZZZZZ is not an option of cluster-init; it is ignored",
                "cluster_init_stop_timeout is not an option of cluster-init \
                 (did you mean CLUSTER_INIT_STOP_TIMEOUT?)",
            ]
        );
        assert!(unknown_vars(known.iter().map(OsString::from), &known).is_empty());
    }
}
