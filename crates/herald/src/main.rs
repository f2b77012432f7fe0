//! The `herald` binary: CLI, configuration, wiring and serving.
//!
//! # Layout
//! - [`cli`]: subcommands and flags (DESIGN.md names).
//! - [`config`]: file < environment < flags, validated once.
//! - [`server`]: accept loop and router.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`admin_ui`]: the admin page and its API (`[admin] ui`).
//! - [`dev`]: `herald dev` wiring (in-process ingest, demo page).

mod admin;
mod admin_ui;
mod cli;
mod config;
mod dev;
mod server;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use cli::{Cli, Command, Common, TokenArgs};
use config::{Config, LogFormat};
use herald_bus::local::{LocalBus, LocalPresence};
use herald_bus::{Bus, Presence};
use herald_gateway::{Gateway, GatewayConfig};
use herald_ingest::{IngestConfig, IngestService};
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn env_map() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let env = env_map();
    let (env_ov, unknown) = config::env_overrides(&env);
    if !unknown.is_empty() {
        bail!(
            "unknown HERALD_* environment variable(s): {} (see docs/configuration.md)",
            unknown.join(", ")
        );
    }
    let file = common
        .config
        .clone()
        .or_else(|| env.get("HERALD_CONFIG").cloned());
    config::load(file.as_deref(), &env_ov, &common.overrides())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(c) => dev(c).await,
        Command::Gateway(c) => gateway_cmd(c).await,
        Command::Ingest(c) => ingest_cmd(c).await,
        Command::Token(t) => token(t),
    }
}

fn require(v: &Option<String>, what: &str) -> anyhow::Result<String> {
    v.clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("{what} is required"))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "herald".into())
}

