//! Encryption at rest, from the outside: PHI sent through the API never appears in the raw
//! database (the SQLite file, every PostgreSQL table), ciphertexts are bound to their place,
//! erasure destroys the subject's key, and the master key rotates while the server runs.

use crate::both_backends;
use crate::common::{
    Backend, Server, create_key, create_subaccount, expect_problem, haven_cli, send,
};
use reqwest::Method;
use serde_json::{Value, json};

both_backends!(
    phi_sent_in_is_never_stored_in_the_clear,
    erasure_destroys_the_key_and_answers_erased,
    a_ciphertext_moved_to_another_row_is_refused,
    master_key_rotates_while_the_server_runs,
    data_keys_rotate_and_old_ones_still_decrypt,
);

fn marker(tag: &str) -> String {
    format!("PHIMARK{tag}{}", haven_platform_id())
}

fn haven_platform_id() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", n & 0xffff_ffff_ffff)
}

/// A phone number no other test uses: fixed prefix, random tail.
fn phone() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("+1415{:07}", n % 10_000_000)
}

/// Every byte the database holds: the SQLite file and its write-ahead log, or the text form of
/// every row of every PostgreSQL table (bytea shown as hex).
pub async fn raw_database(s: &Server) -> Vec<u8> {
    use sqlx::Connection;
    match s.backend {
        Backend::Sqlite => {
            let path = s.database_url.trim_start_matches("sqlite://").to_owned();
            let mut out = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            for suffix in ["-wal", "-journal"] {
                if let Ok(extra) = std::fs::read(format!("{path}{suffix}")) {
                    out.extend_from_slice(&extra);
                }
            }
            out
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&s.database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let tables: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            assert!(tables.len() >= 10, "{tables:?}");
            let mut out = Vec::new();
            for (t,) in tables {
                let q = format!("SELECT CAST(x AS TEXT) FROM \"{t}\" x");
                let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{t}: {e}"));
                for (r,) in rows {
                    out.extend_from_slice(r.as_bytes());
                    out.push(b'\n');
                }
            }
            out
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `needle` appears in the dump as text or as hex (PostgreSQL's bytea form).
fn leaks(dump: &[u8], needle: &str) -> bool {
    contains(dump, needle.as_bytes()) || contains(dump, hex(needle.as_bytes()).as_bytes())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn create_contact(s: &Server, body: Value) -> Value {
    let (st, c) = send(s.admin(Method::POST, "/v1/contacts").json(&body)).await;
    assert_eq!(st, 201, "{c}");
    c
}

async fn phi_sent_in_is_never_stored_in_the_clear(backend: Backend) {
    let s = Server::start(backend).await;
    let (name, reference, email_local, note) = (
        marker("NAME"),
        marker("REF"),
        marker("mail"),
        marker("NOTE"),
    );
    let email = format!("{email_local}@example.org");
    let tel = phone();
    let c = create_contact(
        &s,
        json!({ "reference": reference, "name": name, "phone_number": tel, "email": email,
                "attributes": { "diagnosis": note } }),
    )
    .await;
    let id = c["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(c["status"], "active");
    assert_eq!(c["name"], name.as_str());
    assert_eq!(c["phone_number"], tel.as_str());
    // Read back, found by each blind index, changed.
    let (st, got) = send(s.admin(Method::GET, &format!("/v1/contacts/{id}"))).await;
    assert_eq!(
        (st.as_u16(), &got["attributes"]["diagnosis"]),
        (200, &json!(note))
    );
    for (field, value) in [
        ("phone_number", tel.clone()),
        ("email", format!("{email_local}@EXAMPLE.org")),
        ("reference", reference.clone()),
    ] {
        let (st, found) = send(
            s.admin(Method::POST, "/v1/contacts/search")
                .json(&json!({ field: value })),
        )
        .await;
        assert_eq!(st, 200, "{found}");
        let ids: Vec<_> = found["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(id)], "search by {field}");
    }
    let (st, none) = send(
        s.admin(Method::POST, "/v1/contacts/search")
            .json(&json!({ "phone_number": "+14155550199" })),
    )
    .await;
    assert_eq!(
        (st.as_u16(), none["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let new_name = marker("RENAMED");
    let (st, upd) = send(
        s.admin(Method::PATCH, &format!("/v1/contacts/{id}"))
            .json(&json!({ "name": new_name, "email": null })),
    )
    .await;
    assert_eq!(st, 200, "{upd}");
    assert_eq!(
        (&upd["name"], &upd["email"]),
        (&json!(new_name), &Value::Null)
    );
    // A duplicate reference is a conflict, not a second subject.
    expect_problem(
        s.admin(Method::POST, "/v1/contacts")
            .json(&json!({ "reference": reference })),
        409,
        "conflict",
    )
    .await;
    // Idempotent creation: the stored response (PHI, or a new key's secret) is sealed too.
    let idem_name = marker("IDEM");
    let body = json!({ "reference": marker("IDEMREF"), "name": idem_name });
    let (st1, first) = send(
        s.admin(Method::POST, "/v1/contacts")
            .header("Idempotency-Key", "contact-1")
            .json(&body),
    )
    .await;
    let (st2, replay) = send(
        s.admin(Method::POST, "/v1/contacts")
            .header("Idempotency-Key", "contact-1")
            .json(&body),
    )
    .await;
    assert_eq!((st1.as_u16(), st2.as_u16()), (201, 201));
    assert_eq!(first, replay);
    let acc = s.admin.account_id.clone();
    let (st, key) = send(
        s.admin(Method::POST, &format!("/v1/accounts/{acc}/keys"))
            .header("Idempotency-Key", "key-1")
            .json(&json!({ "name": "idempotent", "scopes": ["contacts:read"] })),
    )
    .await;
    assert_eq!(st, 201);
    let secret = key["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.len() > 20);

    let dump = raw_database(&s).await;
    assert!(dump.len() > 10_000, "the dump is suspiciously small");
    for needle in [
        &name,
        &reference,
        &email_local,
        &email,
        &note,
        &tel,
        &tel[1..],
        &new_name,
        &idem_name,
        &secret,
    ] {
        assert!(
            !leaks(&dump, needle),
            "{needle} is stored in the clear ({backend:?})"
        );
    }
    // The check can see: an id the API returned is in the dump.
    assert!(leaks(&dump, &id));
}

async fn subject_key_bytes(s: &Server, id: &str) -> Option<Vec<u8>> {
    use sqlx::Connection;
    let q = format!("SELECT wrapped FROM subject_keys WHERE subject_id = '{id}'");
    match s.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&s.database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query_as::<_, (Vec<u8>,)>(sqlx::AssertSqlSafe(q))
                .fetch_optional(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|r| r.0)
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&s.database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query_as::<_, (Vec<u8>,)>(sqlx::AssertSqlSafe(q))
                .fetch_optional(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|r| r.0)
        }
    }
}

async fn erasure_destroys_the_key_and_answers_erased(backend: Backend) {
    let s = Server::start(backend).await;
    let tel = phone();
    let c = create_contact(
        &s,
        json!({ "reference": "MRN-1", "name": "Grace Hopper", "phone_number": tel }),
    )
    .await;
    let id = c["id"].as_str().unwrap_or_default().to_owned();
    let key = subject_key_bytes(&s, &id)
        .await
        .unwrap_or_else(|| panic!("no subject key"));
    // Erasure needs contacts:admin.
    let acc = s.admin.account_id.clone();
    let (kid, secret) = create_key(&s, &acc, &["contacts:write"]).await;
    expect_problem(
        s.as_key(
            Method::POST,
            &format!("/v1/contacts/{id}/erase"),
            &kid,
            &secret,
        ),
        403,
        "insufficient-scope",
    )
    .await;
    let (st, erased) = send(s.admin(Method::POST, &format!("/v1/contacts/{id}/erase"))).await;
    assert_eq!(st, 200, "{erased}");
    assert_eq!(erased["status"], "erased");
    assert!(erased["erased_at"].is_string());
    for f in ["reference", "name", "phone_number", "email", "attributes"] {
        assert_eq!(erased[f], Value::Null, "{f}");
    }
    // Reads say erased (not corrupt, not missing); changes are refused; repeating is harmless.
    let (st, got) = send(s.admin(Method::GET, &format!("/v1/contacts/{id}"))).await;
    assert_eq!(
        (st.as_u16(), &got["status"], &got["name"]),
        (200, &json!("erased"), &Value::Null)
    );
    expect_problem(
        s.admin(Method::PATCH, &format!("/v1/contacts/{id}"))
            .json(&json!({ "name": "x" })),
        409,
        "erased",
    )
    .await;
    let (st, again) = send(s.admin(Method::POST, &format!("/v1/contacts/{id}/erase"))).await;
    assert_eq!((st.as_u16(), &again["status"]), (200, &json!("erased")));
    let (_, found) = send(
        s.admin(Method::POST, "/v1/contacts/search")
            .json(&json!({ "phone_number": tel })),
    )
    .await;
    assert_eq!(found["items"], json!([]));
    // The reference is free again: a new subject with a new key.
    create_contact(&s, json!({ "reference": "MRN-1" })).await;
    // The key is gone from the database, and (SQLite, secure_delete) from the file's bytes.
    assert!(subject_key_bytes(&s, &id).await.is_none());
    if backend == Backend::Sqlite {
        let dump = raw_database(&s).await;
        assert!(
            !contains(&dump, &key),
            "the destroyed key's bytes remain in the SQLite file"
        );
    }
    // Audited, with ids only.
    let (_, events) = send(s.admin(
        Method::GET,
        &format!("/v1/audit/events?action=contact.erased&resource_id={id}"),
    ))
    .await;
    assert_eq!(
        events["items"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
}

async fn a_ciphertext_moved_to_another_row_is_refused(backend: Backend) {
    let mut s = Server::start(backend).await;
    let a = create_contact(&s, json!({ "reference": "A", "name": "Alice" })).await;
    let b = create_contact(&s, json!({ "reference": "B", "name": "Bob" })).await;
    let (a, b) = (
        a["id"].as_str().unwrap_or_default(),
        b["id"].as_str().unwrap_or_default(),
    );
    // Someone with database access copies Alice's encrypted name onto Bob's row.
    s.stop();
    crate::audit::exec(
        backend,
        &s.database_url,
        &format!("UPDATE contacts SET name_ct = (SELECT name_ct FROM contacts WHERE id = '{a}') WHERE id = '{b}'"),
    )
    .await;
    s.restart().await;
    expect_problem(
        s.admin(Method::GET, &format!("/v1/contacts/{b}")),
        500,
        "stored-data-unreadable",
    )
    .await;
    let (st, alice) = send(s.admin(Method::GET, &format!("/v1/contacts/{a}"))).await;
    assert_eq!((st.as_u16(), &alice["name"]), (200, &json!("Alice")));
    // Another account cannot see either (404, not 403).
    let sub = create_subaccount(&s, "Radiology").await;
    let (kid, secret) = create_key(&s, &sub, &["contacts:admin"]).await;
    for (m, path) in [
        (Method::GET, format!("/v1/contacts/{a}")),
        (Method::PATCH, format!("/v1/contacts/{a}")),
        (Method::POST, format!("/v1/contacts/{a}/erase")),
    ] {
        let rb = s.as_key(m, &path, &kid, &secret);
        let rb = if path.ends_with("erase") {
            rb
        } else {
            rb.json(&json!({}))
        };
        expect_problem(rb, 404, "not-found").await;
    }
    let (_, list) = send(s.as_key(Method::GET, "/v1/contacts", &kid, &secret)).await;
    assert_eq!(list["items"], json!([]));
}

fn cli_ok(s: &Server, args: &[&str]) -> String {
    let out = haven_cli(&s.dir, &s.database_url, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "haven {args:?}: {text}");
    text
}

fn master_status(s: &Server) -> Vec<Value> {
    cli_ok(s, &["keys", "master-status"])
        .split("\n}")
        .filter_map(|chunk| serde_json::from_str(&format!("{chunk}}}")).ok())
        .collect()
}

async fn master_key_rotates_while_the_server_runs(backend: Backend) {
    let mut s = Server::start(backend).await;
    let before = create_contact(&s, json!({ "reference": "R1", "name": "Before Rotation" })).await;
    let old = master_status(&s);
    assert_eq!(old.len(), 1, "{old:?}");
    let old_id = old[0]["id"].as_str().unwrap_or_default().to_owned();
    assert!(old[0]["wraps"].as_u64().unwrap_or(0) >= 4, "{old:?}");

    let out = cli_ok(&s, &["keys", "rotate-master"]);
    assert!(out.contains("Re-wrapped"), "{out}");
    // The running server follows: a new tenant's keys are wrapped under the new master key.
    let sub = create_subaccount(&s, "Oncology").await;
    let (kid, secret) = create_key(&s, &sub, &["contacts:admin"]).await;
    let (st, during) = send(
        s.as_key(Method::POST, "/v1/contacts", &kid, &secret)
            .json(&json!({ "reference": "R2", "name": "After Rotation" })),
    )
    .await;
    assert_eq!(st, 201, "{during}");
    let status = master_status(&s);
    let new_id = status
        .iter()
        .find(|k| k["role"] == "active")
        .and_then(|k| k["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert_ne!(new_id, old_id);
    for k in &status {
        if k["id"] != json!(new_id) {
            assert_eq!(k["wraps"], 0, "still wrapped under an old key: {status:?}");
        }
    }
    // Old key out of the ring; everything still opens, before and after a restart.
    cli_ok(&s, &["keys", "retire-master", &old_id]);
    let ring = std::fs::read_to_string(s.dir.join("master.key")).unwrap_or_default();
    assert!(!ring.contains(&old_id) && ring.contains(&new_id), "{ring}");
    s.restart().await;
    let id = before["id"].as_str().unwrap_or_default();
    let (st, got) = send(s.admin(Method::GET, &format!("/v1/contacts/{id}"))).await;
    assert_eq!(
        (st.as_u16(), &got["name"]),
        (200, &json!("Before Rotation"))
    );
    let id = during["id"].as_str().unwrap_or_default();
    let (st, got) = send(s.as_key(Method::GET, &format!("/v1/contacts/{id}"), &kid, &secret)).await;
    assert_eq!((st.as_u16(), &got["name"]), (200, &json!("After Rotation")));
    // Authentication (the pepper) and token signing (the signing keys) survived the re-wrap.
    let (st, _) = send(
        s.client
            .post(s.url("/oauth2/token"))
            .basic_auth(&s.admin.key_id, Some(&s.admin.secret))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(st, 200);
    // The active key cannot be retired.
    let out = haven_cli(&s.dir, &s.database_url, &["keys", "retire-master", &new_id]);
    assert!(!out.status.success());
}

async fn data_keys_rotate_and_old_ones_still_decrypt(backend: Backend) {
    let mut s = Server::start(backend).await;
    let first = create_contact(&s, json!({ "reference": "D1", "name": "First" })).await;
    let acc = s.admin.account_id.clone();
    let out = cli_ok(&s, &["keys", "rotate-data", "--account", &acc]);
    assert!(out.contains("1 data key(s) replaced"), "{out}");
    s.restart().await;
    let second = create_contact(&s, json!({ "reference": "D2", "name": "Second" })).await;
    let ids = [
        first["id"].as_str().unwrap_or_default(),
        second["id"].as_str().unwrap_or_default(),
    ];
    let mut data_keys = Vec::new();
    for id in ids {
        use sqlx::Connection;
        let q = format!("SELECT data_key_id FROM subject_keys WHERE subject_id = '{id}'");
        let (dk,): (String,) = match backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&s.database_url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::query_as(sqlx::AssertSqlSafe(q))
                    .fetch_one(&mut c)
                    .await
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&s.database_url)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                sqlx::query_as(sqlx::AssertSqlSafe(q))
                    .fetch_one(&mut c)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{e}"));
        data_keys.push(dk);
        let (st, got) = send(s.admin(Method::GET, &format!("/v1/contacts/{id}"))).await;
        assert_eq!(st, 200, "{got}");
    }
    assert_ne!(
        data_keys[0], data_keys[1],
        "the new subject must use the new data key"
    );
    // Nothing is due under the default 90-day schedule.
    let out = cli_ok(&s, &["keys", "rotate-data"]);
    assert!(out.contains("0 data key(s) replaced"), "{out}");
}
