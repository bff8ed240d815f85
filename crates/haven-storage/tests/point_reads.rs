//! The point reads every send makes (the recipient's consent records, the contact with its
//! phone number or address), asked by many sends at once. On PostgreSQL they are gathered into
//! one statement per kind; each caller must still get exactly its own recipient's rows, in the
//! order a read of its own gives them, and see every write committed before it asked. Runs on
//! SQLite, and on PostgreSQL when `HAVEN_TEST_DATABASE_URL` is set (the README's test command
//! always sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{account, postgres, sqlite};
use haven_contacts::{ContactRow, ContactStore, IndexFilter};
use haven_messaging::MessageStore;
use haven_messaging::store::ConsentRow;
use haven_platform::page::PageRequest;
use std::sync::Arc;

fn consent(account_id: &str, bidx: &[u8], purpose: &str, status: &str) -> ConsentRow {
    ConsentRow {
        account_id: account_id.to_owned(),
        channel: "sms".into(),
        address_bidx: bidx.to_vec(),
        purpose: purpose.into(),
        status: status.into(),
        method: "api".into(),
        source: Some(format!("{purpose}-{status}")),
        updated_at_ms: haven_platform::clock::now_ms(),
    }
}

fn contact(id: &str, account_id: &str, phone: Option<&[u8]>, email: Option<&[u8]>) -> ContactRow {
    let now = haven_platform::clock::now_ms();
    ContactRow {
        id: id.to_owned(),
        account_id: account_id.to_owned(),
        reference_bidx: Some(id.as_bytes().to_vec()),
        phone_bidx: phone.map(<[u8]>::to_vec),
        email_bidx: email.map(<[u8]>::to_vec),
        reference_ct: Some(vec![1]),
        name_ct: None,
        phone_ct: phone.map(|_| vec![2]),
        email_ct: email.map(|_| vec![3]),
        attributes_ct: None,
        created_at_ms: now,
        updated_at_ms: now,
        erased_at_ms: None,
    }
}

/// What a send asks: (purpose, status) of each consent record, in the order given.
async fn consents(m: &Arc<dyn MessageStore>, account_id: &str, bidx: &[u8]) -> Vec<String> {
    m.consents_for(account_id, "sms", bidx)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            assert_eq!(
                (c.account_id.as_str(), c.address_bidx.as_slice()),
                (account_id, bidx)
            );
            format!("{}:{}", c.purpose, c.status)
        })
        .collect()
}

