//! DESIGN.md "Processes and how they start" and STYLE.md "Config" end to
//! end: file < environment < flag precedence for a `[limits]` knob, start-up
//! validation naming the bad key, `herald token`, and `herald gateway` /
//! `herald ingest` refusing to start without Redis.

use std::time::Duration;

use herald_tests::*;
use serde_json::json;

/// How long a process that must fail at start may take to exit.
const EXIT: Duration = Duration::from_secs(20);

/// Asserts `max_data_bytes` of `h` is exactly `limit`: `data` of `limit`
/// bytes of JSON is accepted, one byte more is `too_large`, over the
/// WebSocket and the ingest API.
async fn assert_max_data_bytes(h: &HeraldProcess, limit: usize, what: &str) {
    let t = TokenBuilder::new("u1").allow_all().sign(&h.jwt_secret);
    let (mut c, _) = Connect::new(h).token(&t).ready().await;
    let r = c
        .call(
            "publish",
            json!({"channel": "lim_1", "data": json_string_of_len(limit)}),
        )
        .await;
    assert!(
        r.get("result").is_some(),
        "{what}: {limit} bytes must pass: {r}"
    );
    let r = c
        .call(
            "publish",
            json!({"channel": "lim_1", "data": json_string_of_len(limit + 1)}),
        )
        .await;
    assert_eq!(
        error_code(&r),
        "too_large",
        "{what}: {} bytes must be refused",
        limit + 1
    );

    let api = Api::new(h);
    let (s, b) = api
        .publish_body(json!({"channel": "lim_2", "data": json_string_of_len(limit)}))
        .await;
    assert_eq!(s, 200, "{what}: HTTP {limit} bytes: {b}");
    assert_http_error(
        &api.publish_body(json!({"channel": "lim_2", "data": json_string_of_len(limit + 1)}))
            .await,
        413,
        "too_large",
    );
}

/// DESIGN.md: flags win over the environment, which wins over the file
/// (`[limits] max_data_bytes`, `HERALD_LIMITS__MAX_DATA_BYTES`,
/// `--max-data-bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_precedence_file_env_flag() {
    let file = Some("[limits]\nmax_data_bytes = 1000\n".to_string());
    let env = vec![(
        "HERALD_LIMITS__MAX_DATA_BYTES".to_string(),
        "2000".to_string(),
    )];
    let (file_only, file_env, all, env_only) = tokio::join!(
        HeraldProcess::start(HeraldOptions {
            config_toml: file.clone(),
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            config_toml: file.clone(),
            env: env.clone(),
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            config_toml: file.clone(),
            env: env.clone(),
            args: vec!["--max-data-bytes".into(), "3000".into()],
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            env: env.clone(),
            ..Default::default()
        }),
    );
    assert_max_data_bytes(&file_only, 1000, "file").await;
    assert_max_data_bytes(&file_env, 2000, "file + env").await;
    assert_max_data_bytes(&all, 3000, "file + env + flag").await;
    assert_max_data_bytes(&env_only, 2000, "env").await;
}

/// Starts `herald dev` with `opts` (not waiting for readiness) and expects
/// it to exit non-zero with a log that names `needle` (case-insensitive,
/// `-` read as `_`).
async fn expect_start_failure(opts: HeraldOptions, needle: &str, what: &str) {
    let mut h = HeraldProcess::start(HeraldOptions {
        wait_ready: false,
        ..opts
    })
    .await;
    let status = h.wait_exit(EXIT).await.unwrap_or_else(|| {
        panic!(
            "{what}: herald still running after {EXIT:?}; log:\n{}",
            h.log()
        )
    });
    assert!(!status.success(), "{what}: exit status {status}");
    let log = h.log();
    // A flag's name and its key differ only by dashes: either names it.
    assert!(
        log.to_lowercase()
            .replace('-', "_")
            .contains(&needle.to_lowercase()),
        "{what}: the error does not name {needle:?}; log:\n{log}"
    );
}

/// STYLE.md "Config" (`deny_unknown_fields`, validated at start naming the
/// bad key): an unknown key in the config file stops `herald dev` with a
/// non-zero exit and a message naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_key_fails_naming_it() {
    expect_start_failure(
        HeraldOptions {
            config_toml: Some("[limits]\nmax_data_bytez = 5\n".into()),
            ..Default::default()
        },
        "max_data_bytez",
        "unknown [limits] key",
    )
    .await;
    expect_start_failure(
        HeraldOptions {
            config_toml: Some("listne = \"127.0.0.1:1\"\n".into()),
            ..Default::default()
        },
        "listne",
        "unknown top-level key",
    )
    .await;
    expect_start_failure(
        HeraldOptions {
            config_toml: Some("[limitz]\nmax_data_bytes = 5\n".into()),
            ..Default::default()
        },
        "limitz",
        "unknown table",
    )
    .await;
}

/// STYLE.md "Config": a value of the wrong type stops `herald dev` with a
/// message naming the key, whether it comes from the file, the environment
/// or a flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_value_fails_naming_it() {
    expect_start_failure(
        HeraldOptions {
            config_toml: Some("[limits]\nmax_queue_bytes = \"lots\"\n".into()),
            ..Default::default()
        },
        "max_queue_bytes",
        "file",
    )
    .await;
    expect_start_failure(
        HeraldOptions {
            env: vec![("HERALD_LIMITS__MAX_QUEUE_BYTES".into(), "lots".into())],
            ..Default::default()
        },
        "max_queue_bytes",
        "env",
    )
    .await;
    expect_start_failure(
        HeraldOptions {
            args: vec!["--max-queue-bytes".into(), "lots".into()],
            ..Default::default()
        },
        "max_queue_bytes",
        "flag",
    )
    .await;
}

