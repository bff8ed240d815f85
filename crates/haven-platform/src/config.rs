//! Haven's configuration: one typed struct, loaded as defaults → TOML file → `HAVEN_*`
//! environment → command-line flags, validated all at once so that `haven config check` can list
//! every problem in a file rather than the first.
//!
//! Environment names: `HAVEN_SECTION__KEY` (for example `HAVEN_SERVER__LISTEN`), the short forms
//! `HAVEN_DATA_DIR`, `HAVEN_LISTEN`, `HAVEN_DATABASE_URL`, `HAVEN_MASTER_KEY`,
//! `HAVEN_MASTER_KEY_FILE`, and `…_FILE` on any secret option to read it from a file.

use crate::Secret;
use ipnet::IpNet;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where Haven keeps its master key, TLS material, SQLite database and bootstrap credential.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub oauth: OAuthConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub master_key: MasterKeyConfig,
    pub audit: AuditConfig,
    pub encryption: EncryptionConfig,
    pub webhooks: WebhooksConfig,
    pub messages: MessagesConfig,
    pub dispatch: DispatchConfig,
    pub verify: VerifyConfig,
    pub sms: SmsConfig,
    pub email: EmailConfig,
    /// The rate card that prices usage records.
    pub usage: crate::usage::UsageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./haven-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            oauth: OAuthConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            master_key: MasterKeyConfig::default(),
            audit: AuditConfig::default(),
            encryption: EncryptionConfig::default(),
            webhooks: WebhooksConfig::default(),
            messages: MessagesConfig::default(),
            dispatch: DispatchConfig::default(),
            verify: VerifyConfig::default(),
            sms: SmsConfig::default(),
            email: EmailConfig::default(),
            usage: crate::usage::UsageConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Each account's data key is replaced after this many days; older keys stay, for
    /// decryption only.
    pub data_key_rotation_days: u64,
    /// How often a running server re-reads its master key file (to follow
    /// `haven keys rotate-master`).
    pub master_key_refresh_seconds: u64,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            data_key_rotation_days: 90,
            master_key_refresh_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Private, loopback or link-local targets that endpoints may nevertheless use (CIDR list,
    /// or a comma-separated string in `HAVEN_WEBHOOKS__ALLOW_TARGETS`). Plain HTTP is accepted
    /// only to these. For development and tests; leave empty in production.
    #[serde(deserialize_with = "string_list")]
    pub allow_targets: Vec<String>,
    /// Delays between delivery attempts, in seconds; after the last one fails the delivery is
    /// dead-lettered. Each delay gets up to +20% jitter. The default spans about 37.6 hours (9 attempts).
    #[serde(deserialize_with = "u64_list")]
    pub retry_schedule_seconds: Vec<u64>,
    /// Time limit of one delivery attempt (connect, TLS, request and response).
    pub timeout_seconds: u64,
    /// Deliveries in flight at once, per node.
    pub concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_targets: Vec::new(),
            retry_schedule_seconds: vec![5, 300, 1800, 7200, 18_000, 36_000, 36_000, 36_000],
            timeout_seconds: 15,
            concurrency: 32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Wrong codes before a verification fails.
    pub max_attempts: u32,
    /// Verifications an account may start per `rate_window_seconds` to one recipient, from
    /// one end-user IP address (when the app passes it) and to one destination prefix
    /// (counted in the shared database, so across every node).
    pub per_recipient: u32,
    pub per_ip: u32,
    pub per_prefix: u32,
    pub rate_window_seconds: u64,
    /// SMS pumping: over `pumping_window_seconds`, a prefix with at least `pumping_min_sends`
    /// codes sent of which fewer than `pumping_min_conversion` (a fraction) were used is
    /// blocked. Pending verifications younger than `pumping_grace_seconds` are not counted.
    pub pumping_window_seconds: u64,
    pub pumping_min_sends: u32,
    pub pumping_min_conversion: f64,
    pub pumping_grace_seconds: u64,
    /// How long a TOTP factor refuses codes after `max_attempts` wrong ones in a row.
    pub factor_lockout_seconds: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            per_recipient: 5,
            per_ip: 10,
            per_prefix: 100,
            rate_window_seconds: 600,
            pumping_window_seconds: 3600,
            pumping_min_sends: 20,
            pumping_min_conversion: 0.2,
            pumping_grace_seconds: 120,
            factor_lockout_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// The longest a waiting step goes unexamined. A step normally reacts at once to its
    /// message's receipt or the patient's reply; this bounds the delay when that notice was
    /// lost (a node died in between).
    pub recheck_seconds: u64,
    /// How long a node holds a dispatch it is advancing; another node takes it over after
    /// this if the node dies.
    pub lease_seconds: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            recheck_seconds: 30,
            lease_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesConfig {
    /// Messages per second each account may send through the API (0: no limit); over it the
    /// API answers `429` with `Retry-After`. Enforced per node.
    pub rate_per_second: u32,
    /// Messages an account may send at once above its rate.
    pub burst: u32,
    /// How long a node holds a message it is handing to a carrier; if the node dies, another
    /// sends the message after this (so it may arrive twice: at least once).
    pub lease_seconds: u64,
    /// Messages being handed to carriers at once, per node.
    pub concurrency: usize,
    /// Longest wait between two tries of a message no carrier could take.
    pub retry_max_seconds: u64,
    /// Inbound keywords (whole messages, any case) that opt the sender out of everything from
    /// the account on that channel; unset: STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT,
    /// OPTOUT, ARRET, ARRÊT, BAJA, ALTO.
    #[serde(default, deserialize_with = "opt_string_list")]
    pub stop_keywords: Option<Vec<String>>,
    /// Keywords that lift an opt-out (not a marketing opt-in); unset: START, UNSTOP,
    /// SUBSCRIBE, DEMARRER, ALTA.
    #[serde(default, deserialize_with = "opt_string_list")]
    pub start_keywords: Option<Vec<String>>,
    /// Keywords answered with `help_reply`; unset: HELP, INFO, AIDE, AYUDA.
    #[serde(default, deserialize_with = "opt_string_list")]
    pub help_keywords: Option<Vec<String>>,
    /// The automatic answers, sent from the number the patient wrote to (empty: no answer).
    pub stop_reply: Option<String>,
    pub start_reply: Option<String>,
    pub help_reply: Option<String>,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            rate_per_second: 500,
            burst: 1_000,
            lease_seconds: 30,
            concurrency: 256,
            retry_max_seconds: 60,
            stop_keywords: None,
            start_keywords: None,
            help_keywords: None,
            stop_reply: None,
            start_reply: None,
            help_reply: None,
        }
    }
}

