#![allow(clippy::unwrap_used)]
//! Smoke test of every scenario: the built `herald-loadgen` against a real
//! `herald dev` (debug build, from herald-testkit; `drain` starts that
//! binary itself), tiny sizes. Checks that
//! the figures are produced and agree with each other (delivered =
//! published x subscribers, nothing lost, duplicated or reordered,
//! percentiles ordered, memory read), never how fast anything was.

use herald_testkit::{HeraldOptions, HeraldProcess};
use serde_json::Value;
use std::time::Duration;

/// Bound on one loadgen run in this suite (each is a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

async fn herald() -> HeraldProcess {
    HeraldProcess::start(HeraldOptions::default()).await
}

/// Runs the loadgen against `h` with `args` (scenario and its flags);
/// returns the exit status and the parsed `RESULT` line.
async fn loadgen_status(h: &HeraldProcess, args: &[&str]) -> (Option<i32>, Value, String) {
    let url = h.http_url();
    let pid = h.pid().to_string();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-loadgen"));
    cmd.args([
        "--url",
        &url,
        "--api-key",
        &h.api_key,
        "--jwt-secret",
        &h.jwt_secret,
    ])
    .args(["--pid", &pid, "--drain", "5s"])
    .args(args)
    .env_remove("HERALD_API_KEY")
    .env_remove("HERALD_JWT_SECRET")
    .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .expect("loadgen finishes within its bound")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(herald_loadgen::RESULT_PREFIX))
        .unwrap_or_else(|| panic!("no RESULT line; stdout:\n{stdout}\nstderr:\n{stderr}"));
    (
        out.status.code(),
        serde_json::from_str(line).unwrap(),
        stdout,
    )
}

