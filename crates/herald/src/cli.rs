//! Command-line interface: the subcommands and flag names of DESIGN.md.
//! Flags are parsed as optional text and merged over the file and the
//! environment by [`crate::config::load`], so every source is checked alike.

use crate::config::Override;
use clap::{Args, Parser, Subcommand};

/// Herald: a horizontally scalable realtime gateway.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gateway + ingest in one process: in-process bus, SQLite, demo page.
    Dev(DevArgs),
    /// One gateway node (needs Redis and an ingest URL).
    Gateway(Common),
    /// One ingest node (needs Redis and PostgreSQL, or SQLite for one node).
    Ingest(Common),
    /// Mint a JWT for testing, signed with the configured HS256 secret.
    Token(TokenArgs),
}

/// Settings shared by every server subcommand.
#[derive(Debug, Args, Clone, Default)]
pub struct Common {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<String>,
    /// Public HTTP address.
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin address for /metrics, /healthz, /readyz.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Redis URL; a comma-separated list means Redis Cluster.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// postgres://... or sqlite://PATH.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Where the gateway sends publishes and history reads.
    #[arg(long)]
    pub ingest_url: Option<String>,
    /// Node name (welcome.node, metrics label).
    #[arg(long)]
    pub node_id: Option<String>,
    /// HS256 key for tokens.
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Bearer key of the ingest API.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Clock leeway for exp/nbf (e.g. 5, "500ms").
    #[arg(long)]
    pub jwt_leeway: Option<String>,
    /// How often subscribed channels are checked against ingest.
    #[arg(long)]
    pub catchup_interval: Option<String>,
    /// human or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// [limits] heartbeat_interval.
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// [limits] heartbeat_timeout.
    #[arg(long)]
    pub heartbeat_timeout: Option<String>,
    /// [limits] max_frame_bytes.
    #[arg(long)]
    pub max_frame_bytes: Option<String>,
    /// [limits] max_data_bytes.
    #[arg(long)]
    pub max_data_bytes: Option<String>,
    /// [limits] max_queue_bytes.
    #[arg(long)]
    pub max_queue_bytes: Option<String>,
    /// [limits] max_connections.
    #[arg(long)]
    pub max_connections: Option<String>,
    /// [limits] max_connections_per_user.
    #[arg(long)]
    pub max_connections_per_user: Option<String>,
    /// [limits] rate_per_second.
    #[arg(long)]
    pub rate_per_second: Option<String>,
    /// [limits] rate_burst.
    #[arg(long)]
    pub rate_burst: Option<String>,
    /// [limits] drain_window.
    #[arg(long)]
    pub drain_window: Option<String>,
    /// [limits] max_replay.
    #[arg(long)]
    pub max_replay: Option<String>,
    /// [limits] channel_caps as 'chat_*=50,room_*=10'.
    #[arg(long)]
    pub channel_caps: Option<String>,
    /// [limits] max_subscriptions_per_connection.
    #[arg(long)]
    pub max_subscriptions_per_connection: Option<String>,
    /// [gateway] allowed_origins as 'https://a.example,https://*.b.example'.
    #[arg(long)]
    pub allowed_origins: Option<String>,
    /// [gateway] handshake_timeout (e.g. 10, "500ms").
    #[arg(long)]
    pub handshake_timeout: Option<String>,
    /// [admin] ui: serve the admin page on the admin listener
    /// (`--admin-ui`, or `--admin-ui=false`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub admin_ui: Option<String>,
}

impl Common {
    /// The flags given, as overrides of the merged configuration.
    pub fn overrides(&self) -> Vec<Override> {
        let top = [
            ("listen", &self.listen),
            ("admin_listen", &self.admin_listen),
            ("redis_url", &self.redis_url),
            ("database_url", &self.database_url),
            ("ingest_url", &self.ingest_url),
            ("node_id", &self.node_id),
            ("jwt_secret", &self.jwt_secret),
            ("api_key", &self.api_key),
            ("log_format", &self.log_format),
        ];
        let nested = [
            ("auth", "leeway", &self.jwt_leeway),
            ("bus", "catchup_interval", &self.catchup_interval),
            ("limits", "heartbeat_interval", &self.heartbeat_interval),
            ("limits", "heartbeat_timeout", &self.heartbeat_timeout),
            ("limits", "max_frame_bytes", &self.max_frame_bytes),
            ("limits", "max_data_bytes", &self.max_data_bytes),
            ("limits", "max_queue_bytes", &self.max_queue_bytes),
            ("limits", "max_connections", &self.max_connections),
            (
                "limits",
                "max_connections_per_user",
                &self.max_connections_per_user,
            ),
            ("limits", "rate_per_second", &self.rate_per_second),
            ("limits", "rate_burst", &self.rate_burst),
            ("limits", "drain_window", &self.drain_window),
            ("limits", "max_replay", &self.max_replay),
            ("limits", "channel_caps", &self.channel_caps),
            (
                "limits",
                "max_subscriptions_per_connection",
                &self.max_subscriptions_per_connection,
            ),
            ("gateway", "allowed_origins", &self.allowed_origins),
            ("gateway", "handshake_timeout", &self.handshake_timeout),
            ("admin", "ui", &self.admin_ui),
        ];
        let mut out = Vec::new();
        for (k, v) in top {
            if let Some(v) = v {
                out.push((vec![k.to_owned()], v.clone()));
            }
        }
        for (s, k, v) in nested {
            if let Some(v) = v {
                out.push((vec![s.to_owned(), k.to_owned()], v.clone()));
            }
        }
        out
    }
}

/// `herald dev` arguments: the common ones and the demo's.
#[derive(Debug, Args, Clone, Default)]
pub struct DevArgs {
    /// The common settings.
    #[command(flatten)]
    pub common: Common,
    /// Turn off the demo's stand-in bot (`[dev] bot = false`,
    /// `HERALD_DEV__BOT=false`), e.g. when the application's backend plays
    /// the bot through webhooks.
    #[arg(long)]
    pub no_bot: bool,
}

/// `herald token` arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's `sub`.
    #[arg(long)]
    pub sub: String,
    /// Automatic subscriptions, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Subscribe grant patterns.
    #[arg(long, value_delimiter = ',')]
    pub allow_subscribe: Vec<String>,
    /// Publish grant patterns.
    #[arg(long, value_delimiter = ',')]
    pub allow_publish: Vec<String>,
    /// Signal grant patterns.
    #[arg(long, value_delimiter = ',')]
    pub allow_signal: Vec<String>,
    /// Presence grant patterns.
    #[arg(long, value_delimiter = ',')]
    pub allow_presence: Vec<String>,
    /// Lifetime (e.g. 1h, 30m, 3600); default 1h.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// `info` JSON object shown in presence.
    #[arg(long)]
    pub info: Option<String>,
    /// TOML configuration file (for jwt_secret).
    #[arg(long)]
    pub config: Option<String>,
    /// HS256 key (default: the configured one).
    #[arg(long)]
    pub jwt_secret: Option<String>,
}
