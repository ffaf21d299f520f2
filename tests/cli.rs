//! The `hashgate` binary as an operator runs it.

use std::process::Command;

const VECTOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/stratum_job_mainnet_block.json"
);

#[test]
fn verify_share_accepts_the_mainnet_block() {
    let out = Command::new(env!("CARGO_BIN_EXE_hashgate"))
        .args(["verify-share", VECTOR, "--difficulty", "65536"])
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("000000000000000000000c835b2adcaedc20fdf6ee440009c249452c726dafae"));
    assert!(stdout.contains("block:          true"));
}

#[test]
fn verify_share_rejects_at_an_impossible_difficulty_and_reports_bad_files() {
    let out = Command::new(env!("CARGO_BIN_EXE_hashgate"))
        .args(["verify-share", VECTOR, "--difficulty", "1e17"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected (23)"));

    let out = Command::new(env!("CARGO_BIN_EXE_hashgate"))
        .args(["verify-share", "/nonexistent/share.json"])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/share.json"));
}
