//! The tamper-evident audit log: what is recorded, who may read it, proofs checked by
//! third-party code (pymerkle, cryptography), and tampering with the database caught by
//! `haven audit verify`.

use crate::both_backends;
use crate::common::*;
use reqwest::Method;
use serde_json::Value;
use std::process::Command;

both_backends!(
    events_are_recorded_and_isolated,
    proofs_verify_with_third_party_code,
    tampering_is_detected,
    retention_and_export,
    a_master_proves_its_subaccounts_events_with_audit_read_alone
);

async fn events(s: &Server, kid: &str, secret: &str, query: &str) -> Vec<Value> {
    let (st, page) = send(s.as_key(
        Method::GET,
        &format!("/v1/audit/events?page_size=200{query}"),
        kid,
        secret,
    ))
    .await;
    assert_eq!(st, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

async fn events_are_recorded_and_isolated(backend: Backend) {
    let s = Server::start(backend).await;
    let (ak, asec) = (s.admin.key_id.clone(), s.admin.secret.clone());
    let a = create_subaccount(&s, "A").await;
    let b = create_subaccount(&s, "B").await;
    let (ka, sa) = create_key(&s, &a, &["audit:read", "accounts:read"]).await;
    let (kb, sb) = create_key(&s, &b, &["audit:read", "accounts:read"]).await;
    // A failure and a success for A's key; the request id ties the event to the request.
    expect_problem(
        s.as_key(Method::GET, &format!("/v1/accounts/{a}"), &ka, "hks_wrong"),
        401,
        "unauthenticated",
    )
    .await;
    let res = s
        .as_key(Method::GET, &format!("/v1/accounts/{a}"), &ka, &sa)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request_id = res.headers()["x-request-id"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    let _ = send(s.as_key(Method::GET, &format!("/v1/accounts/{b}"), &kb, &sb)).await;
    // A request that records an event of its own is one event, not two: that event names
    // the credential and how it authenticated.
    let renamed = s
        .admin(Method::PATCH, &format!("/v1/accounts/{b}"))
        .json(&serde_json::json!({"name": "B, renamed"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(renamed.status(), 200);
    let rename_id = renamed.headers()["x-request-id"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let all = events(&s, &ak, &asec, "").await;
    let actions: Vec<&str> = all.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["account.created", "key.created", "auth.api_key"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    let failures = events(
        &s,
        &ak,
        &asec,
        &format!("&action=auth.api_key&outcome=failure&credential_id={ka}"),
    )
    .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["reason"], "bad_secret");
    assert_eq!(failures[0]["actor"]["account_id"], a);
    assert_eq!(failures[0]["actor"]["source_addr"], "127.0.0.1");
    let by_request = all
        .iter()
        .find(|e| e["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no event for {request_id}"));
    assert_eq!(
        (
            by_request["action"].as_str(),
            by_request["outcome"].as_str()
        ),
        (Some("auth.api_key"), Some("success"))
    );
    let of_rename: Vec<&Value> = all
        .iter()
        .filter(|e| e["request_id"] == rename_id)
        .collect();
    assert_eq!(of_rename.len(), 1, "{of_rename:?}");
    assert_eq!(of_rename[0]["action"], "account.renamed");
    assert_eq!(of_rename[0]["outcome"], "success");
    assert_eq!(of_rename[0]["actor"]["credential_id"], ak.as_str());
    assert_eq!(of_rename[0]["actor"]["auth_method"], "api_key");
    // No secret ever appears in an event.
    assert!(
        !serde_json::to_string(&all)
            .unwrap_or_default()
            .contains("hks_")
    );
    // Indices are the tree positions, in order.
    let idx: Vec<u64> = all
        .iter()
        .filter_map(|e| e["leaf_index"].as_u64())
        .collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]));

    // A sees its own events only; B's events and their proofs are not found.
    let mine = events(&s, &ka, &sa, "").await;
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|e| e["actor"]["account_id"] == a),
        "{mine:?}"
    );
    let b_event = all
        .iter()
        .find(|e| e["actor"]["account_id"] == b)
        .unwrap_or_else(|| panic!("no event of B"));
    expect_problem(
        s.as_key(
            Method::GET,
            &format!(
                "/v1/audit/events/{}/proof",
                b_event["id"].as_str().unwrap_or("")
            ),
            &ka,
            &sa,
        ),
        404,
        "not-found",
    )
    .await;
    assert!(
        events(&s, &ka, &sa, &format!("&account_id={b}"))
            .await
            .is_empty()
    );
    // Without audit:read, nothing.
    let (kx, sx) = create_key(&s, &a, &["accounts:read"]).await;
    expect_problem(
        s.as_key(Method::GET, "/v1/audit/events", &kx, &sx),
        403,
        "insufficient-scope",
    )
    .await;
    expect_problem(
        s.as_key(Method::GET, "/v1/audit/events?since=yesterday", &ak, &asec),
        400,
        "malformed-request",
    )
    .await;
    expect_problem(
        s.as_key(
            Method::GET,
            "/v1/audit/consistency?first=5&second=2",
            &ak,
            &asec,
        ),
        422,
        "validation-failed",
    )
    .await;
    expect_problem(
        s.as_key(Method::GET, "/v1/audit/events/evt_nope/proof", &ak, &asec),
        404,
        "not-found",
    )
    .await;
}

fn auditor(s: &Server, extra: &[&str]) -> Result<Value, String> {
    let out = Command::new(python())
        .arg(repo_root().join("tests/py/audit_verify.py"))
        .args(["--base-url", &s.base, "--ca-file"])
        .arg(s.dir.join("tls/cert.pem"))
        .args(["--key-id", &s.admin.key_id, "--secret", &s.admin.secret])
        .args(extra)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

async fn proofs_verify_with_third_party_code(backend: Backend) {
    // The operator's view: a master account that sees everything it owns. The bootstrap
    // admin's own tree is the whole log here, since every event is about it or its subaccounts
    // (events with no account, such as failures with unknown key ids, are the operator's only).
    let s = Server::start(backend).await;
    // Enough events that proofs span several blocks of 2^STORED_FROM leaves: they then need
    // stored upper nodes as well as nodes computed from leaf hashes.
    let block = 1u64 << haven_audit::merkle::STORED_FROM;
    for name in ["A", "B", "C"] {
        create_subaccount(&s, name).await;
    }
    let first = grown_past(&s, block + 7).await;
    let first_size = first["tree_size"].as_u64().unwrap_or(0);
    for name in ["D", "E", "F", "G", "H"] {
        create_subaccount(&s, name).await;
    }
    grown_past(&s, 3 * block).await;
    let got = auditor(
        &s,
        &[
            "--all-visible",
            "--first-size",
            &first_size.to_string(),
            "--first-root",
            first["root_hash"].as_str().unwrap_or(""),
        ],
    )
    .unwrap_or_else(|e| panic!("the third-party auditor refused the log: {e}"));
    assert_eq!(got["signature_valid"], true);
    assert_eq!(got["rebuilt_root_matches"], true);
    let size = got["tree_size"].as_u64().unwrap_or(0);
    assert!(size > first_size);
    assert_eq!(got["inclusion_verified"].as_u64(), Some(size));
    // Haven's own consistency proof between the two signed heads verifies (RFC 9162 §2.1.4.2).
    let (_, second) = send(s.admin(Method::GET, "/v1/audit/tree-head")).await;
    assert_consistent(&s, &first, &second).await;
}

/// Makes authenticated requests (each one's authentication is an event, queued for the next
/// group commit) until the signed tree head covers more than `size` events; returns that head.
async fn grown_past(s: &Server, size: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (st, head) = send(s.admin(Method::GET, "/v1/audit/tree-head")).await;
        assert_eq!(st, 200, "{head}");
        if head["tree_size"].as_u64().unwrap_or(0) > size {
            return head;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not grow past {size}: {head}"
        );
    }
}

/// Fetches Haven's consistency proof between two signed tree heads and checks it with the
/// RFC 9162 §2.1.4.2 algorithm.
async fn assert_consistent(s: &Server, first: &Value, second: &Value) {
    use base64::Engine;
    let dec = |v: &Value| -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .unwrap_or_default()
            .try_into()
            .unwrap_or([0; 32])
    };
    let (m, n) = (
        first["tree_size"].as_u64().unwrap_or(0),
        second["tree_size"].as_u64().unwrap_or(0),
    );
    let (st, c) = send(s.admin(
        Method::GET,
        &format!("/v1/audit/consistency?first={m}&second={n}"),
    ))
    .await;
    assert_eq!(st, 200, "{c}");
    let proof: Vec<[u8; 32]> = c["consistency"]
        .as_array()
        .into_iter()
        .flatten()
        .map(dec)
        .collect();
    assert!(
        haven_audit::merkle::verify_consistency(
            m,
            n,
            &proof,
            &dec(&first["root_hash"]),
            &dec(&second["root_hash"])
        ),
        "the consistency proof {m} → {n} does not verify: {c}"
    );
}

/// Runs SQL against the stopped server's database.
pub async fn exec(backend: Backend, url: &str, sql: &str) {
    use sqlx::Connection;
    match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
}

fn verify(dir: &std::path::Path, url: &str) -> (bool, String) {
    let out = haven_cli(dir, url, &["audit", "verify"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn tampering_is_detected(backend: Backend) {
    let mut s = Server::start(backend).await;
    for name in ["A", "B", "C", "D"] {
        create_subaccount(&s, name).await;
    }
    let (_, list) = send(s.admin(Method::GET, "/v1/audit/events?page_size=10")).await;
    let id_at = |i: usize| list["items"][i]["id"].as_str().unwrap_or("").to_owned();
    let e3 = id_at(3);
    // A signed checkpoint that the forged-signature case below can break.
    let (st, _) = send(s.admin(Method::GET, "/v1/audit/tree-head")).await;
    assert_eq!(st, 200);
    s.stop();
    let (dir, url) = (s.dir.clone(), s.database_url.clone());

    let (ok, out) = verify(&dir, &url);
    assert!(ok, "an untouched log must verify:\n{out}");
    assert!(out.contains("no problems"), "{out}");

    exec(
        backend,
        &url,
        "CREATE TABLE saved AS SELECT * FROM audit_log",
    )
    .await;
    // Verification itself appends events (each run is an audited operator command), so a
    // restore replaces only the saved range and removes what the test forged.
    let restore = "DELETE FROM audit_log WHERE leaf_index < (SELECT COUNT(*) FROM saved) OR leaf_index >= 100000; INSERT INTO audit_log SELECT * FROM saved";

    let caught = |tamper: String, expected: String| {
        let (dir, url) = (dir.clone(), url.clone());
        async move {
            exec(backend, &url, &tamper).await;
            let (ok, out) = verify(&dir, &url);
            assert!(
                !ok && out.contains(&expected),
                "expected «{expected}» after «{tamper}»:\n{out}"
            );
            exec(backend, &url, restore).await;
        }
    };
    // Altered: one field of one event.
    caught(
        "UPDATE audit_log SET action = 'key.read' WHERE leaf_index = 3".into(),
        format!("event {e3} at index 3 was altered"),
    )
    .await;
    // Altered: any other column, here where the request came from. No copy of the leaf is
    // stored beside the columns; the tree's level-0 hash is what they must match.
    caught(
        "UPDATE audit_log SET source_addr = '203.0.113.9' WHERE leaf_index = 3".into(),
        format!("event {e3} at index 3 was altered"),
    )
    .await;
    // Deleted.
    caught(
        "DELETE FROM audit_log WHERE leaf_index = 5".into(),
        "the event at index 5 was deleted".into(),
    )
    .await;
    // Inserted: a copy of an event past the end of the tree.
    caught(
        "INSERT INTO audit_log SELECT leaf_index + 100000, 'evt_forged', at_ms, action, outcome, account_id, credential_id, auth_method, source_addr, user_agent, resource_type, resource_id, reason, request_id FROM saved WHERE leaf_index = 5".into(),
        "event evt_forged at index 100005 was inserted".into(),
    )
    .await;
    // Reordered: two events swap places.
    caught(
        "UPDATE audit_log SET leaf_index = -1 WHERE leaf_index = 5; UPDATE audit_log SET leaf_index = 5 WHERE leaf_index = 6; UPDATE audit_log SET leaf_index = 6 WHERE leaf_index = -1".into(),
        "at index 5 was reordered (it was appended at index 6)".into(),
    )
    .await;
    let (ok, out) = verify(&dir, &url);
    assert!(ok, "the restored log must verify again:\n{out}");

    // A forged tree head signature.
    exec(
        backend,
        &url,
        "UPDATE audit_tree_heads SET signature = root_hash",
    )
    .await;
    let (ok, out) = verify(&dir, &url);
    assert!(!ok && out.contains("has an invalid signature"), "{out}");
}

/// A minimal RFC 4180 reader, enough to check the export's quoting.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field, mut quoted, mut chars) = (
        Vec::new(),
        Vec::new(),
        String::new(),
        false,
        text.chars().peekable(),
    );
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    rows
}

async fn retention_and_export(backend: Backend) {
    let mut s = Server::start(backend).await;
    const AGENT: &str = "Probe, \"quoted\" agent";
    let (st, _) = send(
        s.admin(Method::GET, &format!("/v1/accounts/{}", s.admin.account_id))
            .header("user-agent", AGENT),
    )
    .await;
    assert_eq!(st, 200);
    create_subaccount(&s, "A").await;
    let (_, checkpoint) = send(s.admin(Method::GET, "/v1/audit/tree-head")).await;
    let first_size = checkpoint["tree_size"].as_u64().unwrap_or(0);
    s.stop();
    let (dir, url) = (s.dir.clone(), s.database_url.clone());

    // Export: JSON Lines and CSV, the same events, leaf hashes that match the leaves.
    let out = haven_cli(&dir, &url, &["audit", "export", "--format", "jsonl"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    assert!(
        lines.len() as u64 >= first_size,
        "{} lines for a tree of {first_size}",
        lines.len()
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (n, l) in lines.iter().enumerate() {
        assert_eq!(l["leaf_index"].as_u64(), Some(n as u64));
        let leaf = b64
            .decode(l["leaf"].as_str().unwrap_or(""))
            .unwrap_or_default();
        assert_eq!(
            l["leaf_hash"],
            b64.encode(haven_audit::merkle::leaf_hash(&leaf))
        );
    }
    assert!(lines.iter().any(|l| l["user_agent"] == AGENT));
    let out = haven_cli(&dir, &url, &["audit", "export", "--format", "csv"]);
    let rows = csv_rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rows[0][0], "leaf_index");
    assert!(
        rows[1..].iter().all(|r| r.len() == rows[0].len()),
        "ragged CSV"
    );
    assert!(
        rows.len() > lines.len(),
        "the CSV export (made later) has at least as many events"
    );
    assert!(
        rows.iter().any(|r| r[9] == AGENT),
        "the user agent did not survive CSV quoting"
    );

    // Retention: everything before now goes; the log still verifies, tree heads included.
    // (The cutoff has whole seconds: step past the second the events were made in.)
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = haven_cli(
        &dir,
        &url,
        &[
            "audit",
            "prune",
            "--before",
            &crate::accounts::time_in(std::time::Duration::ZERO),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pruned "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (ok, report) = verify(&dir, &url);
    assert!(ok, "a pruned log must still verify:\n{report}");
    assert!(
        !haven_cli(&dir, &url, &["audit", "export"])
            .stdout
            .windows(AGENT.len())
            .any(|w| w == AGENT.as_bytes())
    );

    // After a restart: pruned events are gone, new ones are proven, and the pre-pruning head is
    // still consistent with the new one.
    s.restart().await;
    let (_, list) = send(s.admin(Method::GET, "/v1/audit/events?page_size=200")).await;
    let first_visible = list["items"][0]["leaf_index"].as_u64().unwrap_or(0);
    assert!(
        first_visible >= first_size,
        "pruned events are still listed: first index {first_visible}"
    );
    let (_, head) = send(s.admin(Method::GET, "/v1/audit/tree-head")).await;
    assert_consistent(&s, &checkpoint, &head).await;
    let got =
        auditor(&s, &[]).unwrap_or_else(|e| panic!("the auditor refused the pruned log: {e}"));
    assert!(got["inclusion_verified"].as_u64().unwrap_or(0) > 0, "{got}");
}

async fn a_master_proves_its_subaccounts_events_with_audit_read_alone(backend: Backend) {
    let s = Server::start(backend).await;
    // A second tenant: a master account other than the operator's root.
    let out = haven_cli(
        &s.dir,
        &s.database_url,
        &["accounts", "create", "--name", "Second Hospital"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let master: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let master = master["id"].as_str().unwrap_or_default().to_owned();
    let out = haven_cli(
        &s.dir,
        &s.database_url,
        &[
            "keys",
            "create",
            "--account",
            &master,
            "--name",
            "ops",
            "--scope",
            "accounts:admin",
            "--scope",
            "keys:admin",
            "--scope",
            "audit:read",
        ],
    );
    let ops: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let (ok, osec) = (
        ops["id"].as_str().unwrap_or("").to_owned(),
        ops["secret"].as_str().unwrap_or("").to_owned(),
    );
    let (_, sub) = send(
        s.as_key(Method::POST, "/v1/accounts", &ok, &osec)
            .json(&serde_json::json!({"name": "Ward"})),
    )
    .await;
    let sub = sub["id"].as_str().unwrap_or_default().to_owned();
    let (_, auditor_key) = send(
        s.as_key(
            Method::POST,
            &format!("/v1/accounts/{master}/keys"),
            &ok,
            &osec,
        )
        .json(&serde_json::json!({"name": "auditor", "scopes": ["audit:read"]})),
    )
    .await;
    let (ak, asec) = (
        auditor_key["id"].as_str().unwrap_or("").to_owned(),
        auditor_key["secret"].as_str().unwrap_or("").to_owned(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The sub's creation is an event of the master; make one that belongs to the sub itself.
    let (_, sub_key) = send(
        s.as_key(
            Method::POST,
            &format!("/v1/accounts/{sub}/keys"),
            &ok,
            &osec,
        )
        .json(&serde_json::json!({"name": "ward app", "scopes": ["accounts:read"]})),
    )
    .await;
    let (sk, ssec) = (
        sub_key["id"].as_str().unwrap_or("").to_owned(),
        sub_key["secret"].as_str().unwrap_or("").to_owned(),
    );
    let (st, _) = send(s.as_key(Method::GET, &format!("/v1/accounts/{sub}"), &sk, &ssec)).await;
    assert_eq!(st, 200);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let of_sub = events(&s, &ak, &asec, &format!("&account_id={sub}")).await;
    let event = of_sub
        .first()
        .unwrap_or_else(|| panic!("the master's auditor does not see its subaccount's events"));
    let (st, proof) = send(s.as_key(
        Method::GET,
        &format!(
            "/v1/audit/events/{}/proof",
            event["id"].as_str().unwrap_or("")
        ),
        &ak,
        &asec,
    ))
    .await;
    assert_eq!(
        st, 200,
        "audit:read alone must prove a subaccount's event: {proof}"
    );
    // And still nothing of the other tenant.
    assert!(
        events(&s, &ak, &asec, "")
            .await
            .iter()
            .all(|e| e["actor"]["account_id"] == master || e["actor"]["account_id"] == sub)
    );
}