/// SMS carriers: SMPP 3.4 connections to SMSCs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// One `[[sms.smsc]]` table per connection. A message goes to the first connected SMSC
    /// whose `prefixes` match its destination (longest prefix first, then file order) and
    /// fails over to the next.
    pub smsc: Vec<SmscConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmscConfig {
    /// Names the route in messages, metrics and logs.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub system_id: String,
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Read the password from this file instead.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub system_type: String,
    /// `transceiver` (default), `transmitter` or `receiver`.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// SMPP over TLS.
    #[serde(default)]
    pub tls: bool,
    /// Extra trust anchor (PEM) for the SMSC's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name to check the SMSC's certificate against (default: `host`).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Submits outstanding at once on this connection.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Receipts and inbound messages (`deliver_sm`) handled at once on this connection, at
    /// least `window`; beyond it the SMSC is asked to redeliver.
    #[serde(default = "default_inbound_window")]
    pub inbound_window: usize,
    /// Submits per second on this connection (the carrier's contracted throughput).
    #[serde(default)]
    pub max_per_second: Option<u32>,
    #[serde(default = "default_enquire_link")]
    pub enquire_link_seconds: u64,
    /// E.164 prefixes (`"+1"`, `"+44"`) this SMSC serves; empty: every destination.
    #[serde(default, deserialize_with = "string_list")]
    pub prefixes: Vec<String>,
}

fn default_bind() -> String {
    "transceiver".to_owned()
}
fn default_window() -> usize {
    10
}
fn default_inbound_window() -> usize {
    4096
}
fn default_enquire_link() -> u64 {
    30
}

/// Email: the SMTP relay.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    pub smtp: Option<SmtpRelayConfig>,
    /// Asynchronous bounces: Haven's own SMTP listener that the relay sends delivery status
    /// notifications (RFC 3464) to.
    pub bounces: Option<BounceConfig>,
}

/// `[email.bounces]`: every email goes out with a per-message envelope sender under
/// `domain` (`bounce+<message id>.<tag>@domain`), and DSNs sent back to it are read by a
/// listener on `listen`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceConfig {
    /// Where the bounce listener accepts SMTP (the relay's transport for `domain` points here).
    pub listen: SocketAddr,
    /// The envelope sender domain (a subdomain of the organisation's, routed to `listen`).
    pub domain: String,
    /// Source addresses allowed to connect; everyone else is refused at the greeting.
    #[serde(default = "default_bounce_allow")]
    pub allow_from: Vec<ipnet::IpNet>,
    /// Refuse `MAIL` before `STARTTLS` (a DSN names the recipient and repeats the headers).
    #[serde(default = "default_require_tls")]
    pub require_tls: bool,
    /// Largest DSN taken (bytes); larger ones get `552`.
    #[serde(default = "default_bounce_max_bytes")]
    pub max_message_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_bounce_connections")]
    pub max_connections: usize,
}

