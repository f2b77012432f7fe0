//! Child processes of the test kit: finding binaries, stopping by PID with a
//! deadline, log tails.
//!
//! Invariant: a PID is only signalled while its `Child` has not been reaped
//! (a zombie keeps the PID reserved), so a stop can never hit an unrelated
//! process that reused the number. Nothing here matches processes by name.
//!
//! [`Guardian`]: a server must not outlive the test process, even one that
//! is SIGKILLed or aborts (no destructor runs then). Each server gets a tiny
//! `sh` watcher blocked reading a pipe whose only writer is the test
//! process; the kernel closes it when the process dies, and the watcher
//! stops the server by PID and removes its temp dir.

use crate::TestkitError;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Pause between two polls of a condition in the synchronous starters.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// The one place that blocks the thread between polls. `std::thread::sleep`
/// is banned in the workspace to keep fixed sleeps out of tests; here it is
/// the interval of a loop that always has a deadline, in synchronous code
/// that has no runtime to yield to.
#[allow(clippy::disallowed_methods)]
pub(crate) fn pause() {
    std::thread::sleep(POLL);
}

/// Looks for `name` in each directory of `PATH`, then in `extra` directories.
pub(crate) fn find_in_path(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Whether `p` is a regular file with an execute bit.
pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `Pid` from a `u32` child id (always fits: Linux PIDs are below 2^22).
pub(crate) fn pid_of(id: u32) -> Pid {
    Pid::from_raw(i32::try_from(id).expect("PIDs fit in i32"))
}

/// Sends `sig` to `pid`; errors (already gone) are ignored.
pub(crate) fn signal(pid: Pid, sig: Signal) {
    let _ = kill(pid, sig);
}

/// Waits until `child` exits or `timeout` passes. `None` on timeout.
pub(crate) fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // ECHILD: someone else reaped it; treat as gone.
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        pause();
    }
}

/// Whether the child has not been reaped yet (still running or a zombie).
pub(crate) fn is_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Stops `child`: `first` to `pid` (which may differ from the child's own
/// PID, e.g. postgres' `postmaster.pid`), wait up to `grace`, then SIGKILL to
/// both and wait for the exit.
pub(crate) fn stop(child: &mut Child, pid: Pid, first: Signal, grace: Duration) {
    if !is_running(child) {
        return;
    }
    signal(pid, first);
    if wait_deadline(child, grace).is_some() {
        return;
    }
    signal(pid, Signal::SIGKILL);
    signal(pid_of(child.id()), Signal::SIGKILL);
    let _ = child.wait();
}

/// SIGKILL and reap.
pub(crate) fn kill_now(child: &mut Child) {
    if is_running(child) {
        signal(pid_of(child.id()), Signal::SIGKILL);
        let _ = child.wait();
    }
}

/// Stops a server when the test process dies without stopping it (see the
/// file header). Dropping the guardian (the normal stop path, after the
/// server was stopped) kills the watcher first, so it never signals a PID
/// that was already reaped.
pub(crate) struct Guardian {
    watcher: Child,
}

impl Guardian {
    /// Watches `pid`: on our death, `sig` to it, up to 10 s for it to exit,
    /// SIGKILL, then `rm -rf dir`. `sig` is a name `kill` takes (`INT`).
    pub(crate) fn watch(pid: u32, sig: &str, dir: &Path) -> Result<Guardian, TestkitError> {
        // Arguments are positional ($1..$3), never spliced into the script.
        const SCRIPT: &str = r#"read _ignored
kill -"$2" "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL "$1" 2>/dev/null
rm -rf "$3""#;
        let watcher = std::process::Command::new("sh")
            .args(["-c", SCRIPT, "herald-testkit-guardian"])
            .arg(pid.to_string())
            .arg(sig)
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Guardian { watcher })
    }
}

#[cfg(test)]
impl Guardian {
    /// What the test process's death does: close the pipe.
    fn trigger(&mut self) {
        drop(self.watcher.stdin.take());
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        kill_now(&mut self.watcher);
    }
}

/// The last `n` lines of a log file (empty when it cannot be read). Reads at
/// most the last 256 KiB so a chatty process does not slow a failing test.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX {
        let _ = f.seek(SeekFrom::Start(len - MAX));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Opens (appending) the log a child writes its stdout and stderr to, and
/// returns the two handles.
pub(crate) fn log_stdio(
    path: &Path,
) -> Result<(std::process::Stdio, std::process::Stdio), TestkitError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let f2 = f.try_clone()?;
    Ok((f.into(), f2.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        let d = crate::temp_dir();
        let p = d.path().join("log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&p, 2), "c\nd");
        assert_eq!(log_tail(&p, 10), "a\nb\nc\nd");
        assert_eq!(log_tail(&d.path().join("missing"), 3), "");
    }

    #[test]
    fn guardian_stops_server_and_removes_dir_when_pipe_closes() {
        let dir = crate::temp_dir().keep();
        std::fs::write(dir.join("f"), "x").unwrap();
        let mut server = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut g = Guardian::watch(server.id(), "INT", &dir).unwrap();
        g.trigger();
        assert!(wait_deadline(&mut server, Duration::from_secs(10)).is_some());
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.exists() && Instant::now() < deadline {
            pause();
        }
        assert!(!dir.exists(), "guardian removes the dir");
    }

    #[test]
    fn dropped_guardian_does_nothing() {
        let dir = crate::temp_dir();
        let mut server = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        drop(Guardian::watch(server.id(), "KILL", dir.path()).unwrap());
        assert!(wait_deadline(&mut server, Duration::from_millis(300)).is_none());
        assert!(dir.path().exists());
        kill_now(&mut server);
    }

    #[test]
    fn finds_sh() {
        assert!(find_in_path("sh", &[]).is_some());
        assert!(find_in_path("no-such-binary-herald", &[]).is_none());
    }
}
