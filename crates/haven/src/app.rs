//! Wiring: from configuration to opened services, first-start set-up, operator commands.

use clap::Subcommand;
use haven_crypto::keys::write_private_file;
use haven_crypto::ring::{KeyProvider, MasterKeys};
use haven_identity::{DisplayName, Identity, NewKey, Principal, RequestMeta};
use haven_platform::config::Config;
use haven_platform::page::PageRequest;
use haven_storage::{BufferedAudit, Store, StoreOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// What `prepare` opened.
pub struct Opened {
    pub store: Store,
    pub master: Arc<MasterKeys>,
    pub vault: Arc<haven_vault::Vault>,
    pub contacts: Arc<haven_contacts::Contacts>,
    pub webhooks: Arc<haven_webhooks::Webhooks>,
    pub messaging: Arc<haven_messaging::Messaging>,
    pub dispatch: Arc<haven_dispatch::Dispatcher>,
    pub verify: Arc<haven_verify::Verifier>,
    pub factors: Arc<haven_verify::factors::Factors>,
    pub reports: Arc<haven_reports::Reports>,
    pub identity: Arc<Identity>,
    pub audit_log: Arc<haven_audit::AuditLog>,
    pub audit: BufferedAudit,
    pub retention_days: u64,
    pub audit_task: tokio::task::JoinHandle<()>,
}

pub fn cert_paths(config: &Config) -> (PathBuf, PathBuf) {
    match (&config.server.tls.cert_file, &config.server.tls.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (
            config.data_dir.join("tls/cert.pem"),
            config.data_dir.join("tls/key.pem"),
        ),
    }
}

/// The master key ring: `HAVEN_MASTER_KEY` (fixed for the process), a configured file, or
/// `DATA_DIR/master.key` (created on first start). Files are re-read when they change.
fn load_master_key(config: &Config) -> Result<MasterKeys, AnyError> {
    if let Some(v) = &config.master_key.value {
        return Ok(MasterKeys::from_text(v.expose())?);
    }
    if let Some(f) = &config.master_key.file {
        return MasterKeys::from_file(f)
            .map_err(|e| format!("cannot read the master key file {}: {e}", f.display()).into());
    }
    let path = config.data_dir.join("master.key");
    let (ring, created) = MasterKeys::load_or_create(&path)
        .map_err(|e| format!("master key {}: {e}", path.display()))?;
    if created {
        tracing::info!(path = %path.display(), key_id = %ring.active_id(), "created a new master key; back it up: without it the data cannot be read");
    }
    Ok(ring)
}

fn ensure_data_dir(dir: &Path) -> Result<(), AnyError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn ensure_certificate(config: &Config) -> Result<(), AnyError> {
    if !config.server.tls.enabled || config.server.tls.cert_file.is_some() {
        return Ok(());
    }
    let (cert, key) = cert_paths(config);
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let (cert_pem, key_pem) = haven_crypto::tls::self_signed_localhost()?;
    write_private_file(&key, key_pem.as_bytes())?;
    std::fs::write(&cert, cert_pem)?;
    tracing::warn!(cert = %cert.display(), "created a self-signed certificate for localhost; configure server.tls.cert_file and key_file for production");
    Ok(())
}

const WRONG_MASTER_KEY: &str = "the master key does not match this database (was it initialized with another master key? copy its master.key or set HAVEN_MASTER_KEY_FILE)";

/// Opens everything the server and the operator commands need, creating what a first start
/// lacks, and bootstraps the root account.
pub async fn prepare(config: &Config, public_url: String) -> Result<Opened, AnyError> {
    ensure_data_dir(&config.data_dir)?;
    let master = Arc::new(load_master_key(config)?);
    ensure_certificate(config)?;
    let opts = StoreOptions {
        max_connections: config.database.max_connections,
        sqlite_synchronous: config.database.sqlite_synchronous,
    };
    let store = Store::open(&config.database_url(), &opts)
        .await
        .map_err(|e| format!("database: {e}"))?;
    let (audit, audit_task) = BufferedAudit::start(store.audit());
    let audit_log = Arc::new(
        haven_audit::AuditLog::open(store.audit(), master.as_ref())
            .await
            .map_err(|e| match e {
                haven_audit::AuditError::Crypto(haven_crypto::CryptoError::Unseal) => {
                    WRONG_MASTER_KEY.to_owned()
                }
                other => format!("opening the audit log: {other}"),
            })?,
    );
    let token_settings = haven_identity::TokenSettings {
        issuer: public_url,
        audience: config.oauth.audience.clone(),
        ttl_seconds: config.oauth.access_token_ttl_seconds,
        rotation_ms: i64::try_from(config.oauth.signing_key_rotation_days * 86_400_000)
            .unwrap_or(i64::MAX / 4),
    };
    let identity = Identity::open(
        store.identity(),
        Arc::new(audit.clone()),
        Arc::clone(&master) as Arc<dyn KeyProvider>,
        (&config.auth).into(),
        token_settings,
    )
    .await
    .map_err(|e| match e {
        haven_identity::IdentityError::Crypto(haven_crypto::CryptoError::Unseal) => {
            WRONG_MASTER_KEY.to_owned()
        }
        other => format!("opening identity: {other}"),
    })?;
    let identity = Arc::new(identity);
    let vault = Arc::new(haven_vault::Vault::new(
        store.vault(),
        Arc::clone(&master) as Arc<dyn KeyProvider>,
        haven_vault::VaultSettings {
            data_key_max_age_ms: i64::try_from(config.encryption.data_key_rotation_days)
                .unwrap_or(3650)
                * 86_400_000,
            ..Default::default()
        },
    ));
    let contacts = Arc::new(haven_contacts::Contacts::new(
        store.contacts(),
        Arc::clone(&vault),
        Arc::new(audit.clone()),
    ));
    if let Some((account, issued)) = identity.bootstrap("root").await? {
        let path = config.data_dir.join("bootstrap-admin.json");
        let doc = serde_json::json!({ "account_id": account.id, "key_id": issued.key.id, "secret": issued.secret });
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        write_private_file(&path, format!("{doc:#}\n").as_bytes())?;
        // The one time the secret is shown; it never goes to the log.
        println!(
            "Created the root account {} and its first admin API key.",
            account.id
        );
        println!("  key id: {}", issued.key.id);
        println!(
            "  secret: {}   (shown once; also saved to {}, mode 0600)",
            issued.secret,
            path.display()
        );
    }
    let w = &config.webhooks;
    let webhooks = Arc::new(
        haven_webhooks::Webhooks::new(
            store.webhooks(),
            Arc::clone(&vault),
            Arc::new(audit.clone()),
            haven_webhooks::WebhookSettings {
                policy: haven_webhooks::TargetPolicy {
                    allow: w
                        .allow_targets
                        .iter()
                        .filter_map(|c| haven_identity::parse_cidr(c))
                        .collect(),
                },
                retry_schedule: w
                    .retry_schedule_seconds
                    .iter()
                    .map(|s| std::time::Duration::from_secs(*s))
                    .collect(),
                timeout: std::time::Duration::from_secs(w.timeout_seconds),
                concurrency: w.concurrency,
            },
        )
        .map_err(|e| format!("webhook client: {e}"))?,
    );
    let m = &config.messages;
    let messaging = haven_messaging::Messaging::new(
        store.messages(),
        Arc::clone(&vault),
        Arc::clone(&contacts),
        Arc::new(audit.clone()),
        haven_messaging::MessagingSettings {
            rate_per_second: m.rate_per_second,
            burst: m.burst,
            lease: std::time::Duration::from_secs(m.lease_seconds),
            concurrency: m.concurrency,
            retry_max: std::time::Duration::from_secs(m.retry_max_seconds),
            keywords: {
                let mut k = haven_messaging::KeywordSettings::default();
                if let Some(v) = &m.stop_keywords {
                    k.stop = v.clone();
                }
                if let Some(v) = &m.start_keywords {
                    k.start = v.clone();
                }
                if let Some(v) = &m.help_keywords {
                    k.help = v.clone();
                }
                if let Some(v) = &m.stop_reply {
                    k.stop_reply = v.clone();
                }
                if let Some(v) = &m.start_reply {
                    k.start_reply = v.clone();
                }
                if let Some(v) = &m.help_reply {
                    k.help_reply = v.clone();
                }
                k
            },
            rates: config.usage.clone(),
            ..Default::default()
        },
    );
    {
        let webhooks = Arc::clone(&webhooks);
        messaging.on_events(Arc::new(move || webhooks.notify()));
    }
    let dispatch = haven_dispatch::Dispatcher::new(
        store.dispatch(),
        Arc::clone(&messaging),
        Arc::new(audit.clone()),
        haven_dispatch::DispatchSettings {
            recheck: std::time::Duration::from_secs(config.dispatch.recheck_seconds),
            lease: std::time::Duration::from_secs(config.dispatch.lease_seconds),
            ..Default::default()
        },
    );
    {
        let webhooks = Arc::clone(&webhooks);
        dispatch.on_events(Arc::new(move || webhooks.notify()));
    }
    let verify = haven_verify::Verifier::new(
        store.verify(),
        Arc::clone(&messaging),
        Arc::clone(&vault),
        Arc::new(audit.clone()),
        haven_verify::VerifySettings {
            max_attempts: i64::from(config.verify.max_attempts),
            per_recipient: i64::from(config.verify.per_recipient),
            recipient_window: std::time::Duration::from_secs(config.verify.rate_window_seconds),
            per_ip: i64::from(config.verify.per_ip),
            per_prefix: i64::from(config.verify.per_prefix),
            pumping_window: std::time::Duration::from_secs(config.verify.pumping_window_seconds),
            pumping_min_sends: i64::from(config.verify.pumping_min_sends),
            pumping_min_conversion: config.verify.pumping_min_conversion,
            pumping_grace: std::time::Duration::from_secs(config.verify.pumping_grace_seconds),
            ..Default::default()
        },
    );
    {
        let webhooks = Arc::clone(&webhooks);
        verify.on_events(Arc::new(move || webhooks.notify()));
    }
    let factors = Arc::new(haven_verify::factors::Factors::new(
        store.factors(),
        Arc::clone(&vault),
        Arc::new(audit.clone()),
        haven_verify::factors::FactorSettings {
            max_failures: i64::from(config.verify.max_attempts),
            lockout: std::time::Duration::from_secs(config.verify.factor_lockout_seconds),
        },
    ));
    let reports = haven_reports::Reports::new(
        store.usage(),
        Arc::clone(&identity),
        Arc::new(audit.clone()),
    );
    Ok(Opened {
        store,
        master,
        vault,
        contacts,
        webhooks,
        messaging,
        dispatch,
        verify,
        factors,
        reports,
        identity,
        audit_log,
        audit,
        retention_days: config.audit.retention_days,
        audit_task,
    })
}

impl Opened {
    pub async fn close(self) {
        self.audit.flush().await;
        drop(self.reports);
        drop(self.factors);
        drop(self.verify);
        drop(self.dispatch);
        drop(self.messaging);
        drop(self.webhooks);
        drop(self.contacts);
        drop(self.vault);
        drop(self.identity);
        drop(self.audit_log);
        drop(self.audit);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.audit_task).await;
        self.store.close().await;
    }

    async fn operator(&self) -> Result<Principal, AnyError> {
        let root = self
            .identity
            .root_account()
            .await?
            .ok_or("no root account")?;
        Ok(Principal::operator(&root.id))
    }
}

