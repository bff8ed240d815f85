//! Settling sends against the real stores: a receipt that reaches the same settle as its
//! submit is folded into it (one write of the message), and every other case still goes the
//! usual way. Runs on SQLite, and on PostgreSQL when `HAVEN_TEST_DATABASE_URL` is set (the
//! README's test command always sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{account, postgres, sqlite, unique};
use haven_messaging::MessageStore;
use haven_messaging::pipeline::decide;
use haven_messaging::store::{MessageRow, Outcome, ReceiptRow, Settled};
use haven_platform::events::OutboxEvent;
use haven_platform::usage::UsageRecord;
use std::sync::Arc;

const ROUTE: &str = "primary";

/// Rows the tests read back, through a connection of their own.
enum Reader {
    Sqlite(sqlx::SqliteConnection),
    Pg(sqlx::PgConnection),
}

impl Reader {
    async fn open(url: &str) -> Self {
        use sqlx::Connection;
        if url.starts_with("postgres") {
            Reader::Pg(sqlx::PgConnection::connect(url).await.unwrap())
        } else {
            Reader::Sqlite(sqlx::SqliteConnection::connect(url).await.unwrap())
        }
    }

    /// `(part_index, state, error_code)` of each part of a message.
    async fn parts(&mut self, message_id: &str) -> Vec<(i64, String, Option<String>)> {
        let q = "SELECT part_index, state, error_code FROM message_parts WHERE message_id = $1 \
                 ORDER BY part_index";
        match self {
            Reader::Sqlite(c) => sqlx::query_as(q).bind(message_id).fetch_all(c).await,
            Reader::Pg(c) => sqlx::query_as(q).bind(message_id).fetch_all(c).await,
        }
        .unwrap()
    }

    /// The types of the events about a message, sorted (two events of one millisecond have
    /// ids in no particular order).
    async fn events(&mut self, message_id: &str) -> Vec<String> {
        let q = "SELECT event_type FROM webhook_events WHERE payload LIKE $1 ORDER BY id";
        let like = format!("%\"{message_id}\"%");
        let rows: Vec<(String,)> = match self {
            Reader::Sqlite(c) => sqlx::query_as(q).bind(like).fetch_all(c).await,
            Reader::Pg(c) => sqlx::query_as(q).bind(like).fetch_all(c).await,
        }
        .unwrap();
        let mut kinds: Vec<String> = rows.into_iter().map(|r| r.0).collect();
        kinds.sort();
        kinds
    }

    /// When the message may next be claimed from the sending queue (`None`: out of it).
    async fn due(&mut self, message_id: &str) -> Option<i64> {
        let q = "SELECT due_at_ms FROM messages WHERE id = $1";
        let (due,): (Option<i64>,) = match self {
            Reader::Sqlite(c) => sqlx::query_as(q).bind(message_id).fetch_one(c).await,
            Reader::Pg(c) => sqlx::query_as(q).bind(message_id).fetch_one(c).await,
        }
        .unwrap();
        due
    }

    async fn usage_rows(&mut self, message_id: &str) -> i64 {
        let q = "SELECT COUNT(*) FROM usage_records WHERE resource_id = $1";
        let (n,): (i64,) = match self {
            Reader::Sqlite(c) => sqlx::query_as(q).bind(message_id).fetch_one(c).await,
            Reader::Pg(c) => sqlx::query_as(q).bind(message_id).fetch_one(c).await,
        }
        .unwrap();
        n
    }
}

/// A queued outbound SMS, leased to this node.
async fn queued(messages: &Arc<dyn MessageStore>, account_id: &str) -> String {
    let id = haven_platform::id::new_id("msg");
    let now = haven_platform::clock::now_ms();
    let row = MessageRow {
        id: id.clone(),
        account_id: account_id.to_owned(),
        direction: "outbound".into(),
        channel: "sms".into(),
        status: "accepted".into(),
        sender_id: None,
        contact_id: None,
        to_ct: vec![1],
        from_ct: vec![2],
        content_ct: vec![3],
        client_ref_ct: None,
        client_ref_bidx: None,
        peer_bidx: None,
        workflow_id: None,
        want_receipt: true,
        parts: 1,
        route: None,
        error_code: None,
        error_reason: None,
        attempts: 0,
        next_attempt_at_ms: now,
        lease_until_ms: now + 30_000,
        expires_at_ms: now + 3_600_000,
        created_by: None,
        created_at_ms: now,
        updated_at_ms: now,
        submitted_at_ms: None,
        final_at_ms: None,
    };
    messages
        .insert_messages(vec![(row, None)], Box::new(Vec::new))
        .await
        .unwrap();
    id
}

