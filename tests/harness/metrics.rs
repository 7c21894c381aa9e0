//! Scraping a service's `/metrics` and reading it through a real Prometheus parser (Python's
//! `prometheus_client`, in the peers' venv), so a test sees what a scraper would.

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape, parsed.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

/// GETs `/metrics` at `address` and parses it; panics if the parser refuses the text.
pub async fn scrape(address: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{address}/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type}");
    let text = response.text().await.unwrap();
    let mut parser = Command::new(crate::peers_python());
    parser.arg(crate::peers_dir().join("metrics_parse.py"));
    let output = fed(parser, &text);
    assert!(
        output.status.success(),
        "prometheus_client refused the text:\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    Scrape { samples: serde_json::from_slice(&output.stdout).expect("parser output"), text }
}

impl Scrape {
    /// The sum of the samples named `name` whose labels include `labels` (0 when none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }

    /// Whether any sample named `name` has `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels.iter().all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
    }

    /// Every label value of every sample.
    pub fn label_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.samples.iter().flat_map(|sample| sample.labels.iter().map(|(key, value)| (key.as_str(), value.as_str())))
    }
}

/// `promtool check metrics` over `text`: Prometheus's own linter of the exposition format and
/// its naming conventions (Debian's `prometheus` package; scripts/install-deps.sh installs it).
pub fn promtool_check_metrics(text: &str) {
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let output = fed(promtool, text);
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What `command` printed with `text` as its input.
fn fed(mut command: Command, text: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?} (scripts/test.sh installs it): {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