fn default_bounce_allow() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}
fn default_require_tls() -> bool {
    true
}
fn default_bounce_max_bytes() -> usize {
    1 << 20
}
fn default_bounce_connections() -> usize {
    32
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpRelayConfig {
    #[serde(default = "default_relay_name")]
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `starttls` (default), `implicit`, or `none` (only with `allow_insecure = true`).
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
    #[serde(default)]
    pub allow_insecure: bool,
    /// Extra trust anchor (PEM) for a private relay.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_server_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_smtp_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "default_smtp_pool")]
    pub pool_size: u32,
    #[serde(default)]
    pub helo_name: Option<String>,
    /// DKIM signing: all three set, or none.
    #[serde(default)]
    pub dkim_selector: Option<String>,
    #[serde(default)]
    pub dkim_domain: Option<String>,
    #[serde(default)]
    pub dkim_private_key_file: Option<PathBuf>,
}

fn default_relay_name() -> String {
    "smtp".to_owned()
}
fn default_smtp_tls() -> String {
    "starttls".to_owned()
}
fn default_smtp_timeout() -> u64 {
    30
}
fn default_smtp_pool() -> u32 {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Audit events older than this are pruned (hourly); tree nodes and signed tree heads are
    /// kept, so what remains still verifies. HIPAA asks for six years.
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 6 * 365,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The externally visible base URL (`https://haven.example.org`); the OAuth issuer. Defaults to
    /// `https://localhost:PORT`. Every node of a cluster must use the same value.
    pub public_url: Option<String>,
    pub tls: TlsConfig,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    pub request_timeout_seconds: u64,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR list). Empty: the TCP peer is the source.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    pub hsts_max_age_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            public_url: None,
            tls: TlsConfig::default(),
            body_limit_bytes: 1024 * 1024,
            request_timeout_seconds: 30,
            trusted_proxies: Vec::new(),
            hsts_max_age_seconds: 63_072_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `false` serves plain HTTP: only behind a TLS-terminating proxy or on loopback.
    pub enabled: bool,
    /// PEM certificate chain; with `key_file`. Unset: a self-signed certificate in `DATA_DIR/tls/`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`. Unset: `sqlite://DATA_DIR/haven.db`.
    pub url: Option<Secret<String>>,
    pub max_connections: u32,
    /// SQLite `synchronous`: `full` (every commit reaches the disk) or `normal`.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a verified credential may be reused without asking the database again. Bounds
    /// how late a revocation made on another node takes effect here (at most 1000 ms).
    pub credential_cache_ms: u64,
    pub failure_window_seconds: u64,
    /// Failures of one key id within the window before it is locked out.
    pub max_failures_per_key: u32,
    /// Failures from one source address within the window before it is locked out.
    pub max_failures_per_address: u32,
    pub lockout_seconds: u64,
    /// `last_used_at` is written at most this often per key and node.
    pub last_used_resolution_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            credential_cache_ms: 500,
            failure_window_seconds: 300,
            max_failures_per_key: 10,
            max_failures_per_address: 50,
            lockout_seconds: 900,
            last_used_resolution_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    pub access_token_ttl_seconds: u64,
    /// A new JWT signing key is made when the active one is this old; the old one stays in the
    /// JWKS until every token it signed has expired.
    pub signing_key_rotation_days: u64,
    /// How often each node reloads the shared signing key set.
    pub keyset_refresh_seconds: u64,
    pub audience: String,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_seconds: 900,
            signing_key_rotation_days: 30,
            keyset_refresh_seconds: 30,
            audience: "haven".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `warn`, `haven=debug,info`…
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at `/metrics`.
    pub enabled: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub bearer_token: Option<Secret<String>>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bearer_token: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterKeyConfig {
    /// A file holding the base64 master key. Unset: `DATA_DIR/master.key`, created on first start.
    pub file: Option<PathBuf>,
    /// The base64 master key itself (prefer `file` or `HAVEN_MASTER_KEY_FILE`).
    pub value: Option<Secret<String>>,
}

/// One thing wrong with the configuration, located by its dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Flags given on the command line; they override file and environment.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
}

/// Where a value came from, for error messages.
const ENV_ALIASES: &[(&str, &[&str])] = &[
    ("HAVEN_DATA_DIR", &["data_dir"]),
    ("HAVEN_LISTEN", &["server", "listen"]),
    ("HAVEN_DATABASE_URL", &["database", "url"]),
    ("HAVEN_MASTER_KEY", &["master_key", "value"]),
    ("HAVEN_MASTER_KEY_FILE", &["master_key", "file"]),
];

/// Top-level keys; an environment variable whose first segment is none of these belongs to
/// something else (`HAVEN_TEST_…`) and is ignored.
const SECTIONS: &[&str] = &[
    "data_dir",
    "server",
    "database",
    "auth",
    "oauth",
    "log",
    "metrics",
    "master_key",
    "audit",
    "encryption",
    "webhooks",
    "messages",
    "dispatch",
    "verify",
    "sms",
    "email",
    "usage",
];

/// Options that hold secrets: `HAVEN_<PATH>_FILE` reads them from a file.
const SECRET_OPTIONS: &[&[&str]] = &[&["database", "url"], &["metrics", "bearer_token"]];

