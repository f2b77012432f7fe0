//! A `herald dev` the load generator starts and owns, for a scenario that
//! ends the server itself (`drain`): only the parent can read a process's
//! exit status and see the exit as it happens, and the drain window is a
//! flag of the server.
//!
//! Invariants: it listens on 127.0.0.1 (a free port), with fresh secrets and
//! a fresh SQLite file in a directory of its own; it is SIGKILLed and the
//! directory removed when the value drops, so a failed or timed-out run
//! leaves nothing behind; its environment is cleared of `HERALD_*`, so the
//! shell cannot change what is measured (flags only).

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::target::Target;

/// How long a started server may take to answer `/healthz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried when the free port was taken before the server bound it.
const START_ATTEMPTS: usize = 3;
/// Log lines quoted when the server fails.
pub const TAIL_LINES: usize = 20;

/// The herald binary: `flag` (`--herald-bin` or `HERALD_BIN`) when given,
/// else `herald` beside this executable (`target/release/` holds both).
pub fn herald_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating herald-loadgen")?
            .with_file_name("herald"),
    };
    if !path.is_file() {
        bail!(
            "herald binary not found at {} (build it with `cargo build --release -p herald`, \
             or pass --herald-bin / HERALD_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// A running `herald dev`, killed on drop.
pub struct DevServer {
    child: Child,
    pid: u32,
    dir: PathBuf,
    /// Where it listens (one listener: `/ws`, `/v1/*` and `/healthz`),
    /// with the secrets it was given.
    pub target: Target,
}

/// 32 random hex characters.
fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl DevServer {
    /// Runs `bin dev --listen 127.0.0.1:<free port> --database-url
    /// sqlite://<dir>/herald.db --jwt-secret <s> --api-key <k> <args...>`,
    /// logging to `<dir>/herald.log`; returns once `GET /healthz` answers
    /// 200, or fails with the log's tail.
    pub async fn start(bin: &Path, args: &[String]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "herald-loadgen-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let mut s = match Self::spawn(bin, &dir, args) {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            match s.wait_ready().await {
                Ok(()) => return Ok(s),
                // Someone took the port between our probe and the bind: the
                // next attempt gets a fresh one (and `s` is dropped, killed).
                Err(e) if s.log_tail(TAIL_LINES).contains("Address already in use") => {
                    s.dir = PathBuf::new();
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("herald did not start")))
    }

    fn spawn(bin: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let (secret, key) = (random_hex(), random_hex());
        let log = std::fs::File::create(dir.join("herald.log")).context("creating herald.log")?;
        let mut cmd = Command::new(bin);
        cmd.arg("dev")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--database-url",
                &format!("sqlite://{}", dir.join("herald.db").display()),
            ])
            .args(["--jwt-secret", &secret, "--api-key", &key])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("herald.log")?)
            .stderr(log)
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the child has a pid until reaped")?;
        let target = Target::new(&[format!("http://127.0.0.1:{port}")], &key, &secret)?;
        Ok(Self {
            child,
            pid,
            dir: dir.to_path_buf(),
            target,
        })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "herald exited before it was ready ({status}); its log ends:\n{}",
                    self.log_tail(TAIL_LINES)
                );
            }
            // The process we started: its target is its one listener.
            if healthz(self.target.ws_addr(0)).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "herald did not answer /healthz within {READY_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail(TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGTERM (graceful drain).
    pub fn terminate(&self) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).context("sending SIGTERM")?;
        Ok(())
    }

    /// Waits for the exit (cancel-safe: the child is reaped once).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGKILLs it and waits for the exit.
    pub async fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.child.kill().await?;
        self.child.wait().await
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("herald.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether `GET /healthz` on `addr` answers 200 (one short request, 1 s
/// bound).
async fn healthz(addr: SocketAddr) -> bool {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ask).await,
        Ok(Some(true))
    )
}
