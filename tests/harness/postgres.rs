//! A real PostgreSQL for the tests: Debian's server binaries, a cluster made by `initdb` in a
//! temporary directory, listening on an ephemeral port of 127.0.0.1, stopped when dropped. As
//! root (PostgreSQL refuses to run as root) the server runs as the `postgres` user the package
//! creates. Where no server binaries are installed, `Postgres::start` says so loudly and gives
//! None, and the test that asked for one passes without checking anything: `scripts/install-deps.sh`
//! installs them, so the README's test command always runs these tests.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// The server's own role, made by `initdb`; connections from 127.0.0.1 are trusted.
const ROLE: &str = "api";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The user the server runs as, when the tests run as root.
    run_as: Option<&'static str>,
}

/// Where Debian's server binaries are (`/usr/lib/postgresql/<version>/bin`, the newest), or
/// `PG_BIN`.
fn server_binaries() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// A fresh, empty cluster, running; None (with a loud message) where PostgreSQL is not
    /// installed.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = server_binaries() else {
            // scripts/test.sh sets it: there the PostgreSQL checks must run.
            assert!(
                std::env::var_os("REQUIRE_POSTGRES").is_none(),
                "REQUIRE_POSTGRES is set and no PostgreSQL server binaries were found (install `postgresql`)"
            );
            eprintln!(
                "\n*** SKIPPED: no PostgreSQL server binaries (install Debian's `postgresql`, or set PG_BIN); \
                 the PostgreSQL checks of this test did not run ***\n"
            );
            return None;
        };
        let run_as = (unsafe { libc::geteuid() } == 0).then_some("postgres");
        let dir = tempfile::Builder::new().prefix("pg").tempdir().expect("a temporary directory");
        if let Some(user) = run_as {
            let chown = Command::new("chown").arg(user).arg(dir.path()).status().expect("chown runs");
            assert!(chown.success(), "cannot give {} to {user}", dir.path().display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Postgres { dir, bin, port, run_as };
        let data = server.data();
        server.run_checked(
            "initdb",
            &["-D", data.to_str().unwrap(), "-A", "trust", "-U", ROLE, "-E", "UTF8", "--no-instructions", "--no-sync"],
        );
        server.start_server();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    fn run_checked(&self, program: &str, args: &[&str]) -> Output {
        let output = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Starts the server (again, after `stop`) on its port, and waits until it accepts.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run_checked(
            "pg_ctl",
            &["-D", self.data().to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "start"],
        );
    }

    /// Stops the server at once, as a crash or a failover would (no checkpoint first).
    pub fn stop_server(&self) {
        self.run_checked("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    /// A new, empty database on this server; its URL.
    pub fn create_database(&self, name: &str) -> String {
        let output = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                ROLE,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", &format!("CREATE DATABASE \"{name}\"")])
            .output()
            .expect("psql runs");
        assert!(output.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&output.stderr));
        self.url(name)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` in database `name` with psql; its output rows, unaligned.
    pub fn psql(&self, name: &str, sql: &str) -> String {
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", ROLE, "-d", name, "-v", "ON_ERROR_STOP=1"])
            .args(["-A", "-t", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stopped whatever happened to the test, so no server outlives it.
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "-t", "10", "stop"])
            .output();
    }
}
