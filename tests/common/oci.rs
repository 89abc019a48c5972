//! The OCI runtime spec of a bundle laid out like the `FROM scratch` image (docker/Dockerfile),
//! for the runc tier on this host (tests/runc.rs) and inside the VM (tests/vm.rs): runc's own
//! default spec (`runc spec`: its mounts, capabilities and namespaces), with a read-only root, the
//! image's `USER 65532:65532`, no terminal, and the process and limits of the scenario.

use serde_json::{json, Value};

/// The uid:gid of the Dockerfile's `USER 65532:65532`.
pub const NONROOT: u32 = 65532;

/// How a scenario's container differs from the default bundle.
#[derive(Clone, Debug, Default)]
pub struct Bundle {
    /// process.args: `/cluster-init ...`.
    pub args: Vec<String>,
    /// Added to process.env (after `PATH=/`).
    pub env: Vec<(String, String)>,
    /// linux.resources.cpu (quota, period) in µs.
    pub cpu: Option<(u64, u64)>,
    /// Share the host's network namespace (`hostNetwork: true`).
    pub host_network: bool,
    /// A cgroup namespace of its own (what containerd gives on cgroup v2 hosts).
    pub cgroup_namespace: bool,
    pub cgroups_path: Option<String>,
}

/// `runc spec`'s default, from the runc on this machine, changed as `bundle` says.
pub fn spec(bundle: &Bundle) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let made = std::process::Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("runc spec: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "runc spec: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let text = std::fs::read(dir.path().join("config.json")).map_err(|e| e.to_string())?;
    let mut spec: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let mut env = vec!["PATH=/".to_string()];
    env.extend(bundle.env.iter().map(|(k, v)| format!("{k}={v}")));
    spec["process"]["args"] = json!(bundle.args);
    spec["process"]["env"] = json!(env);
    spec["process"]["terminal"] = json!(false);
    spec["process"]["user"] = json!({"uid": NONROOT, "gid": NONROOT});
    spec["root"]["readonly"] = json!(true);
    if let Some((quota, period)) = bundle.cpu {
        spec["linux"]["resources"]["cpu"] = json!({"quota": quota, "period": period});
    }
    if let Some(path) = &bundle.cgroups_path {
        spec["linux"]["cgroupsPath"] = json!(path);
    }
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or("runc spec has no linux.namespaces")?;
    if bundle.host_network {
        namespaces.retain(|n| n["type"] != "network");
    }
    if bundle.cgroup_namespace && !namespaces.iter().any(|n| n["type"] == "cgroup") {
        namespaces.push(json!({"type": "cgroup"}));
    }
    Ok(spec)
}
