//! Private PostgreSQL servers and per-test databases.
//!
//! [`PgServer`] runs `initdb` and `postgres` from the installed binaries in a
//! temp dir on a free port. `initdb` and `postgres` refuse to run as root, so
//! when we are uid 0 the children get the `postgres` system user's uid/gid
//! directly (`CommandExt::uid`/`gid`; never `runuser`/`su`, which fork: killing
//! the wrapper's PID would orphan the server) and the temp dir is chowned to
//! that user. The server is stopped by the PID in `postmaster.pid`.
//!
//! Every server has a [`Guardian`](crate::child::Guardian): if the test
//! process dies without dropping it, the server is stopped and its directory
//! removed all the same.
//!
//! [`test_database`] gives every test its own fresh database, on
//! `HERALD_TEST_DATABASE_URL` when set, else on one private server shared by
//! every test of the process. That server is started on first use and lives
//! until the process exits, when its guardian stops it: stopping it whenever
//! no test happened to hold one (a `Weak` slot) restarted it dozens of times
//! per run, each restart a fresh `initdb` (0.5-1.5 s of disk writes here).

use crate::child::{self, Guardian, pid_of};
use crate::{TestkitError, free_port, random_hex};
use nix::sys::signal::Signal;
use sqlx::Connection;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take to accept connections after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown (SIGINT) may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The superuser `initdb` creates; trust auth, no password.
const SUPERUSER: &str = "herald";

/// A private PostgreSQL server on 127.0.0.1, stopped when dropped.
pub struct PgServer {
    /// Holds `data/`, the socket and the logs; removed after the server stops
    /// (fields drop after `Drop::drop` ran).
    dir: TempDir,
    /// Directory with `postgres` (and the `initdb` that made `data/`).
    bindir: PathBuf,
    /// uid/gid the server runs as when we are root.
    run_as: Option<(u32, u32)>,
    /// Fixed for the server's life so `restart` keeps the URL.
    port: u16,
    /// The postmaster (our direct child); `None` after `kill`.
    child: Option<Child>,
    /// Stops the postmaster and removes `dir` if we die without `Drop`.
    guardian: Option<Guardian>,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl PgServer {
    /// Runs `initdb` in a new temp dir and starts `postgres` on a free port;
    /// returns once it accepts connections (deadline 30 s).
    ///
    /// Errors: [`TestkitError::MissingBinary`] when no PostgreSQL server
    /// binaries are installed (Debian package `postgresql`).
    pub fn start() -> Result<PgServer, TestkitError> {
        let bindir = find_bindir()?;
        let run_as = run_as_user()?;
        let dir = crate::temp_dir();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut server = PgServer {
            dir,
            bindir,
            run_as,
            port: 0,
            child: None,
            guardian: None,
        };
        server.initdb()?;
        // The free port can be taken before postgres binds it: retry with a
        // new one when that is why it exited.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(TestkitError::Failed(msg)) if attempt < 3 && is_bind_failure(&msg) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `postgres://herald@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port it listens on (kept across [`PgServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (stdout and stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Crashes the server for fault tests: immediate shutdown (SIGQUIT: every
    /// connection drops at once, no checkpoint, crash recovery on the next
    /// start), SIGKILL if it is still there after 5 s. Returns once it exited.
    pub fn kill(&mut self) {
        self.stop_with(Signal::SIGQUIT, Duration::from_secs(5));
    }

    /// Starts the server again on the same port and data (stopping it first
    /// when it runs); returns once it accepts connections.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop_with(Signal::SIGINT, STOP_GRACE);
        self.spawn_and_wait()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        // Settings that would redirect the server elsewhere.
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGOPTIONS"] {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), TestkitError> {
        let log = self.dir.path().join("initdb.log");
        let (out, err) = child::log_stdio(&log)?;
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
            // C locale: works on every machine, whatever LANG says.
            .args(["--no-locale", "--no-sync", "--no-instructions"])
            .stdout(out)
            .stderr(err)
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(TestkitError::Failed(format!(
                "initdb exited with {status}; last lines of {}:\n{}",
                log.display(),
                child::log_tail(&log, 50)
            )))
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
        let (out, err) = child::log_stdio(&self.log_path())?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path());
        for setting in [
            "listen_addresses=127.0.0.1",
            // Test data need not survive a power loss: skip every fsync.
            // synchronous_commit stays on: with it off a commit returns
            // before its WAL reaches the OS, and `kill` (a server crash)
            // would lose acknowledged writes, which fault tests check.
            "fsync=off",
            "full_page_writes=off",
            // Each store pool takes up to 16; tests run in parallel.
            "max_connections=200",
        ] {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdout(out).stderr(err);
        let child = cmd.spawn()?;
        self.guardian = Some(Guardian::watch(child.id(), "INT", self.dir.path())?);
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(TestkitError::Failed("postgres is not running".into()));
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                self.guardian = None;
                return Err(TestkitError::Failed(format!(
                    "postgres exited with {status} before accepting connections; last lines of {}:\n{}",
                    self.log_path().display(),
                    child::log_tail(&self.log_path(), 50)
                )));
            }
            if accepts_startup(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop_with(Signal::SIGKILL, Duration::ZERO);
                return Err(TestkitError::Timeout(format!(
                    "postgres on port {} not accepting connections after {READY_TIMEOUT:?}; last lines of {}:\n{}",
                    self.port,
                    self.log_path().display(),
                    child::log_tail(&self.log_path(), 50)
                )));
            }
            child::pause();
        }
    }

    /// The postmaster's PID from `data/postmaster.pid` when it names our
    /// child (a stale file from a killed run must not aim a signal at a
    /// stranger), else the child's PID; they are the same process since the
    /// child is `postgres` itself, not a wrapper.
    fn postmaster_pid(&self, child: &Child) -> nix::unistd::Pid {
        let from_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        match from_file {
            Some(pid) if pid == child.id() => pid_of(pid),
            _ => pid_of(child.id()),
        }
    }

    fn stop_with(&mut self, sig: Signal, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let pid = self.postmaster_pid(&c);
            child::stop(&mut c, pid, sig, grace);
        }
        // Only once the server is reaped: the watcher must not outlive it.
        self.guardian = None;
    }
}

