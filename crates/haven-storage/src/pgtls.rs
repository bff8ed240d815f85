//! TLS to PostgreSQL, chosen from where the server is.
//!
//! libpq's default (`sslmode=prefer`) encrypts when the server offers it but verifies nothing
//! and falls back to clear text when it does not: against a server across a network it stops a
//! passive listener at best. Haven decides instead, unless the URL (`sslmode=…`) or
//! `PGSSLMODE` says otherwise:
//! - a server on this host (a Unix-domain socket, `localhost`, a loopback address): no TLS.
//!   The traffic never leaves the host, and whoever can read the loopback interface can read
//!   the process memory at both ends; TLS would only cost CPU on both sides of every query.
//! - any other server: `verify-full`, so the server must present a certificate that the
//!   trusted roots (`sslrootcert`, or the system's) sign for that host name. A server that
//!   offers no TLS, or a certificate for another name, is refused.
//!
//! A mode chosen explicitly is kept. When it leaves a remote server unverified (`disable`,
//! `allow`, `prefer`, `require`), Haven warns at start: that is the operator's choice to make,
//! not Haven's to hide.

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::net::IpAddr;

/// What Haven does about TLS for one database URL.
#[derive(Debug, Clone)]
pub(crate) struct PgTls {
    /// The mode to connect with.
    pub mode: PgSslMode,
    /// Why the operator should look again, when the choice leaves the traffic exposed.
    pub warning: Option<String>,
}

/// Whether the URL itself names a TLS mode (`sslmode` or sqlx's `ssl-mode`).
fn url_names_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .filter_map(|pair| pair.split('=').next())
            .any(|key| key == "sslmode" || key == "ssl-mode")
    })
}

/// Whether the options reach a server on this host.
fn is_local(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options.get_host();
    if host.starts_with('/') || host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The policy for `options` parsed from `url`; `env_mode` is `PGSSLMODE` when set.
pub(crate) fn policy(url: &str, env_mode: Option<&str>, options: &PgConnectOptions) -> PgTls {
    let local = is_local(options);
    let explicit = url_names_mode(url) || env_mode.is_some_and(|m| !m.is_empty());
    if !explicit {
        let mode = if local {
            PgSslMode::Disable
        } else {
            PgSslMode::VerifyFull
        };
        return PgTls {
            mode,
            warning: None,
        };
    }
    let mode = options.get_ssl_mode();
    let unverified = matches!(
        mode,
        PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require
    );
    let warning = (!local && unverified).then(|| {
        format!(
            "database.url: sslmode={} leaves the traffic to {} unverified{}; use sslmode=verify-full (the default for a server on another host)",
            mode_name(mode),
            options.get_host(),
            if matches!(mode, PgSslMode::Disable | PgSslMode::Allow | PgSslMode::Prefer) {
                " and possibly in clear text"
            } else {
                ""
            }
        )
    });
    PgTls { mode, warning }
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// The mode by name, and the warning. `env` is `PGSSLMODE`, which sqlx reads into the
    /// options (the URL's own mode, when it names one, wins).
    fn decide(url: &str, env: Option<&str>) -> (&'static str, Option<String>) {
        let mut options = PgConnectOptions::from_str(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        if let Some(m) = env.filter(|_| !url_names_mode(url)) {
            options =
                options.ssl_mode(PgSslMode::from_str(m).unwrap_or_else(|e| panic!("{m}: {e}")));
        }
        shown(policy(url, env, &options))
    }

    fn shown(t: PgTls) -> (&'static str, Option<String>) {
        (mode_name(t.mode), t.warning)
    }

    #[test]
    fn a_server_on_this_host_gets_no_tls_by_default() {
        for url in [
            "postgres://haven@127.0.0.1:5432/haven",
            "postgres://haven@127.0.0.2/haven",
            "postgres://haven@localhost/haven",
            "postgres://haven@[::1]:5432/haven",
            "postgres://haven@%2Fvar%2Frun%2Fpostgresql/haven",
            "postgres:///haven?host=/var/run/postgresql",
        ] {
            assert_eq!(decide(url, None), ("disable", None), "{url}");
        }
    }

    #[test]
    fn a_server_elsewhere_must_prove_its_name_by_default() {
        for url in [
            "postgres://haven@db.hospital.internal/haven",
            "postgres://haven@10.0.0.5:5432/haven",
            "postgres://haven@[2001:db8::5]/haven?application_name=x",
        ] {
            assert_eq!(decide(url, None), ("verify-full", None), "{url}");
        }
    }

    #[test]
    fn an_explicit_mode_is_kept_and_an_unverified_remote_one_is_warned_about() {
        let (mode, w) = decide("postgres://haven@db.internal/haven?sslmode=require", None);
        assert_eq!(mode, "require");
        let w = w.unwrap_or_default();
        assert!(
            w.contains("sslmode=require") && w.contains("db.internal"),
            "{w}"
        );
        assert!(!w.contains("clear text"), "{w}");
        let (mode, w) = decide("postgres://haven@db.internal/haven?ssl-mode=disable", None);
        assert_eq!(mode, "disable");
        assert!(w.unwrap_or_default().contains("clear text"));
        let t = decide("postgres://haven@db.internal/haven?sslmode=verify-ca", None);
        assert_eq!(t, ("verify-ca", None));
        // On this host, an explicit choice is kept without a warning.
        let t = decide("postgres://haven@127.0.0.1/haven?sslmode=require", None);
        assert_eq!(t, ("require", None));
    }

    #[test]
    fn pgsslmode_counts_as_explicit() {
        // sqlx reads PGSSLMODE into the options; the policy only learns that it was set.
        let t = decide("postgres://haven@127.0.0.1/haven", Some("require"));
        assert_eq!(t, ("require", None));
        let (mode, w) = decide("postgres://haven@db.internal/haven", Some("prefer"));
        assert_eq!(mode, "prefer");
        assert!(w.is_some());
    }
}