async fn redis(cfg: &Config) -> anyhow::Result<(Arc<dyn Bus>, Arc<dyn Presence>)> {
    let url = require(&cfg.redis_url, "--redis-url (HERALD_REDIS_URL)")?;
    let bus = herald_bus::redis::RedisBus::connect(herald_bus::redis::RedisBusConfig {
        url: url.clone(),
        prefix: cfg.bus.prefix.clone(),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("connecting to Redis at {url}: {e}"))?;
    herald_bus::metrics::register_all();
    let presence = bus.presence(cfg.presence.ttl);
    Ok((Arc::new(bus), Arc::new(presence)))
}

/// `herald ingest`: the HTTP API over PostgreSQL (or SQLite for one node)
/// and the Redis bus.
async fn ingest_cmd(common: Common) -> anyhow::Result<()> {
    let cfg = load_config(&common)?;
    init_logs(cfg.log_format.unwrap_or(LogFormat::Human));
    let listen = cfg.listen.clone().unwrap_or_else(|| "0.0.0.0:8081".into());
    let admin_listen = cfg
        .admin_listen
        .clone()
        .unwrap_or_else(|| "0.0.0.0:9091".into());
    let db_url = require(&cfg.database_url, "--database-url (HERALD_DATABASE_URL)")?;
    let api_key = require(&cfg.api_key, "--api-key (HERALD_API_KEY)")?;
    let node_id = cfg.node_id.clone().unwrap_or_else(hostname);
    let limits = cfg.gateway_limits()?;
    let metrics = admin::install_metrics(&node_id)?;
    let store = herald_store::open(&db_url, cfg.store_config())
        .await
        .with_context(|| format!("opening the store at {db_url}"))?;
    let (bus, presence) = redis(&cfg).await?;
    let ingest = IngestService::new(
        IngestConfig {
            api_key,
            max_data_bytes: limits.max_data_bytes,
            webhooks: cfg.webhooks()?,
            ..IngestConfig::default()
        },
        store,
        bus,
        presence,
    );
    let admin_ui = cfg.admin.ui.then(|| {
        admin_ui::AdminUi::new(admin_ui::Parts {
            role: "ingest",
            node_id: node_id.clone(),
            api_key: ingest.config().api_key.clone(),
            gateway: None,
            ingest: Some(ingest.clone()),
            max_data_bytes: limits.max_data_bytes,
        })
    });
    let public = bind(&listen).await?;
    let app = server::App {
        gateway: None,
        ingest: Some(ingest.clone()),
        admin: None,
        demo: None,
    };
    serve_node(Node {
        what: "ingest",
        public,
        app,
        admin_listen: Some(admin_listen),
        metrics,
        gateway: None,
        ingest: Some(ingest),
        banner: None,
        header_timeout: cfg.gateway.handshake_timeout,
        admin_ui,
    })
    .await
}

/// `herald gateway`: WebSocket clients, the Redis bus, ingest over HTTP.
async fn gateway_cmd(common: Common) -> anyhow::Result<()> {
    let cfg = load_config(&common)?;
    init_logs(cfg.log_format.unwrap_or(LogFormat::Human));
    let listen = cfg.listen.clone().unwrap_or_else(|| "0.0.0.0:8080".into());
    let admin_listen = cfg
        .admin_listen
        .clone()
        .unwrap_or_else(|| "0.0.0.0:9090".into());
    let ingest_url = require(&cfg.ingest_url, "--ingest-url (HERALD_INGEST_URL)")?;
    let api_key = require(
        &cfg.api_key,
        "--api-key (HERALD_API_KEY), the key the gateway sends to ingest",
    )?;
    let node_id = cfg.node_id.clone().unwrap_or_else(hostname);
    let mut limits = cfg.gateway_limits()?;
    if let Some(fds) = raise_fd_limit() {
        limits.max_connections = limits.max_connections.min(fd_connection_cap(fds));
    }
    let routes = cfg.gateway_routes()?;
    let verifier = herald_auth::Verifier::new(&cfg.auth_config())
        .map_err(|e| anyhow!("auth configuration: {e}"))?;
    let metrics = admin::install_metrics(&node_id)?;
    let (bus, presence) = redis(&cfg).await?;
    let max_data_bytes = limits.max_data_bytes;
    let ingest = Arc::new(herald_gateway::http_ingest::HttpIngest::new(
        &ingest_url,
        &api_key,
    ));
    let gateway = Gateway::new(
        GatewayConfig {
            node_id,
            limits,
            routes,
            gap_timeout: cfg.bus.gap_timeout,
            catchup_interval: cfg.bus.catchup_interval,
            presence_ttl: cfg.presence.ttl,
            allowed_origins: cfg.allowed_origins()?,
            webhook_events: cfg.webhook_event_filters()?,
            ..GatewayConfig::default()
        },
        verifier,
        ingest,
        bus,
        presence,
    );
    let admin_ui = cfg.admin.ui.then(|| {
        admin_ui::AdminUi::new(admin_ui::Parts {
            role: "gateway",
            node_id: gateway.node_id().to_owned(),
            api_key: api_key.clone(),
            gateway: Some(gateway.clone()),
            ingest: None,
            max_data_bytes,
        })
    });
    let public = bind(&listen).await?;
    let app = server::App {
        gateway: Some(gateway.clone()),
        ingest: None,
        admin: None,
        demo: None,
    };
    serve_node(Node {
        what: "gateway",
        public,
        app,
        admin_listen: Some(admin_listen),
        metrics,
        gateway: Some(gateway),
        ingest: None,
        banner: None,
        header_timeout: cfg.gateway.handshake_timeout,
        admin_ui,
    })
    .await
}

fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

/// Binds a listener with a deep accept backlog: a reconnect wave after a
/// drain arrives all at once, and tokio's default backlog of 128 makes the
/// overflow wait for a SYN retry (about 1 s; measured in benches/RESULTS.md).
async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
    let sock = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(resolved)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(sock.listen(4096)?)
}

/// The connection cap the fd limit allows: the limit minus 1000 for files,
/// sockets to Redis/ingest/the store (PROTOCOL.md section 7); half of a
/// small limit.
fn fd_connection_cap(fds: u64) -> usize {
    let cap = if fds > 2000 { fds - 1000 } else { fds / 2 };
    usize::try_from(cap).unwrap_or(usize::MAX).max(1)
}

/// Raises the soft fd limit to the hard one and returns it.
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

