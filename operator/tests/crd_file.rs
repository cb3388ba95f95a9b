//! The checked-in CRD (`crds/wscluster.yaml`) must be exactly what the binary prints.
//!
//! Regenerate with `cargo run -p wscluster-operator -- crd > crds/wscluster.yaml`.

use std::path::Path;
use std::process::Command;

fn checked_in() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/wscluster.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn the_checked_in_crd_equals_the_generated_one() {
    let generated = wscluster_operator::crd_yaml().expect("CRD renders");
    assert!(
        checked_in() == generated,
        "crds/wscluster.yaml is stale: run `cargo run -p wscluster-operator -- crd > crds/wscluster.yaml`"
    );
}

#[test]
fn the_crd_subcommand_prints_the_checked_in_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_wscluster-operator"))
        .arg("crd")
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), checked_in());
}

#[test]
fn the_rbac_subcommand_prints_json_policy_rules() {
    let out = Command::new(env!("CARGO_BIN_EXE_wscluster-operator"))
        .arg("rbac")
        .output()
        .expect("binary runs");
    assert!(out.status.success());
    let rules: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rules = rules.as_array().expect("array");
    assert!(
        rules.iter().all(|r| r["apiGroups"].is_array()
            && r["resources"].is_array()
            && r["verbs"].is_array())
    );
    assert!(rules.iter().any(|r| r["resources"][0] == "endpointslices"));
}

#[test]
fn local_mode_refuses_an_out_of_range_node_count_before_starting_anything() {
    let out = Command::new(env!("CARGO_BIN_EXE_wscluster-operator"))
        .args(["local", "--nodes", "0"])
        .env_remove("WSCLUSTER_NODES")
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--nodes"),
        "stderr names the flag: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing was started: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