pub async fn init(config: &Config) -> Result<(), AnyError> {
    let opened = prepare(config, config.public_url()).await?;
    opened.identity.audit_admin_command("init", None).await;
    println!("Haven is initialized in {}.", config.data_dir.display());
    opened.close().await;
    Ok(())
}

pub async fn migrate(config: &Config) -> Result<(), AnyError> {
    let opts = StoreOptions {
        max_connections: 2,
        sqlite_synchronous: config.database.sqlite_synchronous,
    };
    ensure_data_dir(&config.data_dir)?;
    let store = Store::open_unmigrated(&config.database_url(), &opts).await?;
    let applied = store.migrate().await?;
    println!(
        "{} database is up to date ({} migration(s) applied now).",
        store.backend_name(),
        applied.len()
    );
    store.close().await;
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// List every account.
    List,
    /// Create a master account (a separate tenant), or a subaccount with --parent.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        parent: Option<String>,
    },
    /// Suspend an account: its credentials (and its subaccounts') stop working.
    Suspend { account_id: String },
    /// Reactivate a suspended account.
    Reactivate { account_id: String },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List an account's API keys.
    List {
        #[arg(long)]
        account: String,
    },
    /// Create an API key; prints its secret once.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
        /// A scope such as messages:write (repeat for more).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A CIDR block the key may be used from (repeat for more).
        #[arg(long = "allow")]
        allowed_cidrs: Vec<String>,
        /// RFC 3339 expiry.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revoke an API key.
    Revoke {
        #[arg(long)]
        account: String,
        key_id: String,
    },
    /// Make a new OAuth token signing key now (running servers pick it up within
    /// oauth.keyset_refresh_seconds; the old key stays published until its tokens expire).
    RotateSigning,
    /// Add a new master key to the ring and re-wrap every key under it, while servers run.
    /// With a key file, the new key is generated and written there; with HAVEN_MASTER_KEY,
    /// put the new key first in the ring yourself, then run this to re-wrap.
    RotateMaster,
    /// Remove an old master key from the ring file once nothing is wrapped under it.
    RetireMaster { key_id: String },
    /// Show which master keys the ring holds and how many keys each wraps.
    MasterStatus,
    /// Replace data keys now: one account's, or (without --account) every key past the
    /// configured age. Old data keys stay, for decryption only.
    RotateData {
        #[arg(long)]
        account: Option<String>,
    },
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn account_json(a: &haven_identity::Account) -> serde_json::Value {
    serde_json::json!({ "id": a.id, "parent_account_id": a.parent_id, "name": a.name, "status": a.status.as_str(),
        "created_at": haven_platform::clock::to_rfc3339(a.created_at_ms) })
}

