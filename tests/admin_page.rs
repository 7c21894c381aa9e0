//! The browser admin page in a real headless Chromium (Debian's, driven by playwright-core),
//! against both real services on the demo corpus. Screenshots go to `artifacts/` at the
//! repository root (ignored by git).

use std::{path::PathBuf, process::Command};

use end_to_end_tests::{api::*, start_embedding};

#[tokio::test(flavor = "multi_thread")]
async fn admin_page_signs_in_shows_progress_then_an_interactive_map() {
    let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers");
    assert!(
        peers.join("node_modules/playwright-core").exists(),
        "run scripts/test.sh, which runs npm ci in tests/peers"
    );
    // More iterations than the default keep the computing state on screen long enough to read.
    let embedding = start_embedding(&["--iterations", "4000"]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("page.sqlite3"), &embedding.url(), &[]);
    import_digits(&api).await;

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let output = Command::new("node")
        .arg(peers.join("admin_page.mjs"))
        .arg(http_url(&api, "/admin/"))
        .arg(ADMIN_TOKEN)
        .arg(&artifacts)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert!(seen["unauthorized"].as_str().unwrap().contains("401"), "{seen}");
    assert!(seen["progressText"].as_str().unwrap().contains("Iteration"), "{seen}");
    assert!(seen["etaText"].as_str().unwrap().contains("s left"), "{seen}");
    assert_eq!(seen["total"], 1797, "{seen}");
    assert_eq!(seen["drawn"], 1797, "{seen}");
    assert_eq!(seen["afterToggle"].as_u64().unwrap() + seen["threes"].as_u64().unwrap(), 1797);
    assert_eq!(seen["searchCount"], "1 match");
    assert_eq!((seen["downloads"].as_u64(), seen["reloadDownloads"].as_u64()), (Some(1), Some(1)), "{seen}");
    assert_eq!(seen["violations"], serde_json::json!([]), "no CSP violations: {seen}");
    assert!(seen["labels"].as_u64().unwrap() > 0, "{seen}");
    assert_eq!(seen["listed"].as_array().unwrap().len(), 10, "{seen}");
    assert_eq!(seen["listed"], seen["ringed"], "the listed neighbours are the ringed ones: {seen}");
    for shot in ["admin-computing.png", "admin-ready.png", "admin-density.png", "admin-explore.png"] {
        assert!(artifacts.join(shot).metadata().unwrap().len() > 1000, "{shot} saved");
    }
}