fn event(kind: &'static str, account_id: &str, message_id: &str) -> OutboxEvent {
    OutboxEvent::new(
        kind,
        account_id,
        serde_json::json!({"message_id": message_id, "channel": "sms", "status": "submitted"}),
    )
}

/// What the sending loop reports when the carrier took the message as `provider_ids`.
fn submitted(account_id: &str, message_id: &str, provider_ids: &[&str]) -> Outcome {
    let at_ms = haven_platform::clock::now_ms();
    Outcome::Submitted {
        message_id: message_id.to_owned(),
        route: ROUTE.to_owned(),
        provider_ids: provider_ids.iter().map(|p| (*p).to_owned()).collect(),
        at_ms,
        event: event("message.submitted", account_id, message_id),
        content_ct: None,
        usage: Box::new(UsageRecord {
            id: haven_platform::id::new_id("usg"),
            account_id: account_id.to_owned(),
            product: "messages".into(),
            channel: "sms".into(),
            resource_id: message_id.to_owned(),
            reference_id: None,
            country: Some("US".into()),
            units: i64::try_from(provider_ids.len()).unwrap(),
            unit: "sms_segment".into(),
            unit_price_micros: None,
            currency: None,
            created_at_ms: at_ms,
        }),
    }
}

fn receipt(provider_id: &str, state: &str, error_code: Option<&str>) -> ReceiptRow {
    let now = haven_platform::clock::now_ms();
    ReceiptRow {
        route: ROUTE.to_owned(),
        provider_id: provider_id.to_owned(),
        state: state.to_owned(),
        error_code: error_code.map(str::to_owned),
        at_ms: now,
        received_at_ms: now,
    }
}

/// One queued message on a fresh store, and what a test needs around it.
struct Case {
    messages: Arc<dyn MessageStore>,
    read: Reader,
    acc: String,
    id: String,
}

impl Case {
    async fn settle(&self, outcomes: Vec<Outcome>, receipts: Vec<ReceiptRow>) -> Settled {
        self.messages
            .settle(outcomes, receipts, &decide)
            .await
            .unwrap()
    }

    async fn message(&self) -> MessageRow {
        self.messages
            .get_message(&self.id)
            .await
            .unwrap()
            .expect("the message")
    }

    async fn parts(&mut self) -> Vec<(i64, String, Option<String>)> {
        self.read.parts(&self.id).await
    }

    async fn events(&mut self) -> Vec<String> {
        self.read.events(&self.id).await
    }

    async fn usage_rows(&mut self) -> i64 {
        self.read.usage_rows(&self.id).await
    }

    /// What the sending loop reports when the carrier took this message as `provider_ids`.
    fn submitted(&self, provider_ids: &[&str]) -> Outcome {
        submitted(&self.acc, &self.id, provider_ids)
    }
}

