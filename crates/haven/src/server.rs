//! The HTTPS server: rustls (TLS 1.2 minimum) in front of hyper and the axum application, with
//! graceful shutdown on SIGTERM and Ctrl-C.

use crate::app::{self, AnyError};
use haven_http::{AppState, HttpSettings, PeerAddr};
use haven_platform::config::Config;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

fn tls_acceptor(config: &Config) -> Result<TlsAcceptor, AnyError> {
    let mut tls = tls_server_config(config)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// The server certificate, TLS 1.2 and 1.3: for HTTPS and the bounce listener's STARTTLS.
fn tls_server_config(config: &Config) -> Result<rustls::ServerConfig, AnyError> {
    let (cert_path, key_path) = app::cert_paths(config);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("reading {}: {e}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading {}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("reading {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?)
}

/// Point reads on the runtime threads take microseconds; the upper buckets catch one that
/// waited inside SQLite.
const INLINE_READ_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Buckets of every other `*_seconds` histogram (commits, writer waits and holds, sends,
/// claims, appends): from a fraction of a millisecond to the seconds of a stalled disk.
const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Buckets of `haven_http_request_duration_seconds`.
const REQUEST_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn metrics_recorder(config: &Config) -> Result<Option<PrometheusHandle>, AnyError> {
    if !config.metrics.enabled {
        return Ok(None);
    }
    Ok(Some(prometheus_builder()?.install_recorder()?))
}

/// The exporter with every histogram's buckets. The specific rules win over the general
/// `_seconds` one because the exporter tries `Full` matchers before `Suffix` ones, and suffixes
/// in order (`_lag_seconds` before `_seconds`); a test holds it to that.
fn prometheus_builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("haven_http_request_duration_seconds".to_owned()),
            &REQUEST_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Suffix("_lag_seconds".to_owned()),
            &crate::lag::BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("haven_sqlite_inline_read_seconds".to_owned()),
            &INLINE_READ_BUCKETS,
        )?
        // Every other duration is a cumulative histogram too, not a summary: a summary's
        // quantiles cover a sliding window, so a stall early in a run is gone from them by the
        // time they are read, while buckets diffed around a run place it.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &DURATION_BUCKETS)
}

pub async fn serve(config: Config) -> Result<(), AnyError> {
    let tls = config.server.tls.enabled;
    if !tls {
        tracing::warn!(
            "TLS IS DISABLED: serving plain HTTP. Use this only behind a TLS-terminating proxy or on loopback for development."
        );
        eprintln!(
            "haven: WARNING: TLS is disabled (server.tls.enabled = false); serving plain HTTP"
        );
    }
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let local = listener.local_addr()?;
    let _ = std::fs::remove_file(config.data_dir.join("listen.addr"));
    // With port 0 the default public URL (the OAuth issuer) must name the port actually bound.
    let public_url = match &config.server.public_url {
        Some(_) => config.public_url(),
        None => format!(
            "{}://localhost:{}",
            if tls { "https" } else { "http" },
            local.port()
        ),
    };
    let opened = app::prepare(&config, public_url.clone()).await?;
    let bounces = match &config.email.bounces {
        Some(_) => Some(crate::channels::BounceSetup {
            key: haven_identity::system_secret(
                opened.store.identity().as_ref(),
                opened.master.as_ref(),
                crate::channels::BOUNCE_KEY_NAME,
            )
            .await
            .map_err(|e| format!("email.bounces: {e}"))?,
            tls: if tls {
                Some(Arc::new(tls_server_config(&config)?))
            } else {
                None
            },
        }),
        None => None,
    };
    let mut channels = crate::channels::Channels::start(&config, &opened.messaging, bounces)?;
    let acceptor = if tls {
        Some(tls_acceptor(&config)?)
    } else {
        None
    };
    let metrics = metrics_recorder(&config)?;
    let mut trusted_proxies = Vec::new();
    for p in &config.server.trusted_proxies {
        if let Some(n) = haven_identity::parse_cidr(p) {
            trusted_proxies.push(n);
        }
    }
    let openapi_json = haven_http::openapi_document().to_json()?;
    let state = Arc::new(AppState {
        identity: Arc::clone(&opened.identity),
        vault: Arc::clone(&opened.vault),
        contacts: Arc::clone(&opened.contacts),
        webhooks: Arc::clone(&opened.webhooks),
        messaging: Arc::clone(&opened.messaging),
        dispatch: Arc::clone(&opened.dispatch),
        verify: Arc::clone(&opened.verify),
        factors: Arc::clone(&opened.factors),
        reports: Arc::clone(&opened.reports),
        audit: Arc::clone(&opened.audit_log),
        root_account_id: opened
            .identity
            .root_account()
            .await?
            .map(|a| a.id)
            .ok_or("no root account")?,
        idempotency: opened.store.idempotency(),
        health: opened.store.health(),
        metrics: metrics.clone(),
        settings: HttpSettings {
            body_limit: config.server.body_limit_bytes,
            request_timeout: Duration::from_secs(config.server.request_timeout_seconds),
            tls,
            hsts: tls
                .then(|| {
                    format!(
                        "max-age={}; includeSubDomains",
                        config.server.hsts_max_age_seconds
                    )
                })
                .and_then(|v| axum::http::HeaderValue::from_str(&v).ok()),
            trusted_proxies,
            public_url,
            metrics_token: config.metrics.bearer_token.clone(),
        },
        ready: std::sync::atomic::AtomicBool::new(true),
        openapi_json,
    });
    let app = haven_http::app(Arc::clone(&state));

    // Scripts and tests that asked for port 0 learn the port here.
    std::fs::write(config.data_dir.join("listen.addr"), format!("{local}\n"))?;
    tracing::info!(addr = %local, tls, database = opened.store.backend_name(), version = env!("CARGO_PKG_VERSION"), "listening");

    let maintenance = {
        let identity = Arc::clone(&opened.identity);
        let audit_log = Arc::clone(&opened.audit_log);
        let every = Duration::from_secs(config.oauth.keyset_refresh_seconds);
        let retention_ms = i64::try_from(config.audit.retention_days.saturating_mul(86_400_000))
            .unwrap_or(i64::MAX / 2);
        let mut last_prune: Option<std::time::Instant> = None;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = identity.maintain().await {
                    tracing::warn!(error = %e, "maintenance failed");
                }
                // A signed tree head per period when the log has grown: checkpoints for
                // `haven audit verify` and for auditors.
                if let Err(e) = audit_log.tree_head().await {
                    tracing::warn!(error = %e, "signing an audit tree head failed");
                }
                // Retention, hourly: events past it go; the tree keeps their hashes.
                if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                    last_prune = Some(std::time::Instant::now());
                    match audit_log
                        .prune(haven_platform::clock::now_ms() - retention_ms)
                        .await
                    {
                        Ok((_, 0)) => {}
                        Ok((boundary, n)) => {
                            tracing::info!(pruned = n, boundary, "audit retention applied")
                        }
                        Err(e) => tracing::warn!(error = %e, "audit retention failed"),
                    }
                }
                if let Some(m) = &metrics {
                    m.run_upkeep();
                }
            }
        })
    };

    let lag_probe = metrics.is_some().then(crate::lag::start);
    let webhook_worker = tokio::spawn(Arc::clone(&opened.webhooks).run());
    let message_sender = tokio::spawn(Arc::clone(&opened.messaging).run_sender());
    let message_receipts = tokio::spawn(Arc::clone(&opened.messaging).run_receipts());
    let dispatch_worker = tokio::spawn(Arc::clone(&opened.dispatch).run());
    let verify_worker = tokio::spawn(Arc::clone(&opened.verify).run());
    if !config.webhooks.allow_targets.is_empty() {
        tracing::warn!(allow = ?config.webhooks.allow_targets, "webhooks may target these private addresses, over plain HTTP too (webhooks.allow_targets); leave it empty in production");
    }
    let key_upkeep = {
        let master = Arc::clone(&opened.master);
        let vault = Arc::clone(&opened.vault);
        let every = Duration::from_secs(config.encryption.master_key_refresh_seconds);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_rotation: Option<std::time::Instant> = None;
            loop {
                tick.tick().await;
                // Follow `haven keys rotate-master` run elsewhere.
                match haven_crypto::ring::KeyProvider::refresh(master.as_ref()) {
                    Ok(true) => tracing::info!(
                        active = %haven_crypto::ring::KeyProvider::active_id(master.as_ref()),
                        "master key ring changed"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "re-reading the master key ring failed"),
                }
                // Scheduled data key rotation, checked every ten minutes.
                if last_rotation.is_none_or(|t| t.elapsed() >= Duration::from_secs(600)) {
                    last_rotation = Some(std::time::Instant::now());
                    match vault.rotate_due().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rotated = n, "account data keys rotated"),
                        Err(e) => tracing::warn!(error = %e, "data key rotation failed"),
                    }
                }
            }
        })
    };

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }

    tracing::info!("shutting down: no new connections; draining");
    state.ready.store(false, Ordering::Relaxed);
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in time");
    }
    maintenance.abort();
    key_upkeep.abort();
    webhook_worker.abort();
    message_sender.abort();
    message_receipts.abort();
    dispatch_worker.abort();
    verify_worker.abort();
    if let Some(p) = lag_probe {
        p.abort();
    }
    // Sends already handed to a carrier finish (bounded by the carrier's own timeouts); the
    // rest stay queued for the next start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    channels.shutdown().await;
    drop(app);
    drop(state);
    opened.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The bucket bounds the rendered exposition gives `name`.
    fn bounds(text: &str, name: &str) -> Vec<String> {
        let prefix = format!("{name}_bucket{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| {
                l.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .filter(|b| b != "+Inf")
            .collect()
    }

    fn as_text(buckets: &[f64]) -> Vec<String> {
        buckets.iter().map(f64::to_string).collect()
    }

    /// Each histogram gets its own buckets: the specific rules are not shadowed by the general
    /// `_seconds` one, and every other duration is a histogram, not a summary.
    #[test]
    fn every_duration_gets_its_buckets() {
        let recorder = prometheus_builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for name in [
                "haven_http_request_duration_seconds",
                "haven_runtime_lag_seconds",
                "haven_thread_lag_seconds",
                "haven_sqlite_inline_read_seconds",
                "haven_group_commit_seconds",
                "haven_sqlite_wal_restart_seconds",
            ] {
                metrics::histogram!(name).record(0.003);
            }
        });
        let text = handle.render();
        let cases: [(&str, &[f64]); 6] = [
            ("haven_http_request_duration_seconds", &REQUEST_BUCKETS),
            ("haven_runtime_lag_seconds", &crate::lag::BUCKETS),
            ("haven_thread_lag_seconds", &crate::lag::BUCKETS),
            ("haven_sqlite_inline_read_seconds", &INLINE_READ_BUCKETS),
            ("haven_group_commit_seconds", &DURATION_BUCKETS),
            ("haven_sqlite_wal_restart_seconds", &DURATION_BUCKETS),
        ];
        for (name, want) in cases {
            assert_eq!(bounds(&text, name), as_text(want), "{name} in:\n{text}");
        }
    }
}
