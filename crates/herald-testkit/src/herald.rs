//! Real `herald` processes for end-to-end tests.
//!
//! [`HeraldProcess::start`] runs the binary built by `cargo build -p herald`
//! on a free 127.0.0.1 port with a fresh temp dir (SQLite file, config, log),
//! fresh secrets, and an environment cleared of the parent's `HERALD_*`
//! variables, so a developer's shell never leaks into a test.
//!
//! Invariants: the temp dir lives as long as the value (restarts reuse it:
//! same database, same log); the process is SIGKILLed and reaped when the
//! value drops; readiness is `GET /healthz` answering 200, with a deadline.

use crate::child::{self, Guardian, pid_of};
use crate::{free_port, random_hex};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// How long a started herald may take to answer `/healthz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines shown when a start fails.
const TAIL_LINES: usize = 50;

/// The `herald` binary: `HERALD_BIN` when set, else `<target dir>/debug/herald`
/// (`CARGO_TARGET_DIR` when set, else `target/` of the workspace root, found
/// by walking up from `CARGO_MANIFEST_DIR` to the directory with
/// `Cargo.lock`).
///
/// Panics when the file is missing: build it first (`scripts/test` does).
pub fn herald_bin() -> PathBuf {
    let path = match std::env::var_os("HERALD_BIN").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => target_dir().join("debug").join("herald"),
    };
    if !path.is_file() {
        panic!(
            "herald binary not found at {}: run `cargo build -p herald` first (scripts/test does)",
            path.display()
        );
    }
    path
}

/// The workspace root: the nearest ancestor of `CARGO_MANIFEST_DIR` (runtime
/// value, else this crate's) that holds `Cargo.lock`.
fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_relative() {
                workspace_root().join(t)
            } else {
                t
            }
        }
        None => workspace_root().join("target"),
    }
}

/// How to run one herald process. Start from `Default` and change fields.
#[derive(Debug, Clone)]
pub struct HeraldOptions {
    /// `dev`, `gateway`, `ingest`, ... (default `dev`).
    pub subcommand: String,
    /// Extra CLI arguments, appended after the ones the kit passes.
    pub args: Vec<String>,
    /// Extra environment variables. The child's environment is first cleared
    /// of every `HERALD_*` variable of the parent (`RUST_LOG` passes through).
    pub env: Vec<(String, String)>,
    /// When set: written to `<tmpdir>/herald.toml` and passed as `--config`.
    pub config_toml: Option<String>,
    /// `--database-url` (default `sqlite://<tmpdir>/herald.db`).
    pub database_url: Option<String>,
    /// `--jwt-secret` (default: 32 random hex chars).
    pub jwt_secret: String,
    /// `--api-key` (default: 32 random hex chars).
    pub api_key: String,
    /// Wait for `/healthz` to answer 200 before `start` returns (default true).
    pub wait_ready: bool,
}

impl Default for HeraldOptions {
    fn default() -> Self {
        Self {
            subcommand: "dev".into(),
            args: Vec::new(),
            env: Vec::new(),
            config_toml: None,
            database_url: None,
            jwt_secret: random_hex(),
            api_key: random_hex(),
            wait_ready: true,
        }
    }
}

/// A running `herald`, SIGKILLed when dropped.
pub struct HeraldProcess {
    /// The public port (`--listen 127.0.0.1:PORT`), kept across restarts.
    pub port: u16,
    /// The port serving `/healthz`, `/readyz` and `/metrics`: `port` for
    /// `dev` (unless the options name an admin address), else a free port
    /// passed as `--admin-listen` so several nodes never collide on the
    /// default 9090/9091.
    pub admin_port: u16,
    /// The HS256 secret passed as `--jwt-secret`.
    pub jwt_secret: String,
    /// The key passed as `--api-key`.
    pub api_key: String,
    /// The database passed as `--database-url`.
    pub database_url: String,
    /// Options with `database_url` filled in: what `restart` runs again.
    opts: HeraldOptions,
    /// Whether the kit passes `--admin-listen` itself.
    pass_admin: bool,
    /// `None` only between a kill and the next start.
    child: Option<Child>,
    /// Exit status once reaped.
    exited: Option<ExitStatus>,
    /// Kills the process and removes `dir` if the test process dies without
    /// `Drop`.
    guardian: Option<Guardian>,
    /// Database, config and log; lives as long as this value.
    dir: TempDir,
}

