//! Carrier connections from configuration: SMPP to the SMSCs, SMTP to the relay.

use crate::app::AnyError;
use haven_messaging::Messaging;
use haven_platform::config::{Config, SmscConfig as SmscSection, SmtpRelayConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn read_secret(
    inline: Option<&haven_platform::Secret<String>>,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<String>, AnyError> {
    if let Some(f) = file {
        let v = std::fs::read_to_string(f)
            .map_err(|e| format!("{what}: cannot read {}: {e}", f.display()))?;
        return Ok(Some(v.trim_end_matches(['\r', '\n']).to_owned()));
    }
    Ok(inline.map(|s| s.expose().clone()))
}

fn smsc(c: &SmscSection) -> Result<haven_smpp::SmscConfig, AnyError> {
    let what = format!("sms.smsc {}", c.name);
    Ok(haven_smpp::SmscConfig {
        name: c.name.clone(),
        host: c.host.clone(),
        port: c.port,
        system_id: c.system_id.clone(),
        password: read_secret(c.password.as_ref(), c.password_file.as_deref(), &what)?
            .unwrap_or_default(),
        system_type: c.system_type.clone(),
        bind: match c.bind.as_str() {
            "transmitter" => haven_smpp::BindType::Transmitter,
            "receiver" => haven_smpp::BindType::Receiver,
            _ => haven_smpp::BindType::Transceiver,
        },
        tls: c.tls,
        ca_file: c.ca_file.clone(),
        tls_server_name: c.tls_server_name.clone(),
        window: c.window,
        inbound_window: c.inbound_window,
        max_per_second: c.max_per_second,
        enquire_link_interval: Duration::from_secs(c.enquire_link_seconds),
        prefixes: c.prefixes.clone(),
        ..haven_smpp::SmscConfig::default()
    })
}

fn smtp(c: &SmtpRelayConfig) -> Result<haven_email::SmtpConfig, AnyError> {
    let mut s = haven_email::SmtpConfig::new(c.name.clone(), c.host.clone());
    s.port = c.port;
    s.tls = match c.tls.as_str() {
        "implicit" => haven_email::SmtpTls::Implicit,
        "none" => haven_email::SmtpTls::None,
        _ => haven_email::SmtpTls::StartTls,
    };
    s.allow_insecure = c.allow_insecure;
    s.ca_file = c.ca_file.clone();
    s.tls_server_name = c.tls_server_name.clone();
    s.username = c.username.clone();
    s.password = read_secret(
        c.password.as_ref(),
        c.password_file.as_deref(),
        "email.smtp",
    )?;
    s.timeout = Duration::from_secs(c.timeout_seconds);
    s.pool_size = c.pool_size;
    s.helo_name = c.helo_name.clone();
    if let (Some(selector), Some(domain), Some(file)) =
        (&c.dkim_selector, &c.dkim_domain, &c.dkim_private_key_file)
    {
        s.dkim = Some(haven_email::DkimConfig {
            selector: selector.clone(),
            domain: domain.clone(),
            private_key_pem: std::fs::read_to_string(file).map_err(|e| {
                format!("email.smtp.dkim_private_key_file: {}: {e}", file.display())
            })?,
        });
    }
    Ok(s)
}

/// The name of the bounce address key among the server secrets.
pub const BOUNCE_KEY_NAME: &str = "email_bounce_key";

/// What the bounce listener needs beyond its configuration.
pub struct BounceSetup {
    /// The key that tags bounce addresses (a server secret, the same on every node).
    pub key: [u8; 32],
    /// The server certificate, offered as STARTTLS; `None` when TLS is off.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The running carrier connections.
pub struct Channels {
    sms: Option<Arc<haven_smpp::SmsChannel>>,
    email: Option<Arc<haven_email::EmailChannel>>,
    bounces: Option<haven_email::bounce::BounceListener>,
}

impl Channels {
    /// Checks the carrier configuration without connecting (for `haven config check`).
    pub fn check(config: &Config) -> Result<(), AnyError> {
        let configs = config
            .sms
            .smsc
            .iter()
            .map(smsc)
            .collect::<Result<Vec<_>, _>>()?;
        haven_smpp::SmsChannel::validate(&configs)
            .map_err(|e| format!("sms.smsc {}: {}", e.route, e.problem))?;
        if let Some(c) = &config.email.smtp {
            smtp(c)?;
        }
        Ok(())
    }

    /// Connects to every configured carrier and makes the channels available to `messaging`.
    pub fn start(
        config: &Config,
        messaging: &Arc<Messaging>,
        bounce_setup: Option<BounceSetup>,
    ) -> Result<Channels, AnyError> {
        let mut out = Channels {
            sms: None,
            email: None,
            bounces: None,
        };
        if !config.sms.smsc.is_empty() {
            let configs = config
                .sms
                .smsc
                .iter()
                .map(smsc)
                .collect::<Result<Vec<_>, _>>()?;
            haven_smpp::SmsChannel::validate(&configs)
                .map_err(|e| format!("sms.smsc {}: {}", e.route, e.problem))?;
            let sink = Arc::clone(messaging) as Arc<dyn haven_channel::InboundSink>;
            let sms = Arc::new(haven_smpp::SmsChannel::start(configs, sink));
            messaging.attach_channel(Arc::clone(&sms) as Arc<dyn haven_channel::Channel>);
            tracing::info!(routes = config.sms.smsc.len(), "SMS channel started");
            out.sms = Some(sms);
        }
        if let Some(c) = &config.email.smtp {
            let mut channel =
                haven_email::EmailChannel::new(smtp(c)?).map_err(|e| format!("email.smtp: {e}"))?;
            if let (Some(b), Some(setup)) = (&config.email.bounces, bounce_setup) {
                let addresses = haven_email::bounce::BounceAddresses::new(&setup.key, &b.domain);
                channel = channel.with_bounces(addresses.clone());
                let listener = haven_email::bounce::BounceListener::start(
                    haven_email::bounce::BounceListenerConfig {
                        route: c.name.clone(),
                        listen: b.listen,
                        allow_from: b.allow_from.clone(),
                        tls: setup.tls,
                        require_tls: b.require_tls,
                        max_message_bytes: b.max_message_bytes,
                        max_connections: b.max_connections,
                        hostname: b.domain.clone(),
                    },
                    addresses,
                    Arc::clone(messaging) as Arc<dyn haven_channel::InboundSink>,
                )
                .map_err(|e| match e {
                    haven_email::bounce::BounceListenerError::TlsMissing => {
                        "email.bounces.require_tls needs server.tls enabled (its certificate is offered as STARTTLS); or set require_tls = false".to_owned()
                    }
                    other => format!("email.bounces: {other}"),
                })?;
                tracing::info!(route = %c.name, listen = %listener.local_addr(), domain = %b.domain, "bounce listener started");
                out.bounces = Some(listener);
            }
            let email = Arc::new(channel);
            messaging.attach_channel(Arc::clone(&email) as Arc<dyn haven_channel::Channel>);
            tracing::info!(route = %c.name, "email channel started");
            out.email = Some(email);
        }
        Ok(out)
    }

    /// Stops taking bounces, unbinds from the SMSCs and closes relay connections.
    pub async fn shutdown(&mut self) {
        self.bounces = None;
        if let Some(s) = &self.sms {
            s.shutdown().await;
        }
        if let Some(e) = &self.email {
            e.shutdown().await;
        }
    }
}