impl Drop for PgServer {
    /// Fast shutdown (SIGINT) by the PID in `postmaster.pid`, up to 10 s,
    /// then SIGKILL.
    fn drop(&mut self) {
        self.stop_with(Signal::SIGINT, STOP_GRACE);
    }
}

/// Whether a failed start's log says the port was taken.
fn is_bind_failure(msg: &str) -> bool {
    msg.contains("could not bind") || msg.contains("could not create any TCP/IP sockets")
}

/// uid/gid of the `postgres` user when we are root (the server refuses to
/// run as root), `None` otherwise.
fn run_as_user() -> Result<Option<(u32, u32)>, TestkitError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        Ok(None) => Err(TestkitError::MissingBinary {
            name: "the `postgres` system user (PostgreSQL refuses to run as root)".into(),
            install_hint:
                "the Debian package `postgresql` (apt-get install -y postgresql), which creates it"
                    .into(),
        }),
        Err(e) => Err(TestkitError::Io(std::io::Error::from(e))),
    }
}

/// The directory holding both `initdb` and `postgres`: from `PATH`, then
/// `pg_config --bindir`, then the highest `/usr/lib/postgresql/<v>/bin`.
fn find_bindir() -> Result<PathBuf, TestkitError> {
    let has_both = |d: &Path| {
        child::is_executable(&d.join("initdb")) && child::is_executable(&d.join("postgres"))
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(d) = std::env::split_paths(&path).find(|d| has_both(d)) {
        return Ok(d);
    }
    if let Some(pg_config) = child::find_in_path("pg_config", &[])
        && let Ok(out) = Command::new(pg_config).arg("--bindir").output()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_both(&d) {
            return Ok(d);
        }
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, d)| has_both(d))
        .collect();
    versioned.sort();
    versioned
        .pop()
        .map(|(_, d)| d)
        .ok_or_else(|| TestkitError::MissingBinary {
            name: "PostgreSQL server binaries (initdb, postgres)".into(),
            install_hint: "the Debian package `postgresql` (apt-get install -y postgresql), \
                       or point HERALD_TEST_DATABASE_URL at a server"
                .into(),
        })
}

/// Whether a PostgreSQL server on `port` completes a startup handshake: the
/// first answer to a v3 StartupMessage is `R` (authentication; trust sends
/// AuthenticationOk) once it accepts connections, `E` while it starts up.
fn accepts_startup(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut body = 196_608_u32.to_be_bytes().to_vec(); // protocol 3.0
    for part in ["user", SUPERUSER, "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let len = u32::try_from(body.len() + 4).expect("startup packet is tiny");
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    if s.write_all(&packet).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    let ready = s.read_exact(&mut first).is_ok() && first[0] == b'R';
    // Terminate, so the server does not log an unexpected EOF.
    let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
    ready
}

/// The private server shared by every test of this process. Statics are
/// never dropped: its guardian stops it when the process exits.
static SHARED: Mutex<Option<Arc<PgServer>>> = Mutex::new(None);

fn shared_server() -> Result<Arc<PgServer>, TestkitError> {
    // Held across the start so two tests never start two servers.
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = slot.as_ref() {
        return Ok(server.clone());
    }
    let server = Arc::new(PgServer::start()?);
    *slot = Some(server.clone());
    Ok(server)
}

/// A fresh, empty database for one test, dropped with this value.
pub struct TestDb {
    /// URL of the new database.
    url: String,
    /// URL of the database we connected to for CREATE/DROP DATABASE.
    admin_url: String,
    /// `herald_test_<32 hex>`.
    name: String,
    /// The shared private server (`None` on `HERALD_TEST_DATABASE_URL`).
    server: Option<Arc<PgServer>>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("name", &self.name).finish()
    }
}

