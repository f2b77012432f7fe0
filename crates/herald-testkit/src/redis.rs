//! Private Redis servers: `redis-server` on a free 127.0.0.1 port in a temp
//! dir, no persistence, killed by PID when dropped.
//!
//! Invariant: the port is fixed for the value's life, so a fault test can
//! [`RedisServer::kill`] and [`RedisServer::restart`] it and clients reconnect
//! to the same URL.

use crate::child::{self, Guardian};
use crate::{TestkitError, free_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take to answer PING after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A private `redis-server`, killed when dropped.
pub struct RedisServer {
    /// Working dir (`--dir`) and log; removed after the server stops.
    dir: TempDir,
    /// The `redis-server` binary.
    bin: PathBuf,
    /// Fixed for the value's life.
    port: u16,
    /// `None` after `kill`.
    child: Option<Child>,
    /// Kills the server and removes `dir` if we die without `Drop`.
    guardian: Option<Guardian>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .finish()
    }
}

impl RedisServer {
    /// Starts `redis-server --port P --bind 127.0.0.1 --save "" --appendonly
    /// no --dir TMP` and returns once it answers `PING` (deadline 20 s).
    ///
    /// Errors: [`TestkitError::MissingBinary`] when `redis-server` is not
    /// installed (Debian package `redis-server`).
    pub fn start() -> Result<RedisServer, TestkitError> {
        let bin = child::find_in_path(
            "redis-server",
            &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")],
        )
        .ok_or_else(|| TestkitError::MissingBinary {
            name: "redis-server".into(),
            install_hint: "the Debian package `redis-server` (apt-get install -y redis-server)"
                .into(),
        })?;
        let mut server = RedisServer {
            dir: crate::temp_dir(),
            bin,
            port: 0,
            child: None,
            guardian: None,
        };
        // The free port can be taken before redis binds it: retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(TestkitError::Failed(msg))
                    if attempt < 3 && msg.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL and wait for the exit: every connection drops, every
    /// subscription is gone (nothing is persisted).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            child::kill_now(&mut c);
        }
        self.guardian = None;
    }

    /// Starts the server again on the same port (killing it first when it
    /// runs); returns once it answers `PING`.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill();
        self.spawn_and_wait()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), TestkitError> {
        let (out, err) = child::log_stdio(&self.log_path())?;
        let child = Command::new(&self.bin)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        self.guardian = Some(Guardian::watch(child.id(), "KILL", self.dir.path())?);
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let Some(c) = self.child.as_mut() else {
                return Err(TestkitError::Failed("redis-server is not running".into()));
            };
            if let Some(status) = c.try_wait()? {
                self.child = None;
                self.guardian = None;
                return Err(TestkitError::Failed(format!(
                    "redis-server exited with {status} before answering PING; last lines of its log:\n{}",
                    child::log_tail(&self.log_path(), 50)
                )));
            }
            if pong(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(TestkitError::Timeout(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; last lines of its log:\n{}",
                    self.port,
                    child::log_tail(&self.log_path(), 50)
                )));
            }
            child::pause();
        }
    }

    /// The child's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisServer {
    /// SIGKILL by PID and wait: nothing to flush (no persistence).
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server on `port` answers `PING` with `+PONG`.
pub(crate) fn pong(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_kills_restarts_on_same_port() {
        let mut r = RedisServer::start().unwrap();
        let port = r.port();
        assert_eq!(r.url(), format!("redis://127.0.0.1:{port}"));
        assert!(pong(port));

        r.kill();
        assert!(!pong(port), "killed server still answers");
        assert!(r.pid().is_none());

        r.restart().unwrap();
        assert_eq!(r.port(), port);
        assert!(pong(port));

        let pid = r.pid().unwrap();
        drop(r);
        assert!(!pong(port), "dropped server still answers");
        // The PID is gone (reaped), not a zombie or a survivor.
        assert!(nix::sys::signal::kill(child::pid_of(pid), None).is_err());
    }

    #[test]
    fn two_servers_get_two_ports() {
        let a = RedisServer::start().unwrap();
        let b = RedisServer::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert!(pong(a.port()) && pong(b.port()));
    }
}
