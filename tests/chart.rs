//! The Helm chart's scenarios (tests/chart/test_chart.py), the Dockerfiles' checks
//! (test_dockerfiles.py) and the examples run as their images would (test_examples.py), offline.
//!
//! The chart is rendered, linted and validated by Python packages that bundle Helm's Go SDK and
//! the Kubernetes schemas, so no helm binary and no cluster are needed. This test keeps a
//! virtualenv with tests/chart/requirements.txt and examples/gunicorn/requirements.txt under
//! `target/chart-venv` (`common::venv`), then runs pytest on the suite, its output streamed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SUITE_LIMIT: Duration = Duration::from_secs(300);

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn helm_chart_renders_validates_and_maps_values_to_cluster_init_env() {
    let requirements = std::fs::read_to_string(repo_root().join("tests/chart/requirements.txt"))
        .expect("read tests/chart/requirements.txt");
    // The gunicorn example's own pin: tests/chart/test_examples.py runs it as its image would.
    let gunicorn = std::fs::read_to_string(repo_root().join("examples/gunicorn/requirements.txt"))
        .expect("read examples/gunicorn/requirements.txt");
    let mut pins = common::requirements(&requirements);
    pins.extend(common::requirements(&gunicorn));
    let Some(venv) = common::venv("chart", &pins) else {
        return;
    };
    let mut pytest = Command::new(venv.join("bin/python"));
    pytest
        .args(["-m", "pytest", "tests/chart", "-q", "-rfE"])
        .current_dir(repo_root())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // The suite also feeds each rendered pod's environment to the real binary.
        .env("CLUSTER_INIT_BIN", env!("CARGO_BIN_EXE_cluster-init"));
    let status = common::run_bounded(pytest, "pytest tests/chart", SUITE_LIMIT)
        .expect("the chart suite did not finish (see above)");
    assert!(
        status.success(),
        "the chart suite failed ({status}): see pytest's output above"
    );
}