fn key_json(k: &haven_identity::ApiKey) -> serde_json::Value {
    serde_json::json!({ "id": k.id, "account_id": k.account_id, "name": k.name, "scopes": k.scopes.to_strings(),
        "status": k.status(haven_platform::clock::now_ms()).as_str() })
}

pub async fn accounts(config: &Config, cmd: AccountsCommand) -> Result<(), AnyError> {
    let opened = prepare(config, config.public_url()).await?;
    let result = run_accounts(&opened, cmd).await;
    opened.close().await;
    result
}

async fn run_accounts(o: &Opened, cmd: AccountsCommand) -> Result<(), AnyError> {
    let op = o.operator().await?;
    let meta = RequestMeta::default();
    match cmd {
        AccountsCommand::List => {
            let mut page = PageRequest::parse(Some(200), None)?;
            loop {
                let p = o.identity.list_accounts(&op, &page).await?;
                for a in &p.items {
                    print_json(&account_json(a));
                }
                match p.next_cursor {
                    Some(c) => page = PageRequest::parse(Some(200), Some(&c))?,
                    None => break,
                }
            }
            o.identity.audit_admin_command("accounts list", None).await;
        }
        AccountsCommand::Create { name, parent } => {
            let name = DisplayName::parse("name", &name).map_err(|e| e.message)?;
            let a = o
                .identity
                .admin_create_account(&op, name, parent.as_deref(), &meta)
                .await?;
            o.identity
                .audit_admin_command("accounts create", Some(("account", &a.id)))
                .await;
            print_json(&account_json(&a));
        }
        AccountsCommand::Suspend { account_id } => {
            let patch = haven_identity::AccountPatch {
                name: None,
                status: Some(haven_identity::AccountStatus::Suspended),
            };
            let a = o
                .identity
                .update_account(&op, &account_id, patch, &meta)
                .await?;
            o.identity
                .audit_admin_command("accounts suspend", Some(("account", &a.id)))
                .await;
            print_json(&account_json(&a));
        }
        AccountsCommand::Reactivate { account_id } => {
            let patch = haven_identity::AccountPatch {
                name: None,
                status: Some(haven_identity::AccountStatus::Active),
            };
            let a = o
                .identity
                .update_account(&op, &account_id, patch, &meta)
                .await?;
            o.identity
                .audit_admin_command("accounts reactivate", Some(("account", &a.id)))
                .await;
            print_json(&account_json(&a));
        }
    }
    Ok(())
}