impl Config {
    /// Loads and validates. `env` is normally `std::env::vars()`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut root = toml::Table::new();
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => match text.parse::<toml::Table>() {
                    Ok(table) => root = table,
                    Err(e) => problems.push(problem(&path.display().to_string(), e.to_string())),
                },
                Err(e) => problems.push(problem(&path.display().to_string(), e.to_string())),
            }
        }
        apply_env(&mut root, env, &mut problems);
        if let Some(d) = &cli.data_dir {
            set(
                &mut root,
                &["data_dir"],
                toml::Value::String(d.display().to_string()),
            );
        }
        if let Some(l) = &cli.listen {
            set(
                &mut root,
                &["server", "listen"],
                toml::Value::String(l.clone()),
            );
        }
        if let Some(u) = &cli.database_url {
            set(
                &mut root,
                &["database", "url"],
                toml::Value::String(u.clone()),
            );
        }
        check_shape(&root, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let config: Config = match toml::Value::Table(root).try_into() {
            Ok(c) => c,
            Err(e) => return Err(vec![problem("config", e.to_string())]),
        };
        let semantic = config.validate();
        if semantic.is_empty() {
            Ok(config)
        } else {
            Err(semantic)
        }
    }

    /// Rules that types alone do not express.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            p.push(problem("data_dir", "must not be empty"));
        }
        let tls = &self.server.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            p.push(problem(
                "server.tls",
                "cert_file and key_file must be set together",
            ));
        }
        for (name, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if let Some(f) = file
                && !f.is_file()
            {
                p.push(problem(
                    &format!("server.tls.{name}"),
                    format!("{} is not a readable file", f.display()),
                ));
            }
        }
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("https://") || (!tls.enabled && url.starts_with("http://")))
        {
            p.push(problem(
                "server.public_url",
                "must be an https:// URL (http:// only with tls.enabled = false)",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.server.body_limit_bytes) {
            p.push(problem(
                "server.body_limit_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if !(1..=600).contains(&self.server.request_timeout_seconds) {
            p.push(problem(
                "server.request_timeout_seconds",
                "must be between 1 and 600",
            ));
        }
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if cidr.parse::<IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                p.push(problem(
                    &format!("server.trusted_proxies[{i}]"),
                    format!("{cidr:?} is not a CIDR or address"),
                ));
            }
        }
        if let Some(url) = &self.database.url {
            let u = url.expose();
            if !(u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://"))
            {
                p.push(problem(
                    "database.url",
                    "must start with sqlite:, postgres:// or postgresql://",
                ));
            }
        }
        if !(1..=512).contains(&self.database.max_connections) {
            p.push(problem(
                "database.max_connections",
                "must be between 1 and 512",
            ));
        }
        let a = &self.auth;
        if a.credential_cache_ms > 1000 {
            p.push(problem(
                "auth.credential_cache_ms",
                "must be at most 1000 (revocation must reach every node within a second)",
            ));
        }
        if a.max_failures_per_key == 0 || a.max_failures_per_address == 0 {
            p.push(problem(
                "auth",
                "max_failures_per_key and max_failures_per_address must be at least 1",
            ));
        }
        if a.failure_window_seconds == 0 || a.lockout_seconds == 0 {
            p.push(problem(
                "auth",
                "failure_window_seconds and lockout_seconds must be at least 1",
            ));
        }
        let o = &self.oauth;
        if !(60..=86_400).contains(&o.access_token_ttl_seconds) {
            p.push(problem(
                "oauth.access_token_ttl_seconds",
                "must be between 60 and 86400",
            ));
        }
        if !(1..=365).contains(&o.signing_key_rotation_days) {
            p.push(problem(
                "oauth.signing_key_rotation_days",
                "must be between 1 and 365",
            ));
        }
        if !(1..=3600).contains(&o.keyset_refresh_seconds) {
            p.push(problem(
                "oauth.keyset_refresh_seconds",
                "must be between 1 and 3600",
            ));
        }
        if o.audience.trim().is_empty() {
            p.push(problem("oauth.audience", "must not be empty"));
        }
        if !(1..=36_500).contains(&self.audit.retention_days) {
            p.push(problem(
                "audit.retention_days",
                "must be between 1 and 36500",
            ));
        }
        if !(1..=3650).contains(&self.encryption.data_key_rotation_days) {
            p.push(problem(
                "encryption.data_key_rotation_days",
                "must be between 1 and 3650",
            ));
        }
        if !(1..=3600).contains(&self.encryption.master_key_refresh_seconds) {
            p.push(problem(
                "encryption.master_key_refresh_seconds",
                "must be between 1 and 3600",
            ));
        }
        for (i, cidr) in self.webhooks.allow_targets.iter().enumerate() {
            if cidr.parse::<IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                p.push(problem(
                    &format!("webhooks.allow_targets[{i}]"),
                    format!("{cidr:?} is not a CIDR or address"),
                ));
            }
        }
        let w = &self.webhooks;
        if w.retry_schedule_seconds.is_empty()
            || w.retry_schedule_seconds.len() > 20
            || w.retry_schedule_seconds
                .iter()
                .any(|d| *d == 0 || *d > 7 * 86_400)
        {
            p.push(problem(
                "webhooks.retry_schedule_seconds",
                "must list 1 to 20 delays, each 1 s to 7 days",
            ));
        }
        if !(1..=120).contains(&w.timeout_seconds) {
            p.push(problem(
                "webhooks.timeout_seconds",
                "must be between 1 and 120",
            ));
        }
        if !(1..=1024).contains(&w.concurrency) {
            p.push(problem(
                "webhooks.concurrency",
                "must be between 1 and 1024",
            ));
        }
        self.validate_channels(&mut p);
        for (path, message) in self.usage.problems() {
            p.push(problem(&path, message));
        }
        if self.log.level.trim().is_empty() {
            p.push(problem("log.level", "must not be empty"));
        }
        if let Some(f) = &self.master_key.file
            && self.master_key.value.is_some()
        {
            p.push(problem(
                "master_key",
                format!("set either file ({}) or value, not both", f.display()),
            ));
        }
        p
    }

    fn validate_channels(&self, p: &mut Vec<ConfigProblem>) {
        let v = &self.verify;
        if !(1..=20).contains(&v.max_attempts) {
            p.push(problem("verify.max_attempts", "must be between 1 and 20"));
        }
        if !(1..=86_400).contains(&v.factor_lockout_seconds) {
            p.push(problem(
                "verify.factor_lockout_seconds",
                "must be between 1 and 86400",
            ));
        }
        if v.per_recipient == 0 {
            p.push(problem("verify.per_recipient", "must be at least 1"));
        }
        if !(60..=86_400).contains(&v.rate_window_seconds) {
            p.push(problem(
                "verify.rate_window_seconds",
                "must be between 60 and 86400",
            ));
        }
        if v.per_ip == 0 || v.per_prefix == 0 {
            p.push(problem(
                "verify.per_ip",
                "per_ip and per_prefix must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&v.pumping_min_conversion) {
            p.push(problem(
                "verify.pumping_min_conversion",
                "must be between 0 and 1",
            ));
        }
        if !(60..=604_800).contains(&v.pumping_window_seconds) {
            p.push(problem(
                "verify.pumping_window_seconds",
                "must be between 60 and 604800",
            ));
        }
        if v.pumping_grace_seconds > 86_400 {
            p.push(problem(
                "verify.pumping_grace_seconds",
                "must be at most 86400",
            ));
        }
        let d = &self.dispatch;
        if !(1..=3600).contains(&d.recheck_seconds) {
            p.push(problem(
                "dispatch.recheck_seconds",
                "must be between 1 and 3600",
            ));
        }
        if !(5..=3600).contains(&d.lease_seconds) {
            p.push(problem(
                "dispatch.lease_seconds",
                "must be between 5 and 3600",
            ));
        }
        let m = &self.messages;
        if !(1..=3600).contains(&m.lease_seconds) {
            p.push(problem(
                "messages.lease_seconds",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=10_000).contains(&m.concurrency) {
            p.push(problem(
                "messages.concurrency",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=86_400).contains(&m.retry_max_seconds) {
            p.push(problem(
                "messages.retry_max_seconds",
                "must be between 1 and 86400",
            ));
        }
        if m.rate_per_second > 0 && m.burst == 0 {
            p.push(problem("messages.burst", "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.sms.smsc.iter().enumerate() {
            let at = |k: &str| format!("sms.smsc[{i}].{k}");
            if c.name.trim().is_empty() || !names.insert(c.name.clone()) {
                p.push(problem(&at("name"), "must be set and unique"));
            }
            if c.host.trim().is_empty() {
                p.push(problem(&at("host"), "must not be empty"));
            }
            if c.system_id.is_empty() || c.system_id.len() > 15 {
                p.push(problem(&at("system_id"), "must be 1 to 15 characters"));
            }
            if c.password.is_some() && c.password_file.is_some() {
                p.push(problem(
                    &at("password"),
                    "set password or password_file, not both",
                ));
            }
            if !["transceiver", "transmitter", "receiver"].contains(&c.bind.as_str()) {
                p.push(problem(
                    &at("bind"),
                    "must be transceiver, transmitter or receiver",
                ));
            }
            if !(1..=1000).contains(&c.window) {
                p.push(problem(&at("window"), "must be between 1 and 1000"));
            }
            if !(1..=65_536).contains(&c.inbound_window) {
                p.push(problem(
                    &at("inbound_window"),
                    "must be between 1 and 65536",
                ));
            }
            if !(1..=3600).contains(&c.enquire_link_seconds) {
                p.push(problem(
                    &at("enquire_link_seconds"),
                    "must be between 1 and 3600",
                ));
            }
            for (j, prefix) in c.prefixes.iter().enumerate() {
                let digits = prefix.strip_prefix('+').unwrap_or("");
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    p.push(problem(
                        &format!("sms.smsc[{i}].prefixes[{j}]"),
                        "must be + followed by digits",
                    ));
                }
            }
        }
        if let Some(s) = &self.email.smtp {
            match s.tls.as_str() {
                "starttls" | "implicit" => {}
                "none" if s.allow_insecure => {}
                "none" => p.push(problem(
                    "email.smtp.tls",
                    "none sends PHI in clear: it needs allow_insecure = true",
                )),
                _ => p.push(problem(
                    "email.smtp.tls",
                    "must be starttls, implicit or none",
                )),
            }
            if s.host.trim().is_empty() {
                p.push(problem("email.smtp.host", "must not be empty"));
            }
            if s.password.is_some() && s.password_file.is_some() {
                p.push(problem(
                    "email.smtp.password",
                    "set password or password_file, not both",
                ));
            }
            if !(1..=600).contains(&s.timeout_seconds) {
                p.push(problem(
                    "email.smtp.timeout_seconds",
                    "must be between 1 and 600",
                ));
            }
            let dkim = [
                s.dkim_selector.is_some(),
                s.dkim_domain.is_some(),
                s.dkim_private_key_file.is_some(),
            ];
            if dkim.iter().any(|b| *b) && !dkim.iter().all(|b| *b) {
                p.push(problem(
                    "email.smtp",
                    "dkim_selector, dkim_domain and dkim_private_key_file go together",
                ));
            }
        }
        if let Some(b) = &self.email.bounces {
            if self.email.smtp.is_none() {
                p.push(problem(
                    "email.bounces",
                    "needs [email.smtp]: bounces come back for mail Haven sends",
                ));
            }
            if !is_dns_name(&b.domain) {
                p.push(problem(
                    "email.bounces.domain",
                    "must be a DNS name such as bounces.clinic.example",
                ));
            }
            if b.allow_from.is_empty() {
                p.push(problem(
                    "email.bounces.allow_from",
                    "must list the relay's addresses",
                ));
            }
            if !(16 * 1024..=64 << 20).contains(&b.max_message_bytes) {
                p.push(problem(
                    "email.bounces.max_message_bytes",
                    "must be between 16384 and 67108864",
                ));
            }
            if !(1..=1024).contains(&b.max_connections) {
                p.push(problem(
                    "email.bounces.max_connections",
                    "must be between 1 and 1024",
                ));
            }
            // Port 0 is "any free port": two of them never collide.
            if b.listen == self.server.listen && b.listen.port() != 0 {
                p.push(problem(
                    "email.bounces.listen",
                    "must differ from server.listen",
                ));
            }
        }
    }

    /// The SQLite path or PostgreSQL URL in force.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) => u.expose().clone(),
            None => format!("sqlite://{}", self.data_dir.join("haven.db").display()),
        }
    }

    /// The OAuth issuer and base of absolute URLs.
    pub fn public_url(&self) -> String {
        match &self.server.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.server.tls.enabled {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://localhost:{}", self.server.listen.port())
            }
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 characters, at least two
/// labels, 253 characters at most.
fn is_dns_name(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn problem(path: &str, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn set(root: &mut toml::Table, path: &[&str], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = root;
    for part in parents {
        let entry = table
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        table = t;
    }
    table.insert((*last).to_owned(), value);
}

/// An environment string as the TOML value it spells (`8`, `true`), or as a string.
fn env_value(raw: &str) -> toml::Value {
    let looks_scalar = raw.parse::<i64>().is_ok() || raw == "true" || raw == "false";
    if looks_scalar
        && let Ok(mut t) = format!("v = {raw}").parse::<toml::Table>()
        && let Some(v) = t.remove("v")
    {
        return v;
    }
    toml::Value::String(raw.to_owned())
}

fn apply_env(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("HAVEN_"))
        .collect();
    // Deterministic order: generic names first, so that the documented short aliases win.
    vars.sort();
    let mut aliased = Vec::new();
    for (name, value) in vars {
        if let Some((_, path)) = ENV_ALIASES.iter().find(|(alias, _)| *alias == name) {
            aliased.push((*path, value));
            continue;
        }
        let rest = &name["HAVEN_".len()..];
        let lower = rest.to_ascii_lowercase();
        let mut parts: Vec<String> = lower.split("__").map(str::to_owned).collect();
        if !parts
            .first()
            .is_some_and(|s| SECTIONS.contains(&s.as_str()))
        {
            continue;
        }
        // `HAVEN_DATABASE__URL_FILE`: read a secret option from a file.
        if let Some(last) = parts.last().cloned()
            && let Some(stem) = last.strip_suffix("_file")
        {
            let mut target = parts.clone();
            if let Some(l) = target.last_mut() {
                *l = stem.to_owned();
            }
            let target_ref: Vec<&str> = target.iter().map(String::as_str).collect();
            if SECRET_OPTIONS.contains(&target_ref.as_slice()) {
                match std::fs::read_to_string(&value) {
                    Ok(content) => set(
                        root,
                        &target_ref,
                        toml::Value::String(content.trim().to_owned()),
                    ),
                    Err(e) => problems.push(problem(&name, format!("cannot read {value}: {e}"))),
                }
                continue;
            }
        }
        if parts.iter().any(String::is_empty) {
            problems.push(problem(&name, "malformed variable name"));
            continue;
        }
        let path: Vec<&str> = parts.iter_mut().map(|s| s.as_str()).collect();
        set(root, &path, env_value(&value));
    }
    for (path, value) in aliased {
        set(root, path, env_value(&value));
    }
}

/// Checks each key on its own so that every problem is reported, not just the first.
fn check_shape(root: &toml::Table, problems: &mut Vec<ConfigProblem>) {
    for (key, value) in root {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        match key.as_str() {
            "server" => check_section::<ServerConfig>(
                key,
                value,
                problems,
                &[("tls", check_leaf::<TlsConfig>)],
            ),
            "database" => check_section::<DatabaseConfig>(key, value, problems, &[]),
            "auth" => check_section::<AuthConfig>(key, value, problems, &[]),
            "oauth" => check_section::<OAuthConfig>(key, value, problems, &[]),
            "log" => check_section::<LogConfig>(key, value, problems, &[]),
            "metrics" => check_section::<MetricsConfig>(key, value, problems, &[]),
            "master_key" => check_section::<MasterKeyConfig>(key, value, problems, &[]),
            "audit" => check_section::<AuditConfig>(key, value, problems, &[]),
            "encryption" => check_section::<EncryptionConfig>(key, value, problems, &[]),
            "webhooks" => check_section::<WebhooksConfig>(key, value, problems, &[]),
            "messages" => check_section::<MessagesConfig>(key, value, problems, &[]),
            "dispatch" => check_section::<DispatchConfig>(key, value, problems, &[]),
            "verify" => check_section::<VerifyConfig>(key, value, problems, &[]),
            "sms" => check_section::<SmsConfig>(key, value, problems, &[]),
            "email" => check_section::<EmailConfig>(key, value, problems, &[]),
            "usage" => check_section::<crate::usage::UsageConfig>(key, value, problems, &[]),
            "data_dir" => {
                if let Err(e) = toml::Value::Table(one).try_into::<Config>() {
                    problems.push(problem(key, clean(&e.to_string())));
                }
            }
            other => problems.push(problem(other, "unknown option")),
        }
    }
}

type Checker = fn(&str, &toml::Value, &mut Vec<ConfigProblem>);

fn check_leaf<T: DeserializeOwned>(
    path: &str,
    value: &toml::Value,
    problems: &mut Vec<ConfigProblem>,
) {
    check_section::<T>(path, value, problems, &[]);
}

fn check_section<T: DeserializeOwned>(
    path: &str,
    value: &toml::Value,
    problems: &mut Vec<ConfigProblem>,
    nested: &[(&str, Checker)],
) {
    let Some(table) = value.as_table() else {
        problems.push(problem(path, "must be a table"));
        return;
    };
    for (key, v) in table {
        let child = format!("{path}.{key}");
        if let Some((_, check)) = nested.iter().find(|(n, _)| n == key) {
            check(&child, v, problems);
            continue;
        }
        let mut one = toml::Table::new();
        one.insert(key.clone(), v.clone());
        if let Err(e) = toml::Value::Table(one).try_into::<T>() {
            problems.push(problem(&child, clean(&e.to_string())));
        }
    }
}

/// toml's messages span several lines with a caret diagram; keep the first meaningful line.
fn clean(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(msg)
        .to_owned()
}

fn opt_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    string_list(d).map(Some)
}

/// Accepts `["a", "b"]` or `"a,b"` (the environment form).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Joined(String),
    }
    match Form::deserialize(d)
        .map_err(|_| de::Error::custom("expected a list of strings or a comma-separated string"))?
    {
        Form::List(v) => Ok(v),
        Form::Joined(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
    }
}

fn u64_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<u64>),
        One(u64),
        Joined(String),
    }
    match Form::deserialize(d).map_err(|_| {
        de::Error::custom("expected a list of whole numbers or a comma-separated string")
    })? {
        Form::List(v) => Ok(v),
        Form::One(n) => Ok(vec![n]),
        Form::Joined(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| de::Error::custom(format!("{s:?} is not a whole number")))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[]), &CliOverrides::default())
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8443");
        assert!(c.server.tls.enabled);
        assert_eq!(c.database_url(), "sqlite://./haven-data/haven.db");
        assert_eq!(c.public_url(), "https://localhost:8443");
    }

    #[test]
    fn every_problem_in_a_file_is_reported() {
        let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let text = "bogus = 1\n[server]\nlisten = \"nowhere\"\nbody_limit_bytes = \"big\"\ncolour = \"red\"\n[auth]\ncredential_cache_ms = -4\n[oauth]\naccess_token_ttl_seconds = 5\n";
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let problems = Config::load(Some(f.path()), env(&[]), &CliOverrides::default())
            .err()
            .unwrap_or_default();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "bogus",
            "server.listen",
            "server.body_limit_bytes",
            "server.colour",
            "auth.credential_cache_ms",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {problems:?}"
            );
        }
    }

    #[test]
    fn environment_overrides_file_and_cli_overrides_environment() {
        let c = Config::load(
            None,
            env(&[
                ("HAVEN_SERVER__BODY_LIMIT_BYTES", "4096"),
                ("HAVEN_LISTEN", "127.0.0.1:9000"),
                ("HAVEN_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1"),
                ("HAVEN_TEST_DATABASE_URL", "ignored"),
                ("HAVEN_TLS", "ignored too"),
                ("PATH", "/bin"),
            ]),
            &CliOverrides {
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            },
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(c.server.body_limit_bytes, 4096);
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.server.trusted_proxies, vec!["10.0.0.0/8", "192.168.1.1"]);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        let c2 = Config::load(
            None,
            env(&[("HAVEN_LISTEN", "127.0.0.1:9000")]),
            &CliOverrides {
                listen: Some("127.0.0.1:9100".into()),
                ..Default::default()
            },
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(c2.server.listen.port(), 9100);
    }

    #[test]
    fn typos_in_the_environment_are_errors() {
        let problems = Config::load(
            None,
            env(&[("HAVEN_SERVER__LISTN", "x")]),
            &CliOverrides::default(),
        )
        .err()
        .unwrap_or_default();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "server.listn");
    }

    #[test]
    fn secrets_can_come_from_files_and_are_redacted() {
        let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        f.write_all(b"postgres://u:pw@db/haven\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let path = f.path().display().to_string();
        let c = Config::load(
            None,
            env(&[("HAVEN_DATABASE__URL_FILE", &path)]),
            &CliOverrides::default(),
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(c.database_url(), "postgres://u:pw@db/haven");
        assert!(!c.to_redacted_toml().contains("pw@"));
    }

    #[test]
    fn smsc_windows_are_checked() {
        let load = |extra: &str| {
            let mut f = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
            let text = format!(
                "[[sms.smsc]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = 2775\nsystem_id = \"haven\"\n{extra}"
            );
            f.write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            Config::load(Some(f.path()), env(&[]), &CliOverrides::default())
        };
        let c = load("").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(c.sms.smsc[0].window, 10);
        assert_eq!(c.sms.smsc[0].inbound_window, 4096);
        let c = load("window = 500\ninbound_window = 20000\n").unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(c.sms.smsc[0].inbound_window, 20000);
        let bad: Vec<String> = load("window = 0\ninbound_window = 0\n")
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.path)
            .collect();
        assert_eq!(bad, ["sms.smsc[0].window", "sms.smsc[0].inbound_window"]);
    }

    #[test]
    fn bounce_settings_are_checked() {
        let load = |vars: &[(&str, &str)]| {
            Config::load(None, env(vars), &CliOverrides::default())
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.path)
                .collect::<Vec<_>>()
        };
        let good = load(&[
            ("HAVEN_EMAIL__SMTP__HOST", "relay.test"),
            ("HAVEN_EMAIL__SMTP__PORT", "25"),
            ("HAVEN_EMAIL__BOUNCES__LISTEN", "127.0.0.1:2526"),
            ("HAVEN_EMAIL__BOUNCES__DOMAIN", "bounces.clinic.example"),
        ]);
        assert!(good.is_empty(), "{good:?}");
        // Both on port 0 (any free port, as tests run it) do not collide.
        let any_port = load(&[
            ("HAVEN_LISTEN", "127.0.0.1:0"),
            ("HAVEN_EMAIL__SMTP__HOST", "relay.test"),
            ("HAVEN_EMAIL__SMTP__PORT", "25"),
            ("HAVEN_EMAIL__BOUNCES__LISTEN", "127.0.0.1:0"),
            ("HAVEN_EMAIL__BOUNCES__DOMAIN", "bounces.clinic.example"),
        ]);
        assert!(any_port.is_empty(), "{any_port:?}");
        let bad = load(&[
            ("HAVEN_EMAIL__BOUNCES__LISTEN", "127.0.0.1:8443"),
            ("HAVEN_EMAIL__BOUNCES__DOMAIN", "not a domain"),
            ("HAVEN_EMAIL__BOUNCES__MAX_MESSAGE_BYTES", "10"),
            ("HAVEN_EMAIL__BOUNCES__MAX_CONNECTIONS", "0"),
        ]);
        for path in [
            "email.bounces",
            "email.bounces.domain",
            "email.bounces.max_message_bytes",
            "email.bounces.max_connections",
            "email.bounces.listen",
        ] {
            assert!(bad.iter().any(|p| p == path), "{path} missing from {bad:?}");
        }
        assert!(is_dns_name("a-b.example"));
        assert!(!is_dns_name("example"));
        assert!(!is_dns_name("-a.example"));
    }
}
