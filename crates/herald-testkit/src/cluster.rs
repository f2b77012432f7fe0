//! Private Redis Clusters: `redis-server --cluster-enabled yes` nodes on free
//! 127.0.0.1 ports in one temp dir, joined by `redis-cli --cluster create`,
//! killed by PID when dropped.
//!
//! Invariants: every node's port P has P+10000 (its cluster bus port) free
//! when chosen; [`RedisCluster::start`] returns only once every node reports
//! `cluster_state:ok` and every replica's link to its master is up; a node is
//! only ever signalled through its own `Child` (never by name). Talks to the
//! nodes with a few raw RESP commands (no client crate: this kit depends on
//! no herald crate and no Redis client).

use crate::child;
use crate::{TestkitError, free_port};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a node may take to answer PING after its start.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the cluster may take to become `cluster_state:ok` with all
/// replicas in sync after `redis-cli --cluster create`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Cluster node timeout: a dead master is failed over about this long after
/// it stops answering.
const NODE_TIMEOUT_MS: u32 = 2000;

/// One `redis-server` of the cluster.
struct Node {
    /// Client port (cluster bus on port + 10000).
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

/// A private Redis Cluster, every node killed when dropped.
pub struct RedisCluster {
    /// Working dir (`--dir`: `nodes-P.conf`, logs); removed after the nodes stop.
    dir: TempDir,
    /// The `redis-server` binary.
    server_bin: PathBuf,
    /// Masters first, then replicas, in `--cluster create` order.
    nodes: Vec<Node>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field(
                "ports",
                &self.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes (`redis-server
    /// --port P --cluster-enabled yes --cluster-config-file nodes-P.conf
    /// --cluster-node-timeout 2000 --bind 127.0.0.1 --save "" --appendonly no
    /// --dir TMP`), joins them with `redis-cli --cluster create ...
    /// --cluster-replicas R --cluster-yes`, and returns once the cluster is
    /// `ok` and every replica is in sync (deadline 60 s).
    ///
    /// Errors: [`TestkitError::MissingBinary`] when `redis-server` (Debian
    /// package `redis-server`) or `redis-cli` (Debian package `redis-tools`)
    /// is missing; `Failed` for fewer than 3 masters (Redis's minimum).
    pub fn start(masters: usize, replicas_per_master: usize) -> Result<Self, TestkitError> {
        if masters < 3 {
            return Err(TestkitError::Failed(format!(
                "a Redis Cluster needs at least 3 masters, asked for {masters}"
            )));
        }
        let extra = [PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")];
        let server_bin = child::find_in_path("redis-server", &extra).ok_or_else(|| {
            TestkitError::MissingBinary {
                name: "redis-server".into(),
                install_hint: "the Debian package `redis-server` (apt-get install -y redis-server)"
                    .into(),
            }
        })?;
        let cli_bin = child::find_in_path("redis-cli", &extra).ok_or_else(|| {
            TestkitError::MissingBinary {
                name: "redis-cli".into(),
                install_hint: "the Debian package `redis-tools` (apt-get install -y redis-tools)"
                    .into(),
            }
        })?;
        let mut cluster = RedisCluster {
            dir: crate::temp_dir(),
            server_bin,
            nodes: Vec::new(),
        };
        let total = masters * (1 + replicas_per_master);
        for _ in 0..total {
            cluster.start_node()?;
        }
        cluster.create(&cli_bin, replicas_per_master)?;
        cluster.wait_ready(total)?;
        Ok(cluster)
    }

    /// Every node as `redis://127.0.0.1:P`, comma-separated (herald's
    /// cluster URL form), killed nodes included.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client ports of all nodes, killed ones included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The port of the running master that serves the slot of
    /// `key_or_channel` (a key, or a sharded pub/sub channel: same hashing)
    /// as a running node sees it; `None` while no running master serves it
    /// (e.g. during a failover).
    pub fn master_of(&mut self, key_or_channel: &str) -> Result<Option<u16>, TestkitError> {
        let Some(ask) = self
            .live_ports()
            .into_iter()
            .find(|p| crate::redis::pong(*p))
        else {
            return Err(TestkitError::Failed("no cluster node answers PING".into()));
        };
        let slot = match command(ask, &["CLUSTER", "KEYSLOT", key_or_channel])? {
            Reply::Int(s) => s,
            other => {
                return Err(TestkitError::Failed(format!(
                    "CLUSTER KEYSLOT answered {other:?}"
                )));
            }
        };
        let Reply::Bulk(nodes) = command(ask, &["CLUSTER", "NODES"])? else {
            return Err(TestkitError::Failed(
                "CLUSTER NODES answered no text".into(),
            ));
        };
        let live = self.live_ports();
        Ok(master_for_slot(&nodes, slot).filter(|p| live.contains(p)))
    }

    /// SIGKILLs the master serving the slot of `key_or_channel` and returns
    /// its port. Panics (with the reason) when no running master serves it.
    pub fn kill_master_of(&mut self, key_or_channel: &str) -> u16 {
        let port = match self.master_of(key_or_channel) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("no running master serves the slot of {key_or_channel:?}"),
            Err(e) => panic!("cannot find the master of {key_or_channel:?}: {e}"),
        };
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut c) = node.child.take()
        {
            child::kill_now(&mut c);
        }
        port
    }

