//! Starts the real service binaries for tests (ephemeral ports, captured logs, killed on drop)
//! and waits on them.
//!
//! Binaries are found beside the test executable (`target/<profile>/`), as `cargo build` leaves
//! them; `EMBEDDING_SERVICE_BIN` overrides the path.

pub mod api;
pub mod browser;
pub mod corpus_files;
pub mod metrics;
pub mod postgres;
pub mod sqlite;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use embeddingmap_proto::v1::{
    EmbeddingMapStatus, GetEmbeddingMapRequest, MapState, embedding_map_service_client::EmbeddingMapServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Largest message the tests accept: a READY map of 1M points fits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Path of a workspace binary built next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let variable = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(path) = std::env::var(&variable) {
        return PathBuf::from(path);
    }
    let test_exe = std::env::current_exe().expect("test executable path");
    // Tests live in target/<profile>/deps/, benchmark binaries in target/<profile>/ itself.
    let mut profile_dir = test_exe.parent().expect("target directory");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target profile directory");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first, or set {variable}",
        path.display()
    );
    // `cargo test` builds the tests, not the services' binaries: one built before the sources
    // last changed would test old code and pass or fail for the wrong reason.
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).expect("binary modification time");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let own: &[&str] = match name {
        "embedding-service" => &["embedding-service/src", "vendor/bhtsne/src"],
        "api-service" => &["api-service/src", "api-service/migrations"],
        _ => &[],
    };
    let sources = ["proto/src", "proto/proto", "service-kit/src"].iter().chain(own);
    // Other binaries' own sources (src/bin/) do not relink this one.
    let skip = workspace.join("embedding-service/src/bin");
    let newer = sources.filter_map(|dir| newer_file(&workspace.join(dir), built, &skip)).next();
    if let Some(newer) = newer {
        panic!(
            "{} is older than {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A file under `dir` (not under `skip`) modified after `time`, if there is one.
fn newer_file(dir: &Path, time: std::time::SystemTime, skip: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).find_map(|entry| {
        let path = entry.path();
        let metadata = entry.metadata().ok()?;
        if path == skip {
            None
        } else if metadata.is_dir() {
            newer_file(&path, time, skip)
        } else {
            (metadata.modified().ok()? > time).then_some(path)
        }
    })
}

/// A running service process, killed when dropped.
pub struct ServiceProcess {
    child: Child,
    pub address: SocketAddr,
    addresses: Mutex<ListenLines>,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
    /// Directories the process uses, removed with it.
    dirs: Vec<tempfile::TempDir>,
}

/// Every `LABEL listening on ADDR` line seen so far, and the lines still to read.
struct ListenLines {
    seen: HashMap<String, SocketAddr>,
    unread: mpsc::Receiver<(String, String)>,
}

impl ListenLines {
    /// Reads lines until `label`'s has come; None if the output went quiet first.
    fn wait_for(&mut self, label: &str) -> Option<SocketAddr> {
        while !self.seen.contains_key(label) {
            let (seen, address) = self.unread.recv_timeout(Duration::from_secs(20)).ok()?;
            self.seen.insert(seen, address.parse().expect("listen address"));
        }
        Some(self.seen[label])
    }
}

/// The Python of the outside clients' venv (`scripts/test.sh` makes it; `PEERS_PYTHON` names it).
pub fn peers_python() -> PathBuf {
    let path = std::env::var_os("PEERS_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/embedding-map/venv-tests/bin/python")
    });
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which creates the peers' venv", path.display());
    path
}

/// The outside clients' scripts.
pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The embedding service's label in its `embedding-service listening on ADDR` line.
pub const EMBEDDING: &str = "embedding-service";

/// Starts the embedding service with `args`, on an ephemeral port unless `args` names its own
/// `--listen`, with a map store of its own unless `args` names one, and waits until it listens.
pub fn start_embedding(args: &[&str]) -> ServiceProcess {
    let listen: &[&str] = if args.contains(&"--listen") { &[] } else { &["--listen", "127.0.0.1:0"] };
    let store = tempfile::tempdir().expect("map store directory");
    let store_path = store.path().to_str().expect("UTF-8 temp path").to_owned();
    let own_store = ["--map-store", store_path.as_str()];
    let own_store: &[&str] = if args.contains(&"--map-store") { &[] } else { &own_store };
    let args: Vec<&str> = listen.iter().chain(own_store).chain(args).copied().collect();
    let mut process = ServiceProcess::start_listening(&binary("embedding-service"), &args, &[], &[EMBEDDING]);
    process.dirs.push(store);
    process
}

