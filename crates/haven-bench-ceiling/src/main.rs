//! The performance ceiling for Haven's platform benchmark (`scripts/bench`).
//!
//! A bare rustls + hyper server that answers every request with a constant
//! `200 {"ok":true}`. It uses the same stack as Haven (tokio multi-threaded
//! runtime, rustls with aws-lc-rs, TLS 1.2/1.3, ALPN h2 + http/1.1, hyper-util's
//! auto HTTP/1.1 + h2 connection builder) but does no routing,
//! authentication or storage work, so its throughput is the most Haven could
//! reach on the same machine. The benchmark reports Haven's numbers as a
//! percentage of this one.
//!
//! Usage: `haven-bench-ceiling --listen ADDR:PORT --cert CERT.pem --key KEY.pem`

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "usage: haven-bench-ceiling --listen ADDR:PORT --cert CERT.pem --key KEY.pem";

/// The constant response body.
const BODY: &[u8] = b"{\"ok\":true}";

/// A client that connects but never finishes the TLS handshake must not hold
/// a task (and a file descriptor) forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    cert: String,
    key: String,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, BoxError> {
    let mut listen = None;
    let mut cert = None;
    let mut key = None;
    while let Some(flag) = argv.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag, None),
        };
        let slot = match name.as_str() {
            "--listen" => &mut listen,
            "--cert" => &mut cert,
            "--key" => &mut key,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        };
        let value = match inline {
            Some(v) => v,
            None => argv
                .next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?,
        };
        if slot.replace(value).is_some() {
            return Err(format!("{name} given twice").into());
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: {e} (expected ADDR:PORT)"))?;
    Ok(Args {
        listen,
        cert: cert.ok_or_else(|| format!("--cert is required\n{USAGE}"))?,
        key: key.ok_or_else(|| format!("--key is required\n{USAGE}"))?,
    })
}

fn tls_config(cert_path: &str, key_path: &str) -> Result<ServerConfig, BoxError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {cert_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {cert_path}").into());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("reading private key from {key_path}: {e}"))?;

    let mut config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate/key from {cert_path}/{key_path}: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn handle(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    // Content-Length is derived by hyper from the body's exact size hint.
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Resolves on SIGINT or SIGTERM (the benchmark script stops us with TERM).
async fn shutdown_signal() -> Result<(), BoxError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn serve(args: Args) -> Result<(), BoxError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&args.cert, &args.key)?));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    // HTTP/1.1 keep-alive is on by default; h2 is picked when the client
    // sends the HTTP/2 preface (as it does after negotiating ALPN h2).
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    eprintln!(
        "haven-bench-ceiling listening on https://{}",
        listener.local_addr()?
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            r = &mut shutdown => return r,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually EMFILE or ECONNABORTED: transient, so keep
                    // serving, after a pause so as not to spin.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small responses: do not let Nagle delay them.
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("set_nodelay: {e}");
        }
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                // Failed or timed-out handshakes are the client's problem; a
                // benchmark server stays quiet about them.
                Ok(Err(_)) | Err(_) => return,
            };
            // Errors here are mostly clients closing mid-connection (wrk does
            // at the end of every run); nothing to report.
            let _ = builder
                .serve_connection(TokioIo::new(tls), service_fn(handle))
                .await;
        });
    }
}

/// What `main` returns on failure. The standard library prints a returned
/// error with `Debug`, which would show a `String` message quoted and
/// escaped; this shows the plain message instead.
struct Report(BoxError);

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl<E: Into<BoxError>> From<E> for Report {
    fn from(e: E) -> Self {
        Report(e.into())
    }
}

fn main() -> Result<(), Report> {
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let args = parse_args(std::env::args().skip(1))?;

    // rustls needs a process-wide provider when more than one could be
    // compiled in; choose aws-lc-rs explicitly, as Haven does.
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .map_err(|_| "a rustls crypto provider was already installed")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, BoxError> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_both_flag_forms() -> Result<(), BoxError> {
        let a = args(&[
            "--listen",
            "127.0.0.1:8443",
            "--cert=c.pem",
            "--key",
            "k.pem",
        ])?;
        assert_eq!(a.listen, "127.0.0.1:8443".parse::<SocketAddr>()?);
        assert_eq!(a.cert, "c.pem");
        assert_eq!(a.key, "k.pem");
        Ok(())
    }

    #[test]
    fn rejects_bad_input() {
        assert!(args(&[]).is_err());
        assert!(args(&["--listen", "nope", "--cert", "c", "--key", "k"]).is_err());
        assert!(args(&["--listen", "127.0.0.1:1", "--cert", "c"]).is_err());
        assert!(args(&["--listen"]).is_err());
        assert!(args(&["--bogus", "x"]).is_err());
        assert!(args(&["--cert", "a", "--cert", "b"]).is_err());
    }

    #[test]
    fn missing_pem_files_are_errors() {
        assert!(tls_config("/nonexistent/cert.pem", "/nonexistent/key.pem").is_err());
    }
}