    /// The last lines of every node's log (for failure messages).
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- node {} ---\n{}",
                    n.port,
                    child::log_tail(&self.log_path(n.port), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn live_ports(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|n| {
                n.child
                    .as_mut()
                    .is_some_and(child::is_running)
                    .then_some(n.port)
            })
            .collect()
    }

    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("redis-{port}.log"))
    }

    /// Starts one node on a fresh port pair and waits for its PING; retries
    /// with new ports when one was taken meanwhile.
    fn start_node(&mut self) -> Result<(), TestkitError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = self.cluster_port()?;
            match self.spawn_node(port) {
                Ok(c) => {
                    self.nodes.push(Node {
                        port,
                        child: Some(c),
                    });
                    return Ok(());
                }
                Err(TestkitError::Failed(msg))
                    if attempt < 5 && msg.contains("Address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A port P with P and P+10000 free now and not used by another node.
    fn cluster_port(&self) -> Result<u16, TestkitError> {
        for _ in 0..200 {
            let p = free_port();
            let Some(bus) = p.checked_add(10000) else {
                continue;
            };
            let taken = self
                .nodes
                .iter()
                .any(|n| n.port == p || n.port.checked_add(10000) == Some(p) || n.port == bus);
            if taken {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
                return Ok(p);
            }
        }
        Err(TestkitError::Failed(
            "found no free port P with P+10000 free for a cluster node".into(),
        ))
    }

    fn spawn_node(&self, port: u16) -> Result<Child, TestkitError> {
        let log = self.log_path(port);
        let (out, err) = child::log_stdio(&log)?;
        let mut c = Command::new(&self.server_bin)
            .arg("--port")
            .arg(port.to_string())
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if let Some(status) = c.try_wait()? {
                return Err(TestkitError::Failed(format!(
                    "redis-server (cluster node, port {port}) exited with {status} before answering PING; last lines of its log:\n{}",
                    child::log_tail(&log, 50)
                )));
            }
            if crate::redis::pong(port) {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                child::kill_now(&mut c);
                return Err(TestkitError::Timeout(format!(
                    "cluster node on port {port} did not answer PING within {NODE_READY_TIMEOUT:?}; last lines of its log:\n{}",
                    child::log_tail(&log, 50)
                )));
            }
            child::pause();
        }
    }

    /// `redis-cli --cluster create` over all nodes.
    fn create(&self, cli_bin: &PathBuf, replicas: usize) -> Result<(), TestkitError> {
        let log = self.dir.path().join("cluster-create.log");
        let (out, err) = child::log_stdio(&log)?;
        let mut cmd = Command::new(cli_bin);
        cmd.args(["--cluster", "create"]);
        for n in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let mut c = cmd
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        match child::wait_deadline(&mut c, CLUSTER_READY_TIMEOUT) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(TestkitError::Failed(format!(
                "redis-cli --cluster create exited with {status}:\n{}",
                child::log_tail(&log, 50)
            ))),
            None => {
                child::kill_now(&mut c);
                Err(TestkitError::Timeout(format!(
                    "redis-cli --cluster create did not finish within {CLUSTER_READY_TIMEOUT:?}:\n{}",
                    child::log_tail(&log, 50)
                )))
            }
        }
    }

    /// Polls every node until it reports `cluster_state:ok`, knows every
    /// node, and (replicas) has its master link up.
    fn wait_ready(&self, total: usize) -> Result<(), TestkitError> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let known = format!("cluster_known_nodes:{total}");
        loop {
            let mut waiting = None;
            for n in &self.nodes {
                let info = match command(n.port, &["CLUSTER", "INFO"]) {
                    Ok(Reply::Bulk(s)) => s,
                    other => {
                        waiting = Some(format!("node {}: CLUSTER INFO -> {other:?}", n.port));
                        break;
                    }
                };
                if !info.contains("cluster_state:ok") || !info.contains(&known) {
                    waiting = Some(format!("node {}: {}", n.port, info.replace("\r\n", " ")));
                    break;
                }
                let repl = match command(n.port, &["INFO", "replication"]) {
                    Ok(Reply::Bulk(s)) => s,
                    other => {
                        waiting = Some(format!("node {}: INFO replication -> {other:?}", n.port));
                        break;
                    }
                };
                if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                    waiting = Some(format!("replica {} not in sync yet", n.port));
                    break;
                }
            }
            let Some(why) = waiting else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(TestkitError::Timeout(format!(
                    "cluster not ready within {CLUSTER_READY_TIMEOUT:?} ({why}); node logs:\n{}",
                    self.log_tails(20)
                )));
            }
            child::pause();
        }
    }
}

