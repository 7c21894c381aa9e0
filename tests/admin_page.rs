//! The browser admin page in a real headless Chromium (Debian's, driven by playwright-core),
//! against both real services on the demo corpus. Screenshots go to `artifacts/` at the
//! repository root (ignored by git).

use end_to_end_tests::{
    api::*,
    browser::{artifact_saved, run_page_script},
    start_embedding,
};

#[tokio::test(flavor = "multi_thread")]
async fn admin_page_signs_in_shows_progress_then_an_interactive_map() {
    // More iterations than the default keep the computing state on screen long enough to read.
    let embedding = start_embedding(&["--iterations", "4000"]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("page.sqlite3"), &embedding.url(), &[]);
    import_digits(&api).await;

    let seen = run_page_script("admin_page.mjs", &http_url(&api, "/admin/"), ADMIN_TOKEN);
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
        assert!(artifact_saved(shot), "{shot} saved");
    }
}