async fn dev(args: cli::DevArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(&args.common)?;
    // Flags win over the file and the environment.
    if args.no_bot {
        cfg.dev.bot = false;
    }
    init_logs(cfg.log_format.unwrap_or(LogFormat::Human));
    let listen = cfg
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let db_url = cfg
        .database_url
        .clone()
        .unwrap_or_else(|| "sqlite://herald-dev.db".into());
    let secret = cfg.jwt_secret.clone().unwrap_or_else(|| random_hex(32));
    cfg.jwt_secret = Some(secret.clone());
    let api_key = cfg
        .api_key
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| random_hex(32));
    let node_id = cfg.node_id.clone().unwrap_or_else(|| "dev".into());

    let mut limits = cfg.gateway_limits()?;
    if let Some(fds) = raise_fd_limit() {
        limits.max_connections = limits.max_connections.min(fd_connection_cap(fds));
    }
    let routes = cfg.gateway_routes()?;
    let verifier = herald_auth::Verifier::new(&cfg.auth_config())
        .map_err(|e| anyhow!("auth configuration: {e}"))?;
    let metrics = admin::install_metrics(&node_id)?;

    let store = herald_store::open(&db_url, cfg.store_config())
        .await
        .with_context(|| format!("opening the store at {db_url}"))?;
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new());
    let presence: Arc<dyn Presence> = Arc::new(LocalPresence::new());
    let ingest = IngestService::new(
        IngestConfig {
            api_key: api_key.clone(),
            max_data_bytes: limits.max_data_bytes,
            webhooks: cfg.webhooks()?,
            ..IngestConfig::default()
        },
        store,
        bus.clone(),
        presence.clone(),
    );
    // The demo's stand-in for an application backend (dashboard routing,
    // the bot, DM copies): told of each client publish, publishes through
    // ingest like any backend. See dev/backend.rs.
    let backend = dev::backend::start(ingest.clone(), cfg.dev.bot);
    let gw_cfg = GatewayConfig {
        node_id: node_id.clone(),
        limits,
        routes,
        gap_timeout: cfg.bus.gap_timeout,
        catchup_interval: cfg.bus.catchup_interval,
        presence_ttl: cfg.presence.ttl,
        allowed_origins: cfg.allowed_origins()?,
        webhook_events: cfg.webhook_event_filters()?,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(
        gw_cfg,
        verifier.clone(),
        Arc::new(dev::InProcessIngest {
            ingest: ingest.clone(),
            backend: Some(backend),
        }),
        bus,
        presence,
    );

    let admin_ui = cfg.admin.ui.then(|| {
        admin_ui::AdminUi::new(admin_ui::Parts {
            role: "dev",
            node_id: node_id.clone(),
            api_key: api_key.clone(),
            gateway: Some(gateway.clone()),
            ingest: Some(ingest.clone()),
            max_data_bytes: ingest.config().max_data_bytes,
        })
    });
    let listener = bind(&listen).await?;
    let addr = listener.local_addr()?;
    let minter = herald_auth::Minter::hs256(secret.as_bytes());
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let mint = |spec: herald_auth::TokenSpec| {
        minter
            .mint(&spec.to_claims(now))
            .map_err(|e| anyhow!("{e}"))
    };
    let day = Some(std::time::Duration::from_secs(86400));
    let visitor = mint(herald_auth::TokenSpec {
        sub: "visitor:demo".into(),
        ttl: day,
        channels: vec!["chat_demo".into()],
        subscribe: vec![],
        publish: vec!["chat_demo".into()],
        signal: vec!["chat_demo".into()],
        presence: vec!["chat_demo".into()],
        info: Some(serde_json::json!({"name": "Visitor"})),
    })?;
    // The demo's stand-in token endpoint mints with the same secret.
    let demo = dev::demo::Demo::new(
        herald_auth::Minter::hs256(secret.as_bytes()),
        verifier,
        ingest.clone(),
        cfg.dev.bot,
    );
    let app = server::App {
        gateway: Some(gateway.clone()),
        ingest: Some(ingest.clone()),
        admin: None,
        demo: Some(Arc::new(demo)),
    };
    let host = addr.to_string();
    let bot = if cfg.dev.bot {
        "on: bot:ai answers the demo's visitors (a stand-in for your backend; --no-bot turns it off)"
    } else {
        "off (--no-bot): your backend answers"
    };
    let banner = format!(
        "herald dev listening on http://{host}\n\
         \n  demo page:   http://{host}/demo\
         \n  demo bot:    {bot}\
         \n  demo tokens: POST http://{host}/demo/token (a stand-in for your app's token endpoint)\
         \n  store:       {db_url}\
         \n  jwt secret:  {secret}\
         \n  api key:     {api_key}\
         \n  token:       {visitor}\
         \n               (sub visitor:demo, auto-subscribed to chat_demo)\
         \n\n  watch:   websocat 'ws://{host}/ws?token={visitor}'\
         \n  publish: curl -s -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\\
         \n             -d '{{\"channel\":\"chat_demo\",\"data\":{{\"content\":\"hello\",\"role\":\"user\"}}}}' http://{host}/v1/publish\n"
    );
    serve_node(Node {
        what: "dev",
        public: listener,
        app,
        admin_listen: cfg.admin_listen.clone(),
        metrics,
        gateway: Some(gateway),
        ingest: Some(ingest),
        banner: Some(banner),
        header_timeout: cfg.gateway.handshake_timeout,
        admin_ui,
    })
    .await
}