impl TestDb {
    /// `postgres://...` of this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name (`herald_test_<hex>`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    /// `DROP DATABASE ... WITH (FORCE)` (closing connections the test left
    /// open), on a thread of its own so it works inside or outside a runtime.
    /// On a shared server (`HERALD_TEST_DATABASE_URL`) we wait for it; on the
    /// private one it runs in the background (the whole server goes away at
    /// exit anyway; dropping only bounds its disk use in long runs).
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        let dropping = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), drop_database(&admin, &name))
                    .await
                    .map_err(|_| "timed out".to_string())?
            })
        });
        if self.server.is_some() {
            return;
        }
        match dropping.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

/// A fresh database for one test (DESIGN.md "Real parts in tests").
///
/// With `HERALD_TEST_DATABASE_URL` set: `CREATE DATABASE herald_test_<hex>`
/// on that server. Otherwise on a private [`PgServer`] shared by the tests of
/// this process that run at the same time. Either way the database is new and
/// empty and is dropped with the returned value.
///
/// Panics, saying what to install, when neither is available: a missing
/// PostgreSQL is a failure, never a silent skip.
pub async fn test_database() -> TestDb {
    let from_env = std::env::var("HERALD_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let (admin_url, server, source) = match from_env {
        Some(url) => (url, None, "HERALD_TEST_DATABASE_URL".to_string()),
        None => {
            let server = tokio::task::spawn_blocking(shared_server)
                .await
                .expect("starting the private PostgreSQL server panicked")
                .unwrap_or_else(|e| {
                    panic!("cannot start a private PostgreSQL server for tests: {e}")
                });
            (
                server.url(),
                Some(server),
                "the private PostgreSQL server".to_string(),
            )
        }
    };
    let name = format!("herald_test_{}", random_hex());
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {source}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {source} failed: {e}"));
    let _ = conn.close().await;
    TestDb {
        url: with_database(&admin_url, &name),
        admin_url,
        name,
        server,
    }
}

/// `url` with its database (path) replaced by `db`, query string kept.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let (before_query, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    format!("{scheme}{authority}/{db}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_in_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5/test", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
    }

    async fn select_one(url: &str) -> i32 {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let v: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_server_starts_kills_restarts() {
        let mut pg = tokio::task::spawn_blocking(PgServer::start)
            .await
            .unwrap()
            .unwrap();
        let url = pg.url();
        assert!(url.starts_with("postgres://herald@127.0.0.1:"), "{url}");
        assert_eq!(select_one(&url).await, 1);

        // Data survives a crash and restart on the same port.
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (v INT)")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (7)")
            .execute(&mut c)
            .await
            .unwrap();
        drop(c);
        let port = pg.port();
        let mut pg = tokio::task::spawn_blocking(move || {
            pg.kill();
            pg
        })
        .await
        .unwrap();
        assert!(
            sqlx::PgConnection::connect(&url).await.is_err(),
            "killed server answers"
        );
        let pg = tokio::task::spawn_blocking(move || {
            pg.restart().unwrap();
            pg
        })
        .await
        .unwrap();
        assert_eq!(pg.port(), port);
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let v: i32 = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(v, 7);
        drop(c);

        // Drop stops it: the port stops answering and the dir is gone.
        let dir = pg.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
        assert!(!accepts_startup(port));
        assert!(!dir.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_databases_are_distinct_and_dropped() {
        let a = test_database().await;
        let b = test_database().await;
        assert_ne!(a.url(), b.url());
        assert_ne!(a.name(), b.name());
        assert_eq!(select_one(a.url()).await, 1);

        let mut ca = sqlx::PgConnection::connect(a.url()).await.unwrap();
        sqlx::query("CREATE TABLE only_in_a (v INT)")
            .execute(&mut ca)
            .await
            .unwrap();
        let mut cb = sqlx::PgConnection::connect(b.url()).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_a'",
        )
        .fetch_one(&mut cb)
        .await
        .unwrap();
        assert_eq!(n, 0, "databases must not share tables");
        drop(cb);

        // Dropping `a` (with a connection still open) removes its database
        // (in the background on the private server).
        let name = a.name().to_string();
        let admin = a.admin_url.clone();
        drop(a);
        crate::eventually(Duration::from_secs(10), "database dropped", || {
            let (admin, name) = (admin.clone(), name.clone());
            async move {
                let mut admin = sqlx::PgConnection::connect(&admin).await.unwrap();
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
                        .bind(&name)
                        .fetch_one(&mut admin)
                        .await
                        .unwrap();
                left == 0
            }
        })
        .await;
        drop(ca);
    }
}