impl Drop for RedisCluster {
    /// SIGKILL every node by PID and reap it (nothing is persisted).
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                child::kill_now(&mut c);
            }
        }
    }
}

/// The port of the master (not flagged failing) whose slot ranges in a
/// `CLUSTER NODES` text hold `slot`.
fn master_for_slot(nodes: &str, slot: i64) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags) = (f.get(1)?, f.get(2)?);
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|x| x.starts_with("fail")) {
            return None;
        }
        let serves = f.iter().skip(8).any(|range| {
            if range.starts_with('[') {
                return false; // migrating/importing marker
            }
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<i64>(), hi.parse::<i64>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
        });
        if !serves {
            return None;
        }
        // `ip:port@cport[,hostname]`
        let hostport = addr.split('@').next()?;
        hostport.rsplit(':').next()?.parse().ok()
    })
}

/// A RESP reply (the kinds the commands above answer with).
// Payloads of `Simple` and `Error` are only shown through `Debug` in error
// messages, which dead-code analysis ignores.
#[allow(dead_code)]
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(String),
    Nil,
}

/// Sends one command to 127.0.0.1:`port` and reads its reply (2 s bounds).
fn command(port: u16, args: &[&str]) -> Result<Reply, TestkitError> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || TestkitError::Failed(format!("unexpected RESP reply {line:?}"));
    let (kind, rest) = (line.get(..1).ok_or_else(bad)?, line.get(1..).unwrap_or(""));
    match kind {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => rest.parse().map(Reply::Int).map_err(|_| bad()),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(Reply::Nil);
            };
            let mut buf = vec![0u8; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(Reply::Bulk(String::from_utf8_lossy(&buf).into_owned()))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [77->-x]
c3 127.0.0.1:7002@17002,host master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e5 127.0.0.1:7004@17004 master - 0 0 4 connected 12000
";
        assert_eq!(master_for_slot(text, 0), Some(7000));
        assert_eq!(master_for_slot(text, 5461), Some(7001));
        assert_eq!(master_for_slot(text, 11000), None, "failing master skipped");
        assert_eq!(master_for_slot(text, 12000), Some(7004));
    }

    #[test]
    fn starts_three_masters_and_kills_one() {
        let mut c = RedisCluster::start(3, 0).unwrap();
        assert_eq!(c.seeds().split(',').count(), 3);
        let port = c.master_of("herald:x").unwrap().unwrap();
        assert!(c.ports().contains(&port));
        assert!(matches!(command(port, &["PING"]).unwrap(), Reply::Simple(s) if s == "PONG"));
        assert_eq!(c.kill_master_of("herald:x"), port);
        assert!(!crate::redis::pong(port));
    }
}