impl ServiceProcess {
    /// Starts `binary` with exactly `args` and waits for one `LABEL listening on ADDR` line per
    /// label; the addresses are then available through `address_of`.
    pub fn start_listening(binary: &Path, args: &[&str], env: &[(&str, &str)], labels: &[&str]) -> ServiceProcess {
        let log_dir = tempfile::tempdir().expect("log directory");
        let log_path = log_dir.path().join("service.log");
        let log_file = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(binary);
        command.args(args).env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((label, address)) = line.split_once(" listening on ") {
                    let _ = sender.send((label.trim().to_owned(), address.trim().to_owned()));
                }
            }
        });
        let mut lines = ListenLines { seen: HashMap::new(), unread: receiver };
        for label in labels {
            if lines.wait_for(label).is_none() {
                let _ = child.kill();
                panic!(
                    "{} did not report {label:?}; log:\n{}",
                    binary.display(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        }
        let address = lines.seen[labels[0]];
        let addresses = Mutex::new(lines);
        ServiceProcess { child, address, addresses, log_path, _log_dir: log_dir, dirs: Vec::new() }
    }

    /// The address printed as `LABEL listening on ADDR`, waiting for the line if it has not come
    /// yet (a listener the test did not wait for at start, such as `--metrics-listen`'s).
    pub fn address_of(&self, label: &str) -> SocketAddr {
        let mut lines = self.addresses.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.wait_for(label).unwrap_or_else(|| panic!("no `{label} listening on` line; log:\n{}", self.log()))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `limit` for the process to exit; None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Anything with a gRPC URL.
pub trait Endpoint {
    fn url(&self) -> String;
}

impl Endpoint for ServiceProcess {
    fn url(&self) -> String {
        ServiceProcess::url(self)
    }
}

impl Endpoint for SocketAddr {
    fn url(&self) -> String {
        format!("http://{self}")
    }
}

pub async fn connect(process: &impl Endpoint) -> Channel {
    Channel::from_shared(process.url()).expect("url").connect().await.expect("connect")
}

pub async fn map_client(process: &ServiceProcess) -> EmbeddingMapServiceClient<Channel> {
    EmbeddingMapServiceClient::new(connect(process).await).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

pub async fn health_status(process: &impl Endpoint, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(connect(process).await);
    let response = client.check(HealthCheckRequest { service: service.to_owned() }).await.expect("health check");
    response.into_inner().status()
}

/// Calls `probe` every `interval` until it gives `Some`, for up to `limit`; `None` if it never did.
pub async fn within<T>(limit: Duration, interval: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// `within`, panicking with `what` (what was waited for) if it never happened.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    interval: Duration,
    probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    within(limit, interval, probe).await.unwrap_or_else(|| panic!("never happened within {limit:?}: {what}"))
}

/// Polls `GetEmbeddingMap` until the state is final, returning every status seen.
pub async fn poll_until_final(
    client: &mut EmbeddingMapServiceClient<Channel>,
    limit: Duration,
) -> Vec<EmbeddingMapStatus> {
    let mut seen = Vec::new();
    eventually("the map left COMPUTING", limit, Duration::from_millis(20), async || {
        let status = client
            .get_embedding_map(GetEmbeddingMapRequest { omit_points: false })
            .await
            .expect("GetEmbeddingMap")
            .into_inner();
        let computing = status.state() == MapState::Computing;
        seen.push(status);
        (!computing).then_some(())
    })
    .await;
    seen
}

/// Directory of the committed test fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `artifacts/` at the workspace root, created: what the full tier leaves to read (screenshots,
/// the fault scorecard, the drills' figures).
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The demo corpus's vectors as a file (the embedding service serves the same bytes bundled).
pub fn digits_vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../embedding-service/data/digits_X.npy")
}

/// The demo corpus's labels (digits 0-9), in corpus order.
pub fn digits_labels() -> Vec<i64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../embedding-service/data/digits_y.npy");
    let npy = npyz::NpyFile::new(std::fs::File::open(path).expect("digits labels")).expect("npy");
    npy.into_vec::<i32>().expect("int32 labels").into_iter().map(i64::from).collect()
}

/// 10-NN label accuracy of a 2-D map, brute force: the share of points whose 10 nearest map
/// neighbours' majority label (ties to the smallest) is their own.
pub fn knn10_accuracy(points: &[(f32, f32)], labels: &[i64]) -> f64 {
    let n = points.len();
    let correct = (0..n)
        .filter(|&i| {
            let mut others: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| ((points[i].0 - points[j].0).powi(2) + (points[i].1 - points[j].1).powi(2), j))
                .collect();
            others.select_nth_unstable_by(9, |a, b| a.0.total_cmp(&b.0));
            let mut votes = std::collections::BTreeMap::<i64, usize>::new();
            for &(_, j) in &others[..10] {
                *votes.entry(labels[j]).or_default() += 1;
            }
            let best = *votes.values().max().unwrap();
            votes.iter().find(|&(_, &count)| count == best).map(|(&label, _)| label) == Some(labels[i])
        })
        .count();
    correct as f64 / n as f64
}
