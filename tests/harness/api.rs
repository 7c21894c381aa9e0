//! Starting the api-service for tests, and calling it over HTTP, gRPC and gRPC-web with or
//! without the admin token.

use std::path::{Path, PathBuf};

use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::{ServiceProcess, binary, postgres::Postgres};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const GRPC: &str = "api-service grpc";
pub const HTTP: &str = "api-service http";
pub const ALLOWED_ORIGIN: &str = "http://admin.example.test";

/// What `--database` is given: a SQLite file's path, or a PostgreSQL URL.
pub trait DatabaseArg {
    fn database_arg(&self) -> &str;
}

impl DatabaseArg for Path {
    fn database_arg(&self) -> &str {
        self.to_str().expect("utf-8 path")
    }
}

impl DatabaseArg for PathBuf {
    fn database_arg(&self) -> &str {
        self.as_path().database_arg()
    }
}

impl DatabaseArg for str {
    fn database_arg(&self) -> &str {
        self
    }
}

/// A test's database on either backend: a SQLite file in a temporary directory, or a fresh
/// database on a real PostgreSQL server of its own; the suites that hold for both run on each.
pub enum TestDatabase {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres { server: Postgres, name: String, url: String },
}

impl TestDatabase {
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sqlite3");
        TestDatabase::Sqlite { _dir: dir, path }
    }

    /// None, loudly, where PostgreSQL is not installed (`Postgres::start`).
    pub fn postgres() -> Option<TestDatabase> {
        let server = Postgres::start()?;
        let name = "api".to_owned();
        let url = server.create_database(&name);
        Some(TestDatabase::Postgres { server, name, url })
    }

    /// Runs `sql` on the database (sqlite3 or psql); its output, one row a line.
    pub fn query(&self, sql: &str) -> String {
        match self {
            TestDatabase::Sqlite { path, .. } => crate::sqlite::sqlite3(path, sql).trim().to_owned(),
            TestDatabase::Postgres { server, name, .. } => server.psql(name, sql),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            TestDatabase::Sqlite { .. } => "sqlite",
            TestDatabase::Postgres { .. } => "postgres",
        }
    }
}

impl DatabaseArg for TestDatabase {
    fn database_arg(&self) -> &str {
        match self {
            TestDatabase::Sqlite { path, .. } => path.database_arg(),
            TestDatabase::Postgres { url, .. } => url,
        }
    }
}

/// Starts the api-service on ephemeral ports with its database at `database`.
pub fn start_api(database: &(impl DatabaseArg + ?Sized), embedding_url: &str, extra: &[&str]) -> ServiceProcess {
    let mut args = api_args(database, embedding_url);
    args.extend_from_slice(extra);
    ServiceProcess::start_listening(&binary("api-service"), &args, &[("API_ADMIN_TOKEN", ADMIN_TOKEN)], &[GRPC, HTTP])
}

/// The api-service's flags for ephemeral ports, `database` and the embedding service's URL.
pub fn api_args<'a>(database: &'a (impl DatabaseArg + ?Sized), embedding_url: &'a str) -> Vec<&'a str> {
    vec![
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--database",
        database.database_arg(),
        "--embedding-url",
        embedding_url,
        "--cors-origins",
        ALLOWED_ORIGIN,
    ]
}

pub fn http_url(api: &ServiceProcess, path: &str) -> String {
    format!("http://{}{path}", api.address_of(HTTP))
}

/// A gRPC-web POST over HTTP/1.1 to `path` on the api-service's `listener` (GRPC or HTTP), as a
/// browser client sends it; the caller adds the body (`grpc_web_frame`) and any other headers.
pub fn grpc_web_request(api: &ServiceProcess, listener: &str, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("http://{}{path}", api.address_of(listener)))
        .header("content-type", "application/grpc-web+proto")
}

/// `message` (encoded protobuf, or any bytes) in a gRPC-web data frame: flag 0, then the
/// length as a big-endian u32, then the bytes.
pub fn grpc_web_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

pub async fn grpc_channel(api: &ServiceProcess) -> Channel {
    Channel::from_shared(format!("http://{}", api.address_of(GRPC)))
        .unwrap()
        .connect()
        .await
        .expect("connect to api gRPC")
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token"));
    request
}

pub fn admin<T>(message: T) -> Request<T> {
    authorized(message, ADMIN_TOKEN)
}

/// POSTs `body` as JSON to an admin route of the HTTP port, with the admin token.
pub async fn admin_post(api: &ServiceProcess, path: &str, body: &serde_json::Value) -> reqwest::Response {
    http_client().post(http_url(api, path)).bearer_auth(ADMIN_TOKEN).json(body).send().await.unwrap()
}

/// GETs an admin route of the HTTP port with the admin token; its JSON body.
pub async fn admin_get_json(api: &ServiceProcess, path: &str) -> serde_json::Value {
    let response = http_client().get(http_url(api, path)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    response.json().await.unwrap()
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().expect("http client")
}

/// Imports the demo corpus's items: name "digit D #ID", category D, attributes `digit` (D),
/// `parity` (even or odd) and `row` (ID).
pub async fn import_digits(api: &ServiceProcess) {
    let items: Vec<serde_json::Value> = crate::digits_labels()
        .iter()
        .enumerate()
        .map(|(id, label)| {
            let parity = if label % 2 == 0 { "even" } else { "odd" };
            let attributes = serde_json::json!({ "digit": label.to_string(), "parity": parity, "row": id.to_string() });
            serde_json::json!({ "id": id, "name": format!("digit {label} #{id}"), "category": label.to_string(), "attributes": attributes })
        })
        .collect();
    let response = admin_post(api, "/api/admin/items/import", &serde_json::json!({ "items": items })).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK, "{:?}", response.text().await);
}