/// Runs `test` on SQLite, then on PostgreSQL when there is one.
async fn each_store<F, Fut>(test: F)
where
    F: Fn(Case) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    for db in dbs {
        let messages = db.store.messages();
        let acc = account(&db.store).await;
        let id = queued(&messages, &acc).await;
        let read = Reader::open(&db.url).await;
        test(Case {
            messages,
            read,
            acc,
            id,
        })
        .await;
        (db.cleanup)();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_in_the_settle_of_its_submit_is_folded_into_it() {
    each_store(|mut c| async move {
        let pid = unique("p");
        let settled = c
            .settle(
                vec![c.submitted(&[&pid])],
                vec![receipt(&pid, "delivered", None)],
            )
            .await;
        assert_eq!(
            (settled.applied, settled.waiting, settled.events),
            (1, 0, 1),
            "the receipt applied, one status change"
        );
        let m = c.message().await;
        assert_eq!(m.status, "delivered");
        assert_eq!(m.route.as_deref(), Some(ROUTE));
        assert!(m.submitted_at_ms.is_some() && m.final_at_ms.is_some());
        assert_eq!(c.parts().await, vec![(0, "delivered".into(), None)]);
        assert_eq!(c.events().await, ["message.delivered", "message.submitted"]);
        assert_eq!(c.usage_rows().await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_receipt_folded_in_fails_the_message_with_its_code() {
    each_store(|mut c| async move {
        let pid = unique("p");
        // An intermediate state first, then the final one, then a late intermediate one that
        // must not undo it.
        c.settle(
            vec![c.submitted(&[&pid])],
            vec![
                receipt(&pid, "enroute", None),
                receipt(&pid, "failed", Some("088")),
                receipt(&pid, "enroute", None),
            ],
        )
        .await;
        let m = c.message().await;
        assert_eq!(m.status, "failed");
        assert_eq!(m.error_code.as_deref(), Some("088"));
        assert_eq!(
            c.parts().await,
            vec![(0, "failed".into(), Some("088".into()))]
        );
        assert_eq!(c.events().await, ["message.failed", "message.submitted"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_waits_for_the_receipt_of_every_part() {
    each_store(|mut c| async move {
        let (a, b) = (unique("a"), unique("b"));
        let settled = c
            .settle(
                vec![c.submitted(&[&a, &b])],
                vec![receipt(&a, "delivered", None)],
            )
            .await;
        assert_eq!((settled.applied, settled.events), (1, 0));
        assert_eq!(c.message().await.status, "submitted");
        assert_eq!(
            c.parts().await,
            vec![(0, "delivered".into(), None), (1, "submitted".into(), None)]
        );
        // The second part's receipt in a later settle: the usual way.
        let settled = c.settle(vec![], vec![receipt(&b, "delivered", None)]).await;
        assert_eq!((settled.applied, settled.events), (1, 1));
        assert_eq!(c.message().await.status, "delivered");
        assert_eq!(c.events().await, ["message.delivered", "message.submitted"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_send_of_a_settled_message_is_not_folded_and_writes_nothing_twice() {
    each_store(|mut c| async move {
        let pid = unique("p");
        c.settle(vec![c.submitted(&[&pid])], vec![]).await;
        // An overlapping second send reports the same message taken again (the carrier gave
        // it another id), with that id's receipt in the same batch; and the first send's
        // receipt comes too. Only the first send's part exists.
        let again = unique("again");
        let settled = c
            .settle(
                vec![c.submitted(&[&again])],
                vec![
                    receipt(&again, "delivered", None),
                    receipt(&pid, "delivered", None),
                ],
            )
            .await;
        assert_eq!(
            (settled.applied, settled.waiting, settled.events),
            (1, 1, 1),
            "the first part's receipt applied; the unknown id's stored to be tried again"
        );
        assert_eq!(c.message().await.status, "delivered");
        assert_eq!(c.parts().await, vec![(0, "delivered".into(), None)]);
        assert_eq!(c.events().await, ["message.delivered", "message.submitted"]);
        assert_eq!(c.usage_rows().await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leased_on_acceptance_is_due_when_its_lease_runs_out() {
    each_store(|mut c| async move {
        let m = c.message().await;
        // `queued` leased it for 30 s from its due time.
        let lease_until = m.next_attempt_at_ms + 30_000;
        let claim = |now: i64| {
            let messages = Arc::clone(&c.messages);
            async move {
                let rows = messages.claim_due(now, now + 30_000, 10).await.unwrap();
                rows.into_iter().map(|r| r.id).collect::<Vec<_>>()
            }
        };
        // Handed to the sending loop with its lease: out of the claim's way until it runs out.
        assert_eq!(c.read.due(&c.id).await, Some(lease_until));
        assert!(claim(m.next_attempt_at_ms).await.is_empty());
        // The node holding it is gone: once the lease has run out another claims it, and the
        // new lease puts it out of the way again.
        let later = lease_until + 1;
        assert_eq!(claim(later).await, vec![c.id.clone()]);
        assert_eq!(c.read.due(&c.id).await, Some(later + 30_000));
        assert!(claim(later + 1).await.is_empty());
        // Sent: out of the queue.
        let pid = unique("p");
        c.settle(vec![c.submitted(&[&pid])], vec![]).await;
        assert_eq!(c.read.due(&c.id).await, None);
    })
    .await;
}

/// On PostgreSQL the rows every message writes carry no foreign key (migration 0016): each
/// checked row would be a trigger's query and a lock on its parent, every group commit and
/// settle locking the same account row. The references hold by how the rows are written (see
/// the migration); this keeps a later migration from bringing the checks back unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rows_of_every_message_lock_no_parent_on_postgres() {
    let Some(db) = postgres().await else {
        return;
    };
    let mut read = match Reader::open(&db.url).await {
        Reader::Pg(c) => c,
        Reader::Sqlite(_) => unreachable!("a PostgreSQL URL"),
    };
    let fks: Vec<(String,)> = sqlx::query_as(
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' \
         AND conrelid::regclass::text IN ('messages', 'message_parts', 'usage_records')",
    )
    .fetch_all(&mut read)
    .await
    .unwrap();
    assert!(fks.is_empty(), "foreign keys on the hot tables: {fks:?}");
    // The other tables keep theirs.
    let (kept,): (i64,) = sqlx::query_as("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
        .fetch_one(&mut read)
        .await
        .unwrap();
    assert!(kept > 10, "{kept} foreign keys left");
    drop(read);
    (db.cleanup)();
}

/// An event is stored as its data alone and read back as the whole body it was sent with; a
/// row stored whole by an earlier version reads back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_read_back_as_the_body_they_were_written_with() {
    let mut dbs = vec![sqlite().await];
    dbs.extend(postgres().await);
    for db in dbs {
        let messages = db.store.messages();
        let webhooks = db.store.webhooks();
        let acc = account(&db.store).await;
        let id = queued(&messages, &acc).await;
        let outcome = submitted(&acc, &id, &[&unique("p")]);
        let Outcome::Submitted { event, .. } = &outcome else {
            unreachable!()
        };
        let event = event.clone();
        messages
            .settle(vec![outcome], vec![], &decide)
            .await
            .unwrap();
        let row = webhooks
            .get_event(&event.id)
            .await
            .unwrap()
            .expect("the event");
        assert_eq!(row.payload, event.payload());
        assert_eq!(row.event_type, "message.submitted");

        // What only the data costs: the stored text is the data, not the envelope.
        let q = "SELECT payload, envelope FROM webhook_events WHERE id = $1";
        let stored: (String, i64) = match &mut Reader::open(&db.url).await {
            Reader::Sqlite(c) => sqlx::query_as(q).bind(&event.id).fetch_one(c).await,
            Reader::Pg(c) => sqlx::query_as(q).bind(&event.id).fetch_one(c).await,
        }
        .unwrap();
        assert_eq!(stored, (event.data.clone(), 0));

        // A row of an earlier version: the whole body, and no `envelope` given.
        let old = self::event("message.delivered", &acc, &id);
        let insert = "INSERT INTO webhook_events (id, account_id, event_type, payload, \
                      created_at_ms, fanned_out) VALUES ($1, $2, $3, $4, $5, 1)";
        let body = format!("{{\"legacy\":true,\"data\":{}}}", old.data);
        macro_rules! insert_old {
            ($c:expr) => {
                sqlx::query(insert)
                    .bind(&old.id)
                    .bind(&acc)
                    .bind(old.event_type)
                    .bind(&body)
                    .bind(old.created_at_ms)
                    .execute($c)
                    .await
                    .map(|r| r.rows_affected())
            };
        }
        match &mut Reader::open(&db.url).await {
            Reader::Sqlite(c) => insert_old!(c),
            Reader::Pg(c) => insert_old!(c),
        }
        .unwrap();
        let row = webhooks
            .get_event(&old.id)
            .await
            .unwrap()
            .expect("the old event");
        assert_eq!(row.payload, body);
        (db.cleanup)();
    }
}