impl std::fmt::Debug for HeraldProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeraldProcess")
            .field("subcommand", &self.opts.subcommand)
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl HeraldProcess {
    /// Spawns `herald <subcommand> --listen 127.0.0.1:<free port>
    /// --database-url <url> --jwt-secret <s> --api-key <k> [--admin-listen
    /// 127.0.0.1:<free port>] [--config f] <args...>`, logging stdout and
    /// stderr to a file in its temp dir. With `wait_ready`, returns once
    /// `GET /healthz` answers 200; panics with the last 50 log lines when the
    /// process exits first or 30 s pass.
    pub async fn start(opts: HeraldOptions) -> HeraldProcess {
        let dir = crate::temp_dir();
        let mut opts = opts;
        let database_url = opts
            .database_url
            .get_or_insert_with(|| format!("sqlite://{}", dir.path().join("herald.db").display()))
            .clone();
        if let Some(toml) = &opts.config_toml {
            std::fs::write(dir.path().join("herald.toml"), toml)
                .expect("writing herald.toml into the test's temp dir");
        }
        let port = free_port();
        let (admin_port, pass_admin) = match admin_port_in(&opts) {
            Some(p) => (p, false),
            None if opts.subcommand == "dev" => (port, false),
            None => (free_port(), true),
        };
        let mut p = HeraldProcess {
            port,
            admin_port,
            jwt_secret: opts.jwt_secret.clone(),
            api_key: opts.api_key.clone(),
            database_url,
            opts,
            pass_admin,
            child: None,
            exited: None,
            guardian: None,
            dir,
        };
        p.spawn();
        if p.opts.wait_ready {
            // A free port can be taken by someone else between our probe and
            // herald's bind: on that failure only, retry on fresh ports.
            let mut attempts = 1;
            while let Err(log) = p.wait_ready_once().await {
                if attempts < 3 && log.contains("Address already in use") {
                    attempts += 1;
                    p.port = free_port();
                    if p.pass_admin {
                        p.admin_port = free_port();
                    } else if p.opts.subcommand == "dev" && admin_port_in(&p.opts).is_none() {
                        p.admin_port = p.port;
                    }
                    p.spawn();
                    continue;
                }
                panic!("{log}");
            }
        }
        p
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// `http://127.0.0.1:ADMIN_PORT` (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The process id (of the current run, after a restart the new one).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("herald is running between start and kill")
    }

    /// Everything the process (every run of it) wrote to stdout and stderr.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// The temp dir holding the log, config and default SQLite file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGTERM (graceful drain, DESIGN.md guarantee 6).
    pub fn signal_term(&self) {
        if let Some(c) = &self.child
            && self.exited.is_none()
        {
            child::signal(pid_of(c.id()), Signal::SIGTERM);
        }
    }

    /// SIGKILL and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut()
            && self.exited.is_none()
        {
            child::kill_now(c);
            self.exited = c.try_wait().ok().flatten();
        }
        self.guardian = None;
    }

    /// Waits up to `timeout` for the process to exit; `None` on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.poll_exit() {
                return Some(st);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process and starts it again with the same options, port,
    /// secrets, database and temp dir; waits for readiness as `start` does.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        if self.opts.wait_ready {
            self.wait_ready().await;
        }
    }

    /// The options this process runs with (`database_url` filled in).
    pub fn options(&self) -> &HeraldOptions {
        &self.opts
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("herald.log")
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Some(c) = self.child.as_mut()
        {
            self.exited = c.try_wait().ok().flatten();
            if self.exited.is_some() {
                // Reaped: its PID may be reused, the watcher must not act.
                self.guardian = None;
            }
        }
        self.exited
    }

    fn spawn(&mut self) {
        let (out, err) =
            child::log_stdio(&self.log_path()).expect("opening herald.log in the temp dir");
        let mut cmd = Command::new(herald_bin());
        cmd.arg(&self.opts.subcommand)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--jwt-secret")
            .arg(&self.jwt_secret)
            .arg("--api-key")
            .arg(&self.api_key);
        if self.pass_admin {
            cmd.arg("--admin-listen")
                .arg(format!("127.0.0.1:{}", self.admin_port));
        }
        if self.opts.config_toml.is_some() {
            cmd.arg("--config").arg(self.dir.path().join("herald.toml"));
        }
        cmd.args(&self.opts.args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", herald_bin().display()));
        self.guardian = Some(
            Guardian::watch(child.id(), "KILL", self.dir.path())
                .expect("spawning the guardian shell (sh)"),
        );
        self.child = Some(child);
        self.exited = None;
    }

    async fn wait_ready(&mut self) {
        if let Err(msg) = self.wait_ready_once().await {
            panic!("{msg}");
        }
    }

    /// Waits for `/healthz`; on exit or timeout, the failure with the log.
    async fn wait_ready_once(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.poll_exit() {
                return Err(format!(
                    "herald {} exited with {status} before /healthz answered 200; last {TAIL_LINES} lines of its log:\n{}",
                    self.opts.subcommand,
                    child::log_tail(&self.log_path(), TAIL_LINES)
                ));
            }
            if healthz_ok(self.admin_port).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "herald {} did not answer 200 on http://127.0.0.1:{}/healthz within {READY_TIMEOUT:?}; last {TAIL_LINES} lines of its log:\n{}",
                    self.opts.subcommand,
                    self.admin_port,
                    child::log_tail(&self.log_path(), TAIL_LINES)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HeraldProcess {
    /// SIGKILL by PID and reap; the temp dir goes after.
    fn drop(&mut self) {
        self.kill();
    }
}

/// The admin port the options already name (`--admin-listen ADDR`,
/// `--admin-listen=ADDR` or `HERALD_ADMIN_LISTEN`), if any.
fn admin_port_in(opts: &HeraldOptions) -> Option<u16> {
    let from_args = opts.args.iter().enumerate().find_map(|(i, a)| {
        if a == "--admin-listen" {
            opts.args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--admin-listen=").map(str::to_string)
        }
    });
    let addr = from_args.or_else(|| {
        opts.env
            .iter()
            .find(|(k, _)| k == "HERALD_ADMIN_LISTEN")
            .map(|(_, v)| v.clone())
    })?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Whether `GET /healthz` on 127.0.0.1:`port` answers 200 (one HTTP/1.1
/// request on a fresh connection, 2 s budget).
async fn healthz_ok(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req =
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(64);
        // The status line is all we need.
        while !buf.contains(&b'\n') {
            let mut chunk = [0u8; 256];
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        Some(line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_has_cargo_lock() {
        assert!(workspace_root().join("Cargo.lock").is_file());
        assert!(target_dir().ends_with("target") || std::env::var_os("CARGO_TARGET_DIR").is_some());
    }

    #[test]
    fn defaults() {
        let a = HeraldOptions::default();
        let b = HeraldOptions::default();
        assert_eq!(a.subcommand, "dev");
        assert!(a.wait_ready);
        assert_eq!(a.jwt_secret.len(), 32);
        assert_eq!(a.api_key.len(), 32);
        assert_ne!(a.jwt_secret, b.jwt_secret);
        assert_ne!(a.jwt_secret, a.api_key);
    }

    #[test]
    fn admin_port_from_options() {
        let mut o = HeraldOptions::default();
        assert_eq!(admin_port_in(&o), None);
        o.args = vec!["--admin-listen".into(), "127.0.0.1:4321".into()];
        assert_eq!(admin_port_in(&o), Some(4321));
        o.args = vec!["--admin-listen=127.0.0.1:4322".into()];
        assert_eq!(admin_port_in(&o), Some(4322));
        o.args.clear();
        o.env = vec![("HERALD_ADMIN_LISTEN".into(), "127.0.0.1:4323".into())];
        assert_eq!(admin_port_in(&o), Some(4323));
    }

    /// A tiny HTTP server standing in for herald's `/healthz`.
    #[tokio::test]
    async fn healthz_probe() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        assert!(!healthz_ok(port).await);
        assert!(healthz_ok(port).await);
        server.await.unwrap();
        assert!(!healthz_ok(port).await, "nothing listens any more");
    }
}