/// DESIGN.md (`herald token`): prints the token alone on stdout, HS256 with
/// the given secret, carrying `sub`, `channels`, `allow.subscribe` and an
/// `exp` one `--ttl` ahead; herald itself accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_subcommand_mints_a_valid_token() {
    let secret = "s3cret-for-the-token-test";
    let (code, stdout, stderr) = run_herald(
        &[
            "token",
            "--sub",
            "u1",
            "--channels",
            "a,b",
            "--allow-subscribe",
            "chat_*",
            "--ttl",
            "1h",
            "--jwt-secret",
            secret,
        ],
        &[],
        EXIT,
    )
    .await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout.lines().count(),
        1,
        "the token alone on stdout: {stdout:?}"
    );
    let token = stdout.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let claims = verify_hs256(token, secret).unwrap_or_else(|e| panic!("{e}: {token}"));
    assert_eq!(claims["sub"], "u1", "{claims}");
    assert_eq!(claims["channels"], json!(["a", "b"]), "{claims}");
    assert_eq!(claims["allow"]["subscribe"], json!(["chat_*"]), "{claims}");
    let exp = claims["exp"]
        .as_i64()
        .unwrap_or_else(|| panic!("no exp: {claims}"));
    assert!(
        (exp - (now_secs() + 3600)).abs() <= 60,
        "exp {exp} is not 1 h ahead"
    );

    let h = HeraldProcess::start(HeraldOptions {
        jwt_secret: secret.into(),
        ..Default::default()
    })
    .await;
    let (mut c, w) = Connect::new(&h).token(token).ready().await;
    let mut subs: Vec<String> = w["subs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["channel"].as_str().unwrap().to_string())
        .collect();
    subs.sort();
    assert_eq!(subs, vec!["a", "b"]);
    assert_eq!(c.subscribe("chat_1").await["channel"], "chat_1");
    assert_eq!(
        c.call_err("subscribe", json!({"channel": "other_1"})).await,
        "forbidden"
    );
}

/// DESIGN.md (processes table): `herald gateway` and `herald ingest` need
/// Redis; without it they exit non-zero saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_ingest_need_redis() {
    let dir = herald_testkit::temp_dir();
    let db = format!("sqlite://{}", dir.path().join("ingest.db").display());
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let cases: [(&str, Vec<&str>); 2] = [
        (
            "gateway",
            vec![
                "gateway",
                "--listen",
                &listen,
                "--admin-listen",
                &admin,
                "--jwt-secret",
                "s",
                "--api-key",
                "k",
                "--ingest-url",
                "http://127.0.0.1:9",
            ],
        ),
        (
            "ingest",
            vec![
                "ingest",
                "--listen",
                &listen,
                "--admin-listen",
                &admin,
                "--database-url",
                &db,
                "--api-key",
                "k",
            ],
        ),
    ];
    for (what, args) in cases {
        let (code, stdout, stderr) = run_herald(&args, &[], EXIT).await;
        assert!(
            code.is_some_and(|c| c != 0),
            "{what} without Redis: exit {code:?}; stdout {stdout}; stderr {stderr}"
        );
        let text = format!("{stdout}{stderr}").to_lowercase();
        assert!(
            text.contains("redis"),
            "{what}: the message does not mention Redis: {stderr}"
        );
    }
}

/// PROTOCOL.md section 7: durations are whole seconds or strings like
/// `"500ms"`, in the file, the environment and flags (observed in
/// `welcome.heartbeat`, a number, possibly fractional).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_in_seconds_or_strings() {
    let (file, env, flag) = tokio::join!(
        HeraldProcess::start(HeraldOptions {
            config_toml: Some("[limits]\nheartbeat_interval = \"1500ms\"\n".into()),
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            env: vec![("HERALD_LIMITS__HEARTBEAT_INTERVAL".into(), "2".into())],
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            args: vec!["--heartbeat-interval".into(), "500ms".into()],
            ..Default::default()
        }),
    );
    for (h, want) in [(&file, 1.5), (&env, 2.0), (&flag, 0.5)] {
        let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
        let (_c, w) = Connect::new(h).token(&t).ready().await;
        assert_eq!(w["heartbeat"].as_f64(), Some(want), "{w}");
    }
}

/// PROTOCOL.md section 7 (`channel_caps`): TOML `{ "capped_*" = 1 }` and the
/// environment's `'capped_*=1'` both cap the channel (`limit_reached` for
/// the second subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_caps_from_file_and_env() {
    let (file, env) = tokio::join!(
        HeraldProcess::start(HeraldOptions {
            config_toml: Some("[limits]\nchannel_caps = { \"capped_*\" = 1 }\n".into()),
            ..Default::default()
        }),
        HeraldProcess::start(HeraldOptions {
            env: vec![("HERALD_LIMITS__CHANNEL_CAPS".into(), "capped_*=1".into())],
            ..Default::default()
        }),
    );
    for (h, what) in [(&file, "file"), (&env, "env")] {
        let t = TokenBuilder::new("u1").allow("subscribe", &["*"]);
        let (mut a, _) = Connect::new(h).token(&t.sign(&h.jwt_secret)).ready().await;
        let (mut b, _) = Connect::new(h).token(&t.sign(&h.jwt_secret)).ready().await;
        a.subscribe("capped_1").await;
        assert_eq!(
            b.call_err("subscribe", json!({"channel": "capped_1"}))
                .await,
            "limit_reached",
            "{what}"
        );
        b.subscribe("other_1").await;
    }
}