/// A process's listeners and parts, served until SIGTERM/SIGINT.
struct Node {
    what: &'static str,
    public: TcpListener,
    app: server::App,
    /// A separate admin listener; `None` serves admin routes on `public`.
    admin_listen: Option<String>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    gateway: Option<Gateway>,
    ingest: Option<Arc<IngestService>>,
    banner: Option<String>,
    /// `[gateway] handshake_timeout`: a whole request head within it.
    header_timeout: std::time::Duration,
    /// The admin page, when `[admin] ui` is on.
    admin_ui: Option<Arc<admin_ui::AdminUi>>,
}

/// Serves a node, then drains it on SIGTERM (DESIGN.md guarantee 6): not
/// ready, stop accepting, close clients with 1012 over the drain window,
/// exit 0.
async fn serve_node(node: Node) -> anyhow::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    let admin = admin::Admin {
        metrics: node.metrics,
        gateway: node.gateway.clone(),
        ingest: node.ingest.clone(),
        draining: draining.clone(),
        ui: node.admin_ui,
    };
    let stop = CancellationToken::new();
    let mut servers = Vec::new();
    let mut app = node.app;
    match &node.admin_listen {
        Some(a) => {
            let l = bind(a)
                .await
                .with_context(|| format!("admin listener {a}"))?;
            tracing::info!(admin = %l.local_addr()?, "admin listener");
            let admin_app = server::App {
                gateway: None,
                ingest: None,
                admin: Some(admin),
                demo: None,
            };
            // The admin port stays up through the drain so /readyz can say 503.
            servers.push(tokio::spawn(server::serve(
                l,
                admin_app,
                CancellationToken::new(),
                node.header_timeout,
            )));
        }
        None => app.admin = Some(admin),
    }
    let addr = node.public.local_addr()?;
    let public = tokio::spawn(server::serve(
        node.public,
        app,
        stop.clone(),
        node.header_timeout,
    ));
    if let Some(b) = node.banner {
        println!("{b}");
    }
    tracing::info!(listen = %addr, "herald {} ready", node.what);

    shutdown_signal().await;
    tracing::info!("shutdown signal: draining");
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    stop.cancel();
    if let Some(gw) = &node.gateway {
        gw.drain().await;
    }
    let _ = public.await;
    for s in servers {
        s.abort();
    }
    tracing::info!("drained; bye");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn token(t: TokenArgs) -> anyhow::Result<()> {
    let common = Common {
        config: t.config.clone(),
        jwt_secret: t.jwt_secret.clone(),
        ..Common::default()
    };
    let cfg = load_config(&common)?;
    let secret = cfg.jwt_secret.ok_or_else(|| {
        anyhow!("no key: give --jwt-secret, HERALD_JWT_SECRET or jwt_secret in --config")
    })?;
    let ttl = config::parse_duration(&t.ttl).map_err(|e| anyhow!("--ttl: {e}"))?;
    let info = match &t.info {
        Some(s) => {
            let v: serde_json::Value =
                serde_json::from_str(s).map_err(|e| anyhow!("--info is not JSON: {e}"))?;
            if !v.is_object() {
                bail!("--info must be a JSON object");
            }
            Some(v)
        }
        None => None,
    };
    for c in &t.channels {
        herald_protocol::ChannelName::new(c).map_err(|e| anyhow!("--channels {c:?}: {e}"))?;
    }
    for p in t
        .allow_subscribe
        .iter()
        .chain(&t.allow_publish)
        .chain(&t.allow_signal)
        .chain(&t.allow_presence)
    {
        herald_protocol::Pattern::new(p).map_err(|e| anyhow!("pattern {p:?}: {e}"))?;
    }
    let spec = herald_auth::TokenSpec {
        sub: t.sub,
        ttl: Some(ttl),
        channels: t.channels,
        subscribe: t.allow_subscribe,
        publish: t.allow_publish,
        signal: t.allow_signal,
        presence: t.allow_presence,
        info,
    };
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let tok = herald_auth::Minter::hs256(secret.as_bytes())
        .mint(&spec.to_claims(now))
        .map_err(|e| anyhow!("{e}"))?;
    println!("{tok}");
    Ok(())
}
