//! The browser admin page in a real headless Chromium (Debian's, driven by playwright-core),
//! against both real services on the demo corpus. Screenshots go to `artifacts/` at the
//! repository root (ignored by git).

use end_to_end_tests::{
    api::*,
    browser::{artifact_saved, run_page_script},
    digits_vectors, start_embedding,
};

#[tokio::test(flavor = "multi_thread")]
async fn admin_page_signs_in_shows_progress_then_an_interactive_map() {
    // The corpus is put in place by the page script once the page shows the map failed for want
    // of it, so the page is signed in before the computation starts, however slowly the browser
    // starts; more iterations than the default keep the computing state on screen long enough to
    // read.
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("digits.npy");
    let embedding = start_embedding(&["--corpus", corpus.to_str().unwrap(), "--iterations", "4000"]);
    let api = start_api(&dir.path().join("page.sqlite3"), &embedding.url(), &[]);
    import_digits(&api).await;

    let seen = run_page_script(
        "admin_page.mjs",
        &http_url(&api, "/admin/"),
        ADMIN_TOKEN,
        &[digits_vectors().to_str().unwrap(), corpus.to_str().unwrap()],
    );
    assert!(seen["unauthorized"].as_str().unwrap().contains("401"), "{seen}");
    assert!(seen["failedText"].as_str().unwrap().contains("does not exist"), "{seen}");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_box_and_a_lasso_select_what_the_api_selects_export_it_and_travel_in_the_link() {
    let embedding = start_embedding(&[]);
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("selection.sqlite3"), &embedding.url(), &[]);
    import_digits(&api).await;

    let seen = run_page_script("admin_selection.mjs", &http_url(&api, "/admin/"), ADMIN_TOKEN, &[]);
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    let ids = |value: &serde_json::Value| -> Vec<u64> {
        value.as_array().unwrap().iter().map(|id| id.as_u64().unwrap()).collect()
    };
    // The box: the page's points are the API's for the same polygon and generation; the rest
    // are dimmed, not hidden; the panel lists them.
    let box_ids = ids(&seen["box"]["ids"]);
    assert!(box_ids.len() > 20 && box_ids.len() < 1797, "{} in the box", box_ids.len());
    assert_eq!(box_ids, ids(&seen["box"]["api"]), "the page and the API agree on the box");
    assert_eq!(seen["box"]["drawn"], 1797, "unselected points are still drawn");
    assert_eq!(seen["box"]["panel"], true);
    assert_eq!(seen["box"]["count"], format!("{} points selected", box_ids.len()));
    assert_eq!(seen["box"]["names"], 20);
    assert!(seen["box"]["categories"].as_u64().unwrap() >= 1);
    // The export's rows are the selection.
    assert!(seen["exported"]["header"].as_str().unwrap().starts_with("id,name,category,x,y,cluster_level_0"));
    assert_eq!(ids(&seen["exported"]["ids"]), box_ids, "the downloaded rows are the selection");
    assert!(seen["exported"]["name"].as_str().unwrap().ends_with("-selection.csv"));
    // The lasso.
    let lasso_ids = ids(&seen["lasso"]["ids"]);
    assert!(lasso_ids.len() > 20, "{} in the lasso", lasso_ids.len());
    assert_eq!(lasso_ids, ids(&seen["lasso"]["api"]), "the page and the API agree on the lasso");
    // Colour by a numeric attribute: a scale from 0 to 1796, every point drawn; by a text one:
    // its two values as the legend's categories.
    let colored = &seen["colored"];
    assert_eq!(colored["numeric"]["colorBy"], serde_json::json!({ "field": "row", "numeric": true }));
    assert_eq!(colored["numeric"]["gradients"], 1);
    assert_eq!(colored["numeric"]["legend"], "row:01796", "{seen}");
    assert_eq!(colored["numeric"]["drawn"], 1797);
    assert_eq!(colored["text"]["colorBy"], serde_json::json!({ "field": "parity", "numeric": false }));
    assert_eq!((colored["text"]["categories"].as_u64(), colored["text"]["buttons"].as_u64()), (Some(2), Some(2)));
    assert!(artifact_saved("admin-color-numeric.png"));
    // The link restores the view, the colour field, the hidden value and the selection, without
    // the token.
    assert_eq!(seen["restored"]["colorBy"], colored["text"]["colorBy"], "{seen}");
    let (before, restored) = (&seen["before"], &seen["restored"]);
    assert_eq!(ids(&restored["ids"]), ids(&before["ids"]), "{seen}");
    assert_eq!(restored["drawn"], before["drawn"], "the hidden category travels: {seen}");
    assert!(before["drawn"].as_u64().unwrap() < 1797);
    for key in ["scale", "x", "y"] {
        let (a, b) = (before["view"][key].as_f64().unwrap(), restored["view"][key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-3, "{key}: {a} vs {b}");
    }
    assert_eq!(restored["tokenInLink"], false);
    // Escape clears.
    assert_eq!(seen["cleared"], serde_json::json!({ "ids": 0, "panel": false }));
    assert!(artifact_saved("admin-selection.png"));
}