/// What a send asks: the first contacts with this phone index (or email index), by id.
async fn contacts(
    c: &Arc<dyn ContactStore>,
    account_id: &str,
    phone: Option<&[u8]>,
    email: Option<&[u8]>,
) -> Vec<String> {
    let filter = IndexFilter {
        reference: None,
        phone: phone.map(<[u8]>::to_vec),
        email: email.map(<[u8]>::to_vec),
    };
    let page = PageRequest {
        size: 1,
        after: None,
    };
    c.list_contacts(account_id, &filter, &page)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.account_id, account_id);
            r.id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_each_read_their_own_recipient() {
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    for db in dbs {
        let m = db.store.messages();
        let c = db.store.contacts();
        let (a, b) = (account(&db.store).await, account(&db.store).await);
        m.upsert_consents(
            &[
                consent(&a, b"opted-out", "transactional", "opted_out"),
                consent(&a, b"both", "transactional", "opted_in"),
                consent(&a, b"both", "marketing", "opted_in"),
                // The same index in another account is another recipient.
                consent(&b, b"opted-out", "marketing", "opted_in"),
            ],
            &[],
        )
        .await
        .unwrap();
        // Three contacts share a phone (a family): a send reads the first two by id.
        for (id, acc, phone, email) in [
            ("con_0001", &a, Some(&b"family"[..]), None),
            ("con_0003", &a, Some(&b"family"[..]), Some(&b"mum"[..])),
            ("con_0002", &a, Some(&b"family"[..]), None),
            ("con_0004", &b, Some(&b"family"[..]), None),
            ("con_0005", &b, None, Some(&b"mum"[..])),
        ] {
            c.insert_contact(&contact(id, acc, phone, email))
                .await
                .unwrap();
        }

        // Many sends at once, to a handful of recipients (some asked by many, some absent).
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..240 {
            let (m, c, a, b) = (Arc::clone(&m), Arc::clone(&c), a.clone(), b.clone());
            asks.spawn(async move {
                match i % 8 {
                    0 => assert_eq!(
                        consents(&m, &a, b"opted-out").await,
                        ["transactional:opted_out"]
                    ),
                    1 => assert_eq!(
                        consents(&m, &a, b"both").await,
                        ["marketing:opted_in", "transactional:opted_in"]
                    ),
                    2 => assert_eq!(consents(&m, &b, b"opted-out").await, ["marketing:opted_in"]),
                    3 => assert!(consents(&m, &b, b"both").await.is_empty()),
                    4 => assert_eq!(
                        contacts(&c, &a, Some(b"family"), None).await,
                        ["con_0001", "con_0002"]
                    ),
                    5 => assert_eq!(contacts(&c, &b, Some(b"family"), None).await, ["con_0004"]),
                    6 => assert_eq!(contacts(&c, &b, None, Some(b"mum")).await, ["con_0005"]),
                    _ => assert!(contacts(&c, &a, Some(b"nobody"), None).await.is_empty()),
                }
            });
        }
        while let Some(done) = asks.join_next().await {
            done.unwrap();
        }

        // A read asked after a write commits sees it, however busy the reads are.
        for round in 0..20 {
            let status = if round % 2 == 0 {
                "opted_out"
            } else {
                "opted_in"
            };
            m.upsert_consents(&[consent(&b, b"both", "transactional", status)], &[])
                .await
                .unwrap();
            let mut asks = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let (m, b) = (Arc::clone(&m), b.clone());
                asks.spawn(async move { consents(&m, &b, b"both").await });
            }
            while let Some(seen) = asks.join_next().await {
                assert_eq!(seen.unwrap(), [format!("transactional:{status}")]);
            }
        }
        (db.cleanup)();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_each_open_their_own_contacts_key_and_an_erased_one_is_gone() {
    use haven_vault::{AccountKeyRecord, KeyPurpose, SubjectKeyRecord};
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    for db in dbs {
        let v = db.store.vault();
        let a = account(&db.store).await;
        let now = haven_platform::clock::now_ms();
        let dk = format!("dk_{a}");
        assert!(
            v.insert_account_key(
                &AccountKeyRecord {
                    id: dk.clone(),
                    account_id: a.clone(),
                    purpose: KeyPurpose::Data,
                    wrapped: vec![9],
                    created_at_ms: now,
                    retired_at_ms: None,
                },
                None,
            )
            .await
            .unwrap()
        );
        let subjects: Vec<String> = (0..6).map(|i| format!("con_{i:04}")).collect();
        for (i, s) in subjects.iter().enumerate() {
            v.insert_subject_key(&SubjectKeyRecord {
                subject_id: s.clone(),
                account_id: a.clone(),
                key_id: format!("sk_{i}"),
                data_key_id: dk.clone(),
                wrapped: vec![u8::try_from(i).unwrap(); 8],
                created_at_ms: now,
            })
            .await
            .unwrap();
        }
        let check = |erased: Option<usize>| {
            let (v, subjects) = (Arc::clone(&v), subjects.clone());
            async move {
                let mut asks = tokio::task::JoinSet::new();
                for n in 0..120 {
                    let v = Arc::clone(&v);
                    // Subjects 0..6 and one that never existed.
                    let i = n % 7;
                    let id = subjects
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| "con_none".into());
                    asks.spawn(async move { (i, v.get_subject_key(&id).await.unwrap()) });
                }
                while let Some(done) = asks.join_next().await {
                    let (i, got) = done.unwrap();
                    if i >= 6 || Some(i) == erased {
                        assert!(got.is_none(), "subject {i}: {got:?}");
                    } else {
                        let got = got.unwrap_or_else(|| panic!("subject {i} has a key"));
                        assert_eq!(
                            (got.subject_id, got.key_id, got.wrapped),
                            (
                                subjects[i].clone(),
                                format!("sk_{i}"),
                                vec![u8::try_from(i).unwrap(); 8]
                            )
                        );
                    }
                }
            }
        };
        check(None).await;
        // Erasure destroys the key: every read asked after it finds none.
        assert!(v.delete_subject_key(&subjects[3]).await.unwrap());
        check(Some(3)).await;
        (db.cleanup)();
    }
}
