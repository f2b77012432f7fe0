//! A private nginx load balancer in front of herald gateways: round robin
//! over the given upstream ports, WebSocket upgrade passed through, on a
//! free 127.0.0.1 port in a temp dir, killed by PID when dropped.
//!
//! It runs with `master_process off`, so one process serves and no worker
//! switches user: nothing outside its temp dir is touched.

use crate::child::{self, Guardian};
use crate::{TestkitError, free_port};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A private nginx.
pub struct Nginx {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    guardian: Option<Guardian>,
}

impl std::fmt::Debug for Nginx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nginx").field("port", &self.port).finish()
    }
}

impl Nginx {
    /// Starts nginx balancing over `upstreams` (127.0.0.1 ports); returns
    /// once it accepts connections (deadline 20 s). A gateway that refuses
    /// or answers 503 (draining) is skipped for the next one.
    ///
    /// Errors: [`TestkitError::MissingBinary`] when nginx is not installed
    /// (Debian package `nginx`).
    pub fn start(upstreams: &[u16]) -> Result<Nginx, TestkitError> {
        let bin = child::find_in_path(
            "nginx",
            &[PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")],
        )
        .ok_or_else(|| TestkitError::MissingBinary {
            name: "nginx".into(),
            install_hint: "the Debian package `nginx` (apt-get install -y nginx)".into(),
        })?;
        let dir = crate::temp_dir();
        let port = free_port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let conf = format!(
            "master_process off;\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             \x20   map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             \x20   upstream gateways {{\n{servers}    }}\n\
             \x20   server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            proxy_pass http://gateways;\n            proxy_http_version 1.1;\n            proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;\n            proxy_read_timeout 3600s;\n            proxy_next_upstream error timeout http_503;\n        }}\n    }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let (out, err) = child::log_stdio(&dir.path().join("nginx.log"))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        let guardian = Some(Guardian::watch(child.id(), "KILL", dir.path())?);
        let mut n = Nginx {
            dir,
            port,
            child: Some(child),
            guardian,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(n);
            }
            if let Some(c) = n.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                n.child = None;
                return Err(TestkitError::Failed(format!(
                    "nginx exited with {status}; its log:\n{}\n{}",
                    child::log_tail(&n.dir.path().join("nginx.log"), 30),
                    child::log_tail(&n.dir.path().join("error.log"), 30)
                )));
            }
            if Instant::now() > deadline {
                return Err(TestkitError::Timeout(
                    "nginx did not accept connections within 20 s".into(),
                ));
            }
            child::pause();
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            child::kill_now(&mut c);
        }
        self.guardian = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_proxies_to_an_upstream() {
        // A one-shot upstream that answers a plain HTTP request.
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up_port = up.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = up.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .unwrap();
        });
        let n = Nginx::start(&[up_port]).unwrap();
        use std::io::{Read, Write};
        let mut c = TcpStream::connect(("127.0.0.1", n.port())).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok"), "{out}");
        server.join().unwrap();
    }
}