pub async fn keys(config: &Config, cmd: KeysCommand) -> Result<(), AnyError> {
    let opened = prepare(config, config.public_url()).await?;
    let result = run_keys(&opened, cmd).await;
    opened.close().await;
    result
}

async fn run_keys(o: &Opened, cmd: KeysCommand) -> Result<(), AnyError> {
    let op = o.operator().await?;
    let meta = RequestMeta::default();
    match cmd {
        KeysCommand::List { account } => {
            let mut page = PageRequest::parse(Some(200), None)?;
            loop {
                let p = o.identity.list_keys(&op, &account, &page).await?;
                for k in &p.items {
                    print_json(&key_json(k));
                }
                match p.next_cursor {
                    Some(c) => page = PageRequest::parse(Some(200), Some(&c))?,
                    None => break,
                }
            }
            o.identity
                .audit_admin_command("keys list", Some(("account", &account)))
                .await;
        }
        KeysCommand::Create {
            account,
            name,
            scopes,
            allowed_cidrs,
            expires_at,
        } => {
            let req = NewKey::parse(
                &name,
                &scopes,
                &allowed_cidrs,
                expires_at.as_deref(),
                haven_platform::clock::now_ms(),
            )
            .map_err(|errs| {
                errs.iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            let issued = o.identity.create_key(&op, &account, req, &meta).await?;
            o.identity
                .audit_admin_command("keys create", Some(("key", &issued.key.id)))
                .await;
            let mut v = key_json(&issued.key);
            v["secret"] = serde_json::Value::String(issued.secret);
            print_json(&v);
        }
        KeysCommand::Revoke { account, key_id } => {
            let k = o.identity.revoke_key(&op, &account, &key_id, &meta).await?;
            o.identity
                .audit_admin_command("keys revoke", Some(("key", &k.id)))
                .await;
            print_json(&key_json(&k));
        }
        KeysCommand::RotateSigning => {
            let kid = o
                .identity
                .tokens()
                .rotate(haven_platform::clock::now_ms())
                .await?;
            o.identity
                .audit_admin_command("keys rotate-signing", Some(("signing_key", &kid)))
                .await;
            println!("{kid}");
        }
        KeysCommand::RotateMaster => rotate_master(o).await?,
        KeysCommand::RetireMaster { key_id } => {
            let path = o.master.file().ok_or(
                "the master key ring comes from HAVEN_MASTER_KEY; remove the key there (after checking `haven keys master-status`)",
            )?;
            let usage = o.vault.master_usage().await?;
            let still = usage
                .iter()
                .filter(|(id, n)| (*id == key_id || id == "legacy") && *n > 0)
                .map(|(_, n)| n)
                .sum::<usize>();
            if still > 0 {
                return Err(format!(
                    "{still} key(s) are still wrapped by {key_id} (or by a key of unknown id); run `haven keys rotate-master` first"
                )
                .into());
            }
            haven_crypto::ring::remove_from_file(path, &key_id)?;
            o.identity
                .audit_admin_command("keys retire-master", Some(("master_key", &key_id)))
                .await;
            println!("Removed {key_id} from {}.", path.display());
        }
        KeysCommand::MasterStatus => {
            let active = o.master.active_id();
            for (id, n) in o.vault.master_usage().await? {
                let role = if id == active {
                    "active"
                } else {
                    "decrypt-only"
                };
                print_json(&serde_json::json!({ "id": id, "role": role, "wraps": n }));
            }
        }
        KeysCommand::RotateData { account } => {
            let n = match &account {
                Some(a) => {
                    o.identity.get_account(&op, a).await?;
                    usize::from(o.vault.rotate_account(a).await?.is_some())
                }
                None => o.vault.rotate_due().await?,
            };
            o.identity
                .audit_admin_command(
                    "keys rotate-data",
                    account.as_deref().map(|a| ("account", a)),
                )
                .await;
            println!("{n} data key(s) replaced.");
        }
    }
    Ok(())
}

/// `haven keys rotate-master`: new key first in the ring, then every wrapped key re-wrapped
/// under it (compare-and-set, so running servers may keep writing). A second pass catches
/// keys a server wrapped before it noticed the new ring.
async fn rotate_master(o: &Opened) -> Result<(), AnyError> {
    let before = o.master.active_id();
    let new_id = match o.master.file() {
        Some(path) => {
            let id = haven_crypto::ring::rotate_file(path)?;
            o.master.refresh()?;
            println!(
                "Added master key {id} to {} (first: it wraps from now on).",
                path.display()
            );
            id
        }
        None => {
            println!(
                "The master key ring comes from HAVEN_MASTER_KEY: re-wrapping under its first key, {before}."
            );
            before.clone()
        }
    };
    let mut last = std::time::Instant::now();
    let mut progress = |done: usize, total: usize| {
        if last.elapsed() >= std::time::Duration::from_millis(500) || done == total {
            last = std::time::Instant::now();
            eprint!("\rre-wrapping: {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let mut report = o.vault.rewrap_master(&mut progress).await?;
    // Servers follow the ring file within encryption.master_key_refresh_seconds; whatever they
    // wrapped meanwhile under the old key is caught here.
    let wait = std::time::Duration::from_secs(1);
    for _ in 0..3 {
        let stale: usize = report
            .usage
            .iter()
            .filter(|(id, _)| *id != new_id)
            .map(|(_, n)| n)
            .sum();
        if stale == 0 {
            break;
        }
        tokio::time::sleep(wait).await;
        let again = o.vault.rewrap_master(&mut progress).await?;
        report.rewrapped += again.rewrapped;
        report.usage = again.usage;
    }
    o.identity
        .audit_admin_command("keys rotate-master", Some(("master_key", &new_id)))
        .await;
    println!(
        "Re-wrapped {} of {} key(s) under {new_id}.",
        report.rewrapped, report.total
    );
    for (id, n) in &report.usage {
        println!("  {id}: wraps {n}");
    }
    if let Some(path) = o.master.file() {
        println!(
            "When every node runs with the new ring and your backups no longer need the old key, remove it: haven keys retire-master {before}  (ring file: {})",
            path.display()
        );
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the whole audit log and every signed tree head; name the first event that was
    /// altered, deleted, inserted or reordered. Exit status 1 if anything is wrong.
    Verify,
    /// Sign and print the current tree head.
    TreeHead,
    /// Delete audit events older than a time (default: the configured retention), keeping the
    /// tree's hashes and signed heads so that what remains still verifies.
    Prune {
        /// RFC 3339; events before it go.
        #[arg(long)]
        before: Option<String>,
    },
    /// Write audit events to standard output, oldest first, with their leaf bytes and hashes.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// RFC 3339; events at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339; events before.
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

fn csv_field(v: Option<&str>) -> String {
    let v = v.unwrap_or("");
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

async fn export(
    o: &Opened,
    format: ExportFormat,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(), AnyError> {
    use std::io::Write;
    let parse = |name: &str, v: Option<&str>| -> Result<Option<i64>, AnyError> {
        v.map(|s| {
            haven_platform::clock::parse_rfc3339(s)
                .ok_or_else(|| format!("--{name} must be an RFC 3339 timestamp").into())
        })
        .transpose()
    };
    let (since, until) = (parse("since", since)?, parse("until", until)?);
    let total = o.audit_log.store().tree_size().await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if matches!(format, ExportFormat::Csv) {
        writeln!(
            out,
            "leaf_index,id,time,action,outcome,account_id,credential_id,auth_method,source_addr,user_agent,resource_type,resource_id,reason,request_id,leaf_hash"
        )?;
    }
    let (mut cursor, mut written, mut last_report) = (0u64, 0u64, std::time::Instant::now());
    loop {
        let rows = o.audit_log.store().scan(cursor, 5000).await?;
        let Some(last) = rows.last().map(|r| r.leaf_index) else {
            break;
        };
        cursor = last + 1;
        for e in rows {
            if since.is_some_and(|s| e.at_ms < s) || until.is_some_and(|u| e.at_ms >= u) {
                continue;
            }
            let leaf = e.leaf();
            let hash = haven_audit::b64(&haven_audit::merkle::leaf_hash(&leaf));
            let time = haven_platform::clock::to_rfc3339(e.at_ms);
            match format {
                ExportFormat::Jsonl => {
                    let line = serde_json::json!({
                        "leaf_index": e.leaf_index, "id": e.id, "time": time, "action": e.action, "outcome": e.outcome,
                        "account_id": e.account_id, "credential_id": e.credential_id, "auth_method": e.auth_method,
                        "source_addr": e.source_addr, "user_agent": e.user_agent, "resource_type": e.resource_type,
                        "resource_id": e.resource_id, "reason": e.reason, "request_id": e.request_id,
                        "leaf": haven_audit::b64(&leaf), "leaf_hash": hash,
                    });
                    writeln!(out, "{line}")?;
                }
                ExportFormat::Csv => {
                    let index = e.leaf_index.to_string();
                    let fields = [
                        Some(index.as_str()),
                        Some(e.id.as_str()),
                        Some(time.as_str()),
                        Some(e.action.as_str()),
                        Some(e.outcome.as_str()),
                        e.account_id.as_deref(),
                        e.credential_id.as_deref(),
                        e.auth_method.as_deref(),
                        e.source_addr.as_deref(),
                        e.user_agent.as_deref(),
                        e.resource_type.as_deref(),
                        e.resource_id.as_deref(),
                        e.reason.as_deref(),
                        e.request_id.as_deref(),
                        Some(hash.as_str()),
                    ];
                    writeln!(
                        out,
                        "{}",
                        fields
                            .iter()
                            .map(|f| csv_field(*f))
                            .collect::<Vec<_>>()
                            .join(",")
                    )?;
                }
            }
            written += 1;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(1) {
            eprintln!(
                "haven audit export: {}/{total} events read",
                cursor.min(total)
            );
            last_report = std::time::Instant::now();
        }
    }
    out.flush()?;
    eprintln!("haven audit export: {written} events written");
    Ok(())
}

pub async fn audit(config: &Config, cmd: AuditCommand) -> Result<(), AnyError> {
    let opened = prepare(config, config.public_url()).await?;
    let result = run_audit(&opened, cmd).await;
    opened.close().await;
    result
}

async fn run_audit(o: &Opened, cmd: AuditCommand) -> Result<(), AnyError> {
    match cmd {
        AuditCommand::TreeHead => {
            let h = o.audit_log.tree_head().await?;
            print_json(&serde_json::json!({
                "tree_size": h.tree_size, "timestamp": h.timestamp_ms, "root_hash": haven_audit::b64(&h.root_hash),
                "signature": haven_audit::b64(&h.signature), "public_key": haven_audit::b64(&o.audit_log.public_key()),
            }));
        }
        AuditCommand::Prune { before } => {
            let before_ms = match before {
                Some(b) => haven_platform::clock::parse_rfc3339(&b)
                    .ok_or("--before must be an RFC 3339 timestamp")?,
                None => {
                    haven_platform::clock::now_ms()
                        - i64::try_from(o.retention_days * 86_400_000).unwrap_or(i64::MAX / 2)
                }
            };
            o.audit.flush().await;
            let (boundary, n) = o.audit_log.prune(before_ms).await?;
            o.identity.audit_admin_command("audit prune", None).await;
            println!(
                "pruned {n} audit event(s); events below index {boundary} are gone, their hashes and signed tree heads kept"
            );
        }
        AuditCommand::Export {
            format,
            since,
            until,
        } => {
            o.audit.flush().await;
            export(o, format, since.as_deref(), until.as_deref()).await?;
            o.identity.audit_admin_command("audit export", None).await;
        }
        AuditCommand::Verify => {
            // Everything queued is stored first. No new tree head is signed here: a head signed
            // over a tampered database would bless it; the existing heads are what is checked.
            o.audit.flush().await;
            let mut last_report = std::time::Instant::now();
            let report = o
                .audit_log
                .verify(|done, total| {
                    if last_report.elapsed() >= std::time::Duration::from_secs(1) || done == total {
                        eprintln!("haven audit verify: {done}/{total} events checked");
                        last_report = std::time::Instant::now();
                    }
                })
                .await?;
            o.identity.audit_admin_command("audit verify", None).await;
            if report.problems.is_empty() {
                println!(
                    "audit log verified: {} events, {} signed tree heads, no problems",
                    report.tree_size, report.heads_checked
                );
            } else {
                for p in &report.problems {
                    println!("PROBLEM: {p}");
                }
                return Err(format!(
                    "the audit log failed verification: {} problem(s), the first: {}",
                    report.problems.len(),
                    report.problems[0]
                )
                .into());
            }
        }
    }
    Ok(())
}
