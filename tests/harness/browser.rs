//! Scripts that drive the admin page in Debian's headless Chromium (playwright-core, installed in
//! `tests/peers` by the test command). Each prints one JSON line of what it saw and exits non-zero
//! with the reason on a failed check; screenshots go to `artifacts/` at the repository root.

/// Runs `tests/peers/SCRIPT` on the page at `page_url` signed in with `token` (with `extra`
/// arguments after the artifacts directory); what it saw.
pub fn run_page_script(script: &str, page_url: &str, token: &str, extra: &[&str]) -> serde_json::Value {
    let peers = crate::peers_dir();
    assert!(
        peers.join("node_modules/playwright-core").exists(),
        "run scripts/test.sh, which runs npm ci in tests/peers"
    );
    let artifacts = crate::artifacts_dir();
    let output = std::process::Command::new("node")
        .arg(peers.join(script))
        .arg(page_url)
        .arg(token)
        .arg(&artifacts)
        .args(extra)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{script}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// Whether `artifacts/NAME` was written (a screenshot of some size).
pub fn artifact_saved(name: &str) -> bool {
    let path = crate::artifacts_dir().join(name);
    path.metadata().is_ok_and(|metadata| metadata.len() > 1000)
}