async fn loadgen(h: &HeraldProcess, args: &[&str]) -> Value {
    let (code, v, out) = loadgen_status(h, args).await;
    assert_eq!(
        code,
        Some(0),
        "loadgen failed:\n{out}\nherald log:\n{}",
        h.log()
    );
    assert_eq!(v["timed_out"], false, "{out}");
    v
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing or not an integer in {v}"))
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

/// p50 <= p90 <= p99 <= p99.9 <= max, and `count` samples.
fn ordered_percentiles(p: &Value, count: u64) {
    assert_eq!(p["count"], count, "{p}");
    let q: Vec<f64> = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"]
        .iter()
        .map(|k| p[k].as_f64().unwrap())
        .collect();
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{p}");
    if count > 0 {
        assert!(q[0] > 0.0, "{p}");
    }
}

/// Server figures: one process, memory read.
fn server_measured(v: &Value, pid: u32) {
    let s = &v["server"][0];
    assert_eq!(s["pid"], pid.to_string());
    assert!(
        u(s, "/rss_before_kb") > 0 && u(s, "/rss_after_kb") > 0,
        "{s}"
    );
    assert!(u(s, "/rss_peak_kb") >= u(s, "/rss_after_kb"), "{s}");
    assert!(f(s, "/cpu_s") >= 0.0);
    assert!(f(v, "/loadgen/cpu_s") >= 0.0);
    assert!(
        u(v, "/loadgen/rss_after_kb") > 0,
        "the loadgen measures itself"
    );
}

/// Delivery figures of a run that lost nothing.
fn consistent_delivery(d: &Value, published: u64, per_message: u64) {
    assert_eq!(u(d, "/published"), published, "{d}");
    assert_eq!(u(d, "/acknowledged"), published, "{d}");
    assert_eq!(u(d, "/publish_errors"), 0, "{d}");
    assert_eq!(u(d, "/subscribers_per_message"), per_message);
    assert_eq!(u(d, "/expected"), published * per_message, "{d}");
    assert_eq!(u(d, "/delivered"), published * per_message, "{d}");
    assert_eq!(u(d, "/lost"), 0, "{d}");
    assert_eq!(u(d, "/duplicates"), 0, "{d}");
    assert_eq!(u(d, "/reordered"), 0, "{d}");
    assert_eq!(u(d, "/foreign"), 0, "{d}");
    assert_eq!(u(d, "/complete_messages"), published, "{d}");
    assert!(f(d, "/delivered_per_s") > 0.0);
    ordered_percentiles(&d["latency"], published * per_message);
    ordered_percentiles(&d["last_subscriber"], published);
    ordered_percentiles(&d["publish_latency"], published);
    // The last subscriber is never earlier than the median delivery.
    assert!(f(d, "/last_subscriber/max_ms") >= f(d, "/latency/p50_ms"));
}

#[tokio::test]
async fn fanout() {
    let h = herald().await;
    let v = loadgen(
        &h,
        &[
            "fanout",
            "--subscribers",
            "20",
            "--rate",
            "20",
            "--duration",
            "2s",
        ],
    )
    .await;
    assert_eq!(v["scenario"], "fanout");
    assert_eq!(u(&v, "/connections/connected"), 20);
    assert_eq!(u(&v, "/connections/closed_by_server"), 0);
    consistent_delivery(&v["delivery"], 40, 20);
    server_measured(&v, h.pid());
    assert!(v["per_server_cpu_s"].is_number());
    // One --url: the RESULT line keeps its single-server shape.
    assert!(v["connections"].get("per_addr").is_none(), "{v}");
}

/// `--url` twice (here the same `herald dev` spelled two ways: a second
/// gateway needs the Redis topology, benches/topology.sh): connections
/// alternate between the URLs and every subscriber still gets every message.
#[tokio::test]
async fn fanout_over_two_urls() {
    let h = herald().await;
    let v = loadgen(
        &h,
        &[
            // After the suite's own --url (http://127.0.0.1:PORT).
            "--url",
            &h.ws_url(),
            "fanout",
            "--subscribers",
            "11",
            "--rate",
            "20",
            "--duration",
            "1s",
        ],
    )
    .await;
    assert_eq!(u(&v, "/connections/connected"), 11);
    let per: Vec<u64> = v["connections"]["per_addr"]
        .as_array()
        .unwrap_or_else(|| panic!("no per_addr in {v}"))
        .iter()
        .map(|a| a["connected"].as_u64().unwrap())
        .collect();
    assert_eq!(per, [6, 5]);
    consistent_delivery(&v["delivery"], 20, 11);
}

#[tokio::test]
async fn channels() {
    let h = herald().await;
    let v = loadgen(
        &h,
        &[
            "channels",
            "--connections",
            "20",
            "--dashboard-subscribers",
            "5",
            "--rate",
            "20",
            "--duration",
            "2s",
        ],
    )
    .await;
    assert_eq!(u(&v, "/connections/connected"), 20);
    // Each publish: its own channel's subscriber + 5 dashboards.
    consistent_delivery(&v["delivery"], 40, 6);
    server_measured(&v, h.pid());
}

#[tokio::test]
async fn connect_storm() {
    let h = herald().await;
    let v = loadgen(&h, &["connect", "--connections", "50"]).await;
    let c = &v["connections"];
    assert_eq!(
        (u(c, "/requested"), u(c, "/connected"), u(c, "/failed")),
        (50, 50, 0),
        "{c}"
    );
    assert!(f(c, "/connects_per_s") > 0.0 && f(c, "/connect_s") > 0.0);
    ordered_percentiles(&c["connect_latency"], 50);
    server_measured(&v, h.pid());
}

#[tokio::test]
async fn idle_memory() {
    let h = herald().await;
    let v = loadgen(
        &h,
        &[
            "idle",
            "--connections",
            "50",
            "--checkpoints",
            "20",
            "--settle",
            "200ms",
            "--hold",
            "200ms",
        ],
    )
    .await;
    assert_eq!(u(&v, "/connections/connected"), 50);
    let i = &v["idle"];
    assert!(
        u(i, "/rss_before_kb") > 0 && u(i, "/rss_connected_kb") > 0,
        "{i}"
    );
    assert!(u(i, "/rss_after_hold_kb") > 0);
    let points = i["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{i}");
    assert_eq!(u(&points[0], "/connections"), 20);
    assert_eq!(u(&points[1], "/connections"), 50);
    assert_eq!(points[1]["rss_kb"], i["rss_connected_kb"]);
    assert_eq!(points[1]["rss_per_conn_bytes"], i["rss_per_conn_bytes"]);
    assert!(f(i, "/rss_per_conn_bytes") >= 0.0);
    server_measured(&v, h.pid());
}

#[tokio::test]
async fn ingest_throughput() {
    let h = herald().await;
    let v = loadgen(
        &h,
        &[
            "ingest",
            "--duration",
            "2s",
            "--concurrency",
            "4",
            "--channels",
            "3",
        ],
    )
    .await;
    let i = &v["ingest"];
    let sent = u(i, "/sent");
    assert!(sent > 0);
    assert_eq!(u(i, "/persisted"), sent, "{i}");
    assert_eq!(u(i, "/errors"), 0);
    assert!(f(i, "/persisted_per_s") > 0.0 && f(i, "/elapsed_s") >= 2.0);
    ordered_percentiles(&i["latency"], sent);
    server_measured(&v, h.pid());
}

#[tokio::test]
async fn ramp_two_steps() {
    let h = herald().await;
    // The bound is a minute: this checks the bookkeeping, not speed.
    let v = loadgen(
        &h,
        &[
            "ramp",
            "--subscribers",
            "20",
            "--start",
            "10",
            "--step",
            "10",
            "--max-p99-ms",
            "60000",
            "--duration-per-step",
            "1s",
            "--max-steps",
            "2",
        ],
    )
    .await;
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{v}");
    for (s, rate) in steps.iter().zip([10u64, 20]) {
        assert_eq!(s["rate"], serde_json::json!(rate as f64));
        assert_eq!(s["passed"], true, "{s}");
        consistent_delivery(&s["delivery"], rate, 20);
    }
    assert_eq!(v["max_sustained_rate"], serde_json::json!(20.0));
    server_measured(&v, h.pid());
}

/// `drain` starts its own herald (the debug build here), so it runs without
/// `--url`, `--pid` or secrets. Checks that every connection saw 1012 (close
/// frame and `disconnect` frame) and the server exited 0; the times are
/// measured, not asserted, beyond their order.
#[tokio::test]
async fn drain_closes_every_connection_with_1012() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-loadgen"))
        .args(["drain", "--connections", "200", "--window", "1s"])
        .arg("--herald-bin")
        .arg(herald_testkit::herald_bin())
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_JWT_SECRET")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_TIMEOUT, out)
        .await
        .expect("loadgen finishes within its bound")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(herald_loadgen::RESULT_PREFIX))
        .unwrap_or_else(|| panic!("no RESULT line: {stdout}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["scenario"], "drain");
    assert_eq!(v["timed_out"], false, "{stdout}");
    assert_eq!(v["errors"], serde_json::json!([]), "{stdout}");
    let c = &v["connections"];
    assert_eq!((u(c, "/connected"), u(c, "/failed")), (200, 0), "{c}");
    let d = &v["drain"];
    assert_eq!(f(d, "/window_s"), 1.0);
    assert_eq!(
        (u(d, "/connections"), u(d, "/closed"), u(d, "/still_open")),
        (200, 200, 0),
        "{d}"
    );
    assert_eq!(d["codes"], serde_json::json!({ "1012": 200 }), "{d}");
    assert_eq!(u(d, "/disconnect_frames"), 200, "{d}");
    assert_eq!(u(d, "/disconnect_mismatches"), 0, "{d}");
    assert_eq!(u(d, "/closed_before_term"), 0, "{d}");
    assert_eq!(d["server_exit_code"], 0, "{d}");
    assert_eq!(d["server_exit_signal"], Value::Null, "{d}");
    assert_eq!(d["server_killed"], false, "{d}");
    assert!(f(d, "/server_exit_s") > 0.0, "{d}");
    ordered_percentiles(&d["close_time"], 200);
    assert!(f(d, "/first_1012_s") <= f(d, "/last_1012_s"), "{d}");
    assert_eq!(f(d, "/last_1012_s"), f(d, "/last_close_s"), "{d}");
    let tenths: Vec<u64> = d["per_tenth"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!((tenths.len(), tenths.iter().sum::<u64>()), (11, 200), "{d}");
    for k in ["/max_gap_ms", "/max_late_ms", "/max_early_ms"] {
        assert!(f(d, k) >= 0.0, "{d}");
    }
    assert!(u(d, "/server_rss_at_term_kb") > 0, "{d}");
    // The server is measured over the connect phase, up to the SIGTERM.
    let s = &v["server"][0];
    assert!(u(s, "/rss_after_kb") > 0, "{s}");
    assert!(
        stdout.contains("close codes") && stdout.contains("1012: 200"),
        "{stdout}"
    );
}

#[tokio::test]
async fn drain_refuses_a_server_it_did_not_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-loadgen"))
        .args(["--pid", "1", "drain", "--connections", "1"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("its own herald dev"), "{stdout}");
}

#[tokio::test]
async fn refuses_anything_but_loopback() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-loadgen"))
        .args([
            "--url",
            "http://10.1.2.3:80",
            "--api-key",
            "k",
            "--jwt-secret",
            "s",
        ])
        .args(["connect", "--connections", "1"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(herald_loadgen::RESULT_PREFIX))
        .unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert!(
        v["errors"][0].as_str().unwrap().contains("127.0.0.1"),
        "{v}"
    );
}
