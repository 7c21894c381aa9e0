//! The `sqlite3` shell on a test's database, from outside the service: one-off queries, and
//! transactions held open while the service works.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
};

/// Runs `sql` on `database` in the `sqlite3` shell and returns what it prints.
pub fn sqlite3(database: &Path, sql: &str) -> String {
    let output = Command::new("sqlite3").arg(database).arg(sql).output().expect("sqlite3 is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Starts the `sqlite3` shell on `database` reading `script` (then the end of its input), its
/// output discarded; returns without waiting for it.
pub fn sqlite3_script(database: &Path, script: &str) -> Child {
    let mut shell = Command::new("sqlite3")
        .arg(database)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sqlite3 is installed");
    let mut stdin = shell.stdin.take().expect("piped stdin");
    writeln!(stdin, "{script}").expect("script written to sqlite3");
    shell
}

/// Holds SQLite's write lock on `database` from outside for `seconds`: the shell runs
/// `BEGIN IMMEDIATE; statement` (waiting up to 5 s for the lock if the service holds it), sleeps,
/// then commits. Returns once the lock is held; it is gone once the returned shell has exited.
pub fn hold_write_lock(database: &Path, seconds: u32, statement: &str) -> Child {
    let mut shell = Command::new("sqlite3")
        .arg(database)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sqlite3 is installed");
    let mut stdin = shell.stdin.take().expect("piped stdin");
    writeln!(
        stdin,
        "PRAGMA busy_timeout=5000;\nBEGIN IMMEDIATE; {statement}\nSELECT 'locked';\n.shell sleep {seconds}\nCOMMIT;"
    )
    .expect("script written to sqlite3");
    // The shell echoes the pragma's value first; the marker comes once the lock is held.
    let output = std::io::BufReader::new(shell.stdout.as_mut().expect("piped stdout"));
    let locked = std::io::BufRead::lines(output).map_while(Result::ok).any(|line| line == "locked");
    assert!(locked, "the outside writer could not take the lock");
    shell
}
