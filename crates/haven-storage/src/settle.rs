//! Settling sends: outcomes of send attempts and delivery receipts, written in one transaction.
//!
//! The statements are written once, against [`Exec`], and run by three executors: a sqlx
//! transaction on PostgreSQL, a sqlx transaction on SQLite (stored receipts tried again), and
//! the SQLite writer thread's own connection (see `direct`), where the sending loop's settle
//! runs as one hand-off instead of a round trip to sqlx's thread per statement. On two busy
//! cores those round trips, not SQLite, were most of the time a settle held the one writer,
//! and an accepting request's group commit waited behind it.

use crate::bulk::{self, Ph};
use crate::{backend, sql};
use haven_messaging::store::{
    Decide, Outcome, PartRow, ReceiptRow, ReceiptTarget, Settled, StatusChange,
    receipt_retry_after_ms,
};
use haven_platform::events::OutboxEvent;
use haven_platform::store::{StoreError, StoreResult};
use haven_platform::usage::UsageRecord;
use std::collections::{HashMap, HashSet};

/// A parameter, typed (PostgreSQL is told each parameter's type, NULLs included).
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Int(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
    /// A column of rows as one array (PostgreSQL only, see [`rows_statement`]).
    Ints(Vec<Option<i64>>),
    Texts(Vec<Option<String>>),
    Blobs(Vec<Option<Vec<u8>>>),
}

/// Arrays are PostgreSQL's; the other executors refuse them.
fn no_arrays() -> StoreError {
    StoreError::Backend("array parameters need PostgreSQL".to_owned())
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(Some(v))
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(Some(v.to_owned()))
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(Some(v.clone()))
    }
}
impl From<&Option<String>> for Val {
    fn from(v: &Option<String>) -> Self {
        Val::Text(v.clone())
    }
}
impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Self {
        Val::Text(v.map(str::to_owned))
    }
}
impl From<&Option<Vec<u8>>> for Val {
    fn from(v: &Option<Vec<u8>>) -> Self {
        Val::Blob(v.clone())
    }
}

/// A column value read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A row read back, by column position.
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> StoreResult<&Cell> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Backend(format!("no column {i}")))
    }
    pub(crate) fn text(&self, i: usize) -> StoreResult<String> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Backend(format!("column {i} is NULL")))
    }
    pub(crate) fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(s) => Ok(Some(s.clone())),
            other => Err(StoreError::Backend(format!(
                "column {i}: expected text, found {other:?}"
            ))),
        }
    }
    pub(crate) fn int(&self, i: usize) -> StoreResult<i64> {
        match self.cell(i)? {
            Cell::Int(v) => Ok(*v),
            other => Err(StoreError::Backend(format!(
                "column {i}: expected an integer, found {other:?}"
            ))),
        }
    }
}

/// Runs statements inside the caller's transaction.
#[async_trait::async_trait]
pub(crate) trait Exec: Send {
    /// How this backend writes placeholders.
    fn ph(&self) -> Ph;
    /// ` FOR UPDATE` where rows read to be changed must be locked (PostgreSQL), else empty.
    fn lock_clause(&self) -> &'static str;
    /// Whether parameters may be arrays ([`Val::Ints`] and the like): PostgreSQL.
    fn arrays(&self) -> bool {
        false
    }
    async fn execute(&mut self, sql: &str, params: Vec<Val>) -> StoreResult<u64>;
    async fn fetch(&mut self, sql: &str, params: Vec<Val>) -> StoreResult<Vec<Row>>;
}

/// A sqlx transaction as an [`Exec`].
pub(crate) struct SqlxTx<'t, 'c, DB: sqlx::Database>(pub(crate) &'t mut sqlx::Transaction<'c, DB>);

/// A sqlx query with `params` bound in order, each with its own type.
macro_rules! bind_all {
    ($q:expr, $params:expr, $arrays:tt) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Val::Int(v) => q.bind(v),
                Val::Text(v) => q.bind(v),
                Val::Blob(v) => q.bind(v),
                Val::Ints(v) => bind_array!(q, v, $arrays),
                Val::Texts(v) => bind_array!(q, v, $arrays),
                Val::Blobs(v) => bind_array!(q, v, $arrays),
            };
        }
        q
    }};
}

/// An array parameter: bound where the backend has arrays, refused where it has not.
macro_rules! bind_array {
    ($q:expr, $v:expr, arrays) => {
        $q.bind($v)
    };
    ($q:expr, $v:expr, scalars) => {{
        drop($v);
        return Err(no_arrays());
    }};
}

macro_rules! sqlx_exec {
    ($db:ty, $ph:expr, $lock:expr, $arrays:tt, $int_types:expr, $blob_types:expr) => {
        #[async_trait::async_trait]
        impl Exec for SqlxTx<'_, '_, $db> {
            fn ph(&self) -> Ph {
                $ph
            }
            fn lock_clause(&self) -> &'static str {
                $lock
            }
            fn arrays(&self) -> bool {
                stringify!($arrays) == "arrays"
            }
            async fn execute(&mut self, text: &str, params: Vec<Val>) -> StoreResult<u64> {
                let q = bind_all!(
                    sqlx::query(sqlx::AssertSqlSafe(text.to_owned())),
                    params,
                    $arrays
                );
                Ok(q.execute(&mut **self.0)
                    .await
                    .map_err(backend)?
                    .rows_affected())
            }
            async fn fetch(&mut self, text: &str, params: Vec<Val>) -> StoreResult<Vec<Row>> {
                use sqlx::{Row as _, TypeInfo as _, ValueRef as _};
                let q = bind_all!(
                    sqlx::query(sqlx::AssertSqlSafe(text.to_owned())),
                    params,
                    $arrays
                );
                let rows = q.fetch_all(&mut **self.0).await.map_err(backend)?;
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                let raw = r.try_get_raw(i).map_err(backend)?;
                                if raw.is_null() {
                                    return Ok(Cell::Null);
                                }
                                let ty = raw.type_info().name().to_ascii_uppercase();
                                Ok(if $int_types.contains(&ty.as_str()) {
                                    Cell::Int(r.try_get::<i64, _>(i).map_err(backend)?)
                                } else if $blob_types.contains(&ty.as_str()) {
                                    Cell::Blob(r.try_get::<Vec<u8>, _>(i).map_err(backend)?)
                                } else {
                                    Cell::Text(r.try_get::<String, _>(i).map_err(backend)?)
                                })
                            })
                            .collect::<StoreResult<Vec<Cell>>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    };
}

sqlx_exec!(
    sqlx::Sqlite,
    Ph::Question,
    "",
    scalars,
    ["INTEGER"],
    ["BLOB"]
);
sqlx_exec!(
    sqlx::Postgres,
    Ph::Dollar,
    " FOR UPDATE",
    arrays,
    ["INT8", "BIGINT"],
    ["BYTEA"]
);

/// The SQLite writer thread's connection as an [`Exec`] (inside `direct`'s transaction).
/// Its futures never wait: [`run_ready`] drives them.
pub(crate) struct Direct<'c>(pub(crate) &'c mut rusqlite::Connection);

fn to_sql(params: &[Val]) -> StoreResult<Vec<&dyn rusqlite::types::ToSql>> {
    params
        .iter()
        .map(|p| match p {
            Val::Int(v) => Ok(v as &dyn rusqlite::types::ToSql),
            Val::Text(v) => Ok(v as &dyn rusqlite::types::ToSql),
            Val::Blob(v) => Ok(v as &dyn rusqlite::types::ToSql),
            Val::Ints(_) | Val::Texts(_) | Val::Blobs(_) => Err(no_arrays()),
        })
        .collect()
}

#[async_trait::async_trait]
impl Exec for Direct<'_> {
    fn ph(&self) -> Ph {
        Ph::Question
    }
    fn lock_clause(&self) -> &'static str {
        ""
    }
    async fn execute(&mut self, text: &str, params: Vec<Val>) -> StoreResult<u64> {
        let mut st = self
            .0
            .prepare_cached(text)
            .map_err(crate::direct::backend)?;
        let n = st
            .execute(to_sql(&params)?.as_slice())
            .map_err(crate::direct::backend)?;
        Ok(n as u64)
    }
    async fn fetch(&mut self, text: &str, params: Vec<Val>) -> StoreResult<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut st = self
            .0
            .prepare_cached(text)
            .map_err(crate::direct::backend)?;
        let cols = st.column_count();
        let mut rows = st
            .query(to_sql(&params)?.as_slice())
            .map_err(crate::direct::backend)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(crate::direct::backend)? {
            let mut cells = Vec::with_capacity(cols);
            for i in 0..cols {
                cells.push(match r.get_ref(i).map_err(crate::direct::backend)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Text(v.to_string()),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                });
            }
            out.push(Row(cells));
        }
        Ok(out)
    }
}

/// A set-based statement over many rows, each `width` values of `params` (row after row).
/// `text` holds `{rows}` where the rows go, as a relation `v` whose columns are `column1`,
/// `column2`… On PostgreSQL that is one statement whatever the number of rows, each column
/// bound as one array and unnested: one round trip, and one text whose prepared plan is kept
/// (see `pgpoint`'s note on generic plans), where a `VALUES` list needs a text per row count
/// and a new plan for each. Elsewhere it is `(VALUES …) AS v` in chunks of [`bulk::chunks`].
/// Returns the rows affected and, with `fetch`, the rows returned, of all the statements.
pub(crate) async fn rows_statement(
    ex: &mut impl Exec,
    text: &str,
    width: usize,
    params: Vec<Val>,
    fetch: bool,
) -> StoreResult<(u64, Vec<Row>)> {
    if params.is_empty() || width == 0 {
        return Ok((0, Vec::new()));
    }
    if !params.len().is_multiple_of(width) {
        return Err(StoreError::Backend(format!(
            "{} values are not rows of {width}",
            params.len()
        )));
    }
    let n = params.len() / width;
    let mut affected = 0;
    let mut out = Vec::new();
    if ex.arrays() {
        let mut cols: Vec<Val> = params[..width]
            .iter()
            .map(|v| match v {
                Val::Int(_) => Val::Ints(Vec::with_capacity(n)),
                Val::Text(_) => Val::Texts(Vec::with_capacity(n)),
                _ => Val::Blobs(Vec::with_capacity(n)),
            })
            .collect();
        for (i, v) in params.into_iter().enumerate() {
            match (&mut cols[i % width], v) {
                (Val::Ints(c), Val::Int(v)) => c.push(v),
                (Val::Texts(c), Val::Text(v)) => c.push(v),
                (Val::Blobs(c), Val::Blob(v)) => c.push(v),
                _ => {
                    return Err(StoreError::Backend(format!(
                        "column {} changes type between rows",
                        i % width + 1
                    )));
                }
            }
        }
        let arrays: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = match c {
                    Val::Ints(_) => "bigint",
                    Val::Texts(_) => "text",
                    _ => "bytea",
                };
                format!("{}::{ty}[]", Ph::Dollar.at(i + 1))
            })
            .collect();
        let names: Vec<String> = (1..=width).map(|i| format!("column{i}")).collect();
        let text = text.replace(
            "{rows}",
            &format!("UNNEST({}) AS v ({})", arrays.join(", "), names.join(", ")),
        );
        if fetch {
            out = ex.fetch(&text, cols).await?;
        } else {
            affected = ex.execute(&text, cols).await?;
        }
        return Ok((affected, out));
    }
    let mut params = params.into_iter();
    for r in bulk::chunks(n) {
        let chunk: Vec<Val> = params.by_ref().take(r.len() * width).collect();
        let text = text.replace(
            "{rows}",
            &format!(
                "(VALUES {}) AS v",
                bulk::values(ex.ph(), r.len(), width, 1, "")
            ),
        );
        if fetch {
            out.extend(ex.fetch(&text, chunk).await?);
        } else {
            affected += ex.execute(&text, chunk).await?;
        }
    }
    Ok((affected, out))
}

/// Drives a future that never waits (one on [`Direct`]) to its end on this thread.
pub(crate) fn run_ready<T>(
    fut: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => Err(StoreError::Backend(
            "a statement on the SQLite writer thread waited".into(),
        )),
    }
}

/// Part states no receipt changes any more.
const FINAL_PART_STATES: &[&str] = &["delivered", "failed", "expired", "rejected"];

/// One receipt matched to its part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Receipt<'a> {
    id: i64,
    route: &'a str,
    provider_id: &'a str,
    state: &'a str,
    error_code: Option<&'a str>,
}

/// What a batch of receipts leaves each part at, as `(route, provider_id, state,
/// error_code)`: the receipts of one part applied in the order they came (by id), where a
/// final state is never replaced by a later one. The same rule guards the stored state.
fn fold_receipts<'a>(
    receipts: impl Iterator<Item = Receipt<'a>>,
) -> Vec<(&'a str, &'a str, &'a str, Option<&'a str>)> {
    let mut by_part: Vec<Receipt<'a>> = receipts.collect();
    by_part.sort_by_key(|r| (r.route, r.provider_id, r.id));
    let mut effective: Vec<(&str, &str, &str, Option<&str>)> = Vec::new();
    for m in by_part {
        match effective.last_mut() {
            Some(e) if e.0 == m.route && e.1 == m.provider_id => {
                if !FINAL_PART_STATES.contains(&e.2) {
                    e.2 = m.state;
                    e.3 = m.error_code;
                }
            }
            _ => effective.push((m.route, m.provider_id, m.state, m.error_code)),
        }
    }
    effective
}

/// A receipt matched to its message's part, to be applied. `seq` orders one part's receipts
/// as they came: stored ones by id, then the ones arriving now (from [`ARRIVING_SEQ`]).
pub(crate) struct Matched {
    pub(crate) seq: i64,
    /// Its row in `channel_receipts`, when it was stored.
    pub(crate) stored_id: Option<i64>,
    pub(crate) state: String,
    pub(crate) error_code: Option<String>,
    pub(crate) message_id: String,
    pub(crate) route: String,
    pub(crate) provider_id: String,
}

/// Receipts arriving now come after every stored one.
const ARRIVING_SEQ: i64 = i64::MAX / 2;

/// Outbox events inside the caller's transaction (see `INSERT_EVENTS_ROWS`).
pub(crate) async fn push_events(ex: &mut impl Exec, events: &[OutboxEvent]) -> StoreResult<()> {
    let mut params = Vec::with_capacity(events.len() * 5);
    for e in events {
        params.extend([
            Val::from(&e.id),
            Val::from(&e.account_id),
            Val::from(e.event_type),
            Val::from(&e.data),
            Val::from(e.created_at_ms),
        ]);
    }
    rows_statement(ex, crate::INSERT_EVENTS_ROWS, 5, params, false).await?;
    Ok(())
}

/// Usage records inside the caller's transaction; a second one for a resource is ignored.
async fn push_usage(ex: &mut impl Exec, records: &[&UsageRecord]) -> StoreResult<()> {
    let mut params = Vec::with_capacity(records.len() * 12);
    for u in records {
        params.extend([
            Val::from(&u.id),
            Val::from(&u.account_id),
            Val::from(&u.product),
            Val::from(&u.channel),
            Val::from(&u.resource_id),
            Val::from(&u.reference_id),
            Val::from(&u.country),
            Val::from(u.units),
            Val::from(&u.unit),
            Val::Int(u.unit_price_micros),
            Val::from(&u.currency),
            Val::from(u.created_at_ms),
        ]);
    }
    rows_statement(ex, crate::usage::INSERT_USAGE_ROWS, 12, params, false).await?;
    Ok(())
}

/// Receipts for parts that the same batch submits, folded into the submit: an SMSC that
/// answers at once sends the receipt a moment after the `submit_sm_resp`, so both usually reach
/// one settle. The message is then written once, with its parts at their receipt states and
/// its status as `decide` says (`delivered` for the usual receipt), instead of being written
/// `submitted` and then read back, locked and written again by the receipt.
struct Fold {
    /// Each part's `(state, error_code)`, by part index.
    parts: Vec<(String, Option<String>)>,
    /// The status the receipts decide, with its event.
    change: Option<StatusChange>,
    /// The receipts folded in, by their index in the batch.
    receipts: Vec<usize>,
}

/// Which receipts of the batch belong to parts the batch submits, by message id. Receipts
/// are taken in the order they came (the batch keeps it), and a final part state is never
/// replaced by a later one, as in [`fold_receipts`].
fn plan_folds(
    outcomes: &[Outcome],
    receipts: &[ReceiptRow],
    now: i64,
    decide: &Decide,
) -> HashMap<String, Fold> {
    let mut by_part: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
    for (oi, o) in outcomes.iter().enumerate() {
        if let Outcome::Submitted {
            route,
            provider_ids,
            ..
        } = o
        {
            for (pi, pid) in provider_ids.iter().enumerate() {
                by_part.insert((route.as_str(), pid.as_str()), (oi, pi));
            }
        }
    }
    if by_part.is_empty() {
        return HashMap::new();
    }
    let mut folds: HashMap<usize, Fold> = HashMap::new();
    let mut mine = Vec::new();
    for (ri, r) in receipts.iter().enumerate() {
        let Some(&(oi, _)) = by_part.get(&(r.route.as_str(), r.provider_id.as_str())) else {
            continue;
        };
        let Some(Outcome::Submitted { provider_ids, .. }) = outcomes.get(oi) else {
            continue;
        };
        folds
            .entry(oi)
            .or_insert_with(|| Fold {
                parts: vec![("submitted".to_owned(), None); provider_ids.len()],
                change: None,
                receipts: Vec::new(),
            })
            .receipts
            .push(ri);
        mine.push(Receipt {
            id: i64::try_from(ri).unwrap_or(i64::MAX),
            route: &r.route,
            provider_id: &r.provider_id,
            state: &r.state,
            error_code: r.error_code.as_deref(),
        });
    }
    // Each part's receipts in the order they came, as everywhere else.
    for (route, pid, state, code) in fold_receipts(mine.into_iter()) {
        if let Some(&(oi, pi)) = by_part.get(&(route, pid))
            && let Some(part) = folds.get_mut(&oi).and_then(|f| f.parts.get_mut(pi))
        {
            *part = (state.to_owned(), code.map(str::to_owned));
        }
    }
    let mut out = HashMap::with_capacity(folds.len());
    for (oi, mut fold) in folds {
        let Some(Outcome::Submitted {
            message_id,
            route,
            provider_ids,
            usage,
            ..
        }) = outcomes.get(oi)
        else {
            continue;
        };
        let target = ReceiptTarget {
            message_id: message_id.clone(),
            account_id: usage.account_id.clone(),
            channel: usage.channel.clone(),
            status: "submitted".to_owned(),
            parts: fold
                .parts
                .iter()
                .zip(provider_ids)
                .enumerate()
                .map(|(i, ((state, code), pid))| PartRow {
                    message_id: message_id.clone(),
                    part_index: i64::try_from(i).unwrap_or(i64::MAX),
                    route: route.clone(),
                    provider_id: pid.clone(),
                    state: state.clone(),
                    error_code: code.clone(),
                })
                .collect(),
        };
        fold.change = decide(&target, now);
        out.insert(message_id.clone(), fold);
    }
    out
}

fn outcome_message(o: &Outcome) -> &str {
    match o {
        Outcome::Submitted { message_id, .. }
        | Outcome::Retry { message_id, .. }
        | Outcome::Final { message_id, .. } => message_id,
    }
}

/// Outcomes of send attempts: retries, final states, and the sends the carrier took (their
/// parts, usage records and events, with the receipts folded into them). Returns the ids of
/// the messages written as taken by the carrier.
async fn write_outcomes(
    ex: &mut impl Exec,
    outcomes: &[Outcome],
    folds: &HashMap<String, Fold>,
    now: i64,
) -> StoreResult<HashSet<String>> {
    let mut events = Vec::new();
    let mut submitted = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Submitted { .. } => submitted.push(o),
            Outcome::Retry {
                message_id,
                attempts,
                next_attempt_at_ms,
                reason,
            } => {
                ex.execute(
                    sql::RETRY_MESSAGE,
                    vec![
                        Val::from(*attempts),
                        Val::from(*next_attempt_at_ms),
                        Val::from(reason),
                        Val::from(haven_platform::clock::now_ms()),
                        Val::from(message_id),
                    ],
                )
                .await?;
            }
            Outcome::Final {
                message_id,
                status,
                error_code,
                reason,
                at_ms,
                event,
                content_ct,
            } => {
                let done = ex
                    .execute(
                        sql::FINAL_MESSAGE,
                        vec![
                            Val::from(status),
                            Val::from(error_code),
                            Val::from(reason),
                            Val::from(*at_ms),
                            Val::from(content_ct),
                            Val::from(message_id),
                        ],
                    )
                    .await?;
                if done > 0 {
                    events.push(event.clone());
                }
            }
        }
    }
    // In one order on every node: two settles that both hold sends of one message (an
    // overlapping lease) lock its row in the same order as the rest.
    submitted.sort_by(|a, b| outcome_message(a).cmp(outcome_message(b)));
    // Sends the carrier took, set-based: the messages still `accepted` become `submitted`
    // (the others were settled meanwhile and keep their state), and only those get their
    // parts, their usage record and their event.
    let mut done = HashSet::new();
    let mut params = Vec::with_capacity(submitted.len() * 8);
    for o in &submitted {
        if let Outcome::Submitted {
            message_id,
            route,
            provider_ids,
            at_ms,
            content_ct,
            ..
        } = o
        {
            let change = folds.get(message_id).and_then(|f| f.change.as_ref());
            params.extend([
                Val::from(message_id),
                Val::from(route),
                Val::from(i64::try_from(provider_ids.len()).unwrap_or(i64::MAX)),
                Val::from(*at_ms),
                Val::from(content_ct),
                Val::from(change.map_or("submitted", |c| c.status.as_str())),
                Val::Text(change.and_then(|c| c.error_code.clone())),
                Val::Int(change.map(|_| now)),
            ]);
        }
    }
    let (_, rows) = rows_statement(
        ex,
        "UPDATE messages SET status = v.column6, route = v.column2, parts = v.column3, \
         attempts = attempts + 1, submitted_at_ms = v.column4, \
         updated_at_ms = COALESCE(v.column8, v.column4), \
         lease_until_ms = 0, due_at_ms = NULL, error_reason = NULL, \
         error_code = CASE WHEN v.column8 IS NULL THEN messages.error_code ELSE v.column7 END, \
         final_at_ms = COALESCE(v.column8, messages.final_at_ms), \
         content_ct = COALESCE(v.column5, messages.content_ct) \
         FROM {rows} WHERE messages.id = v.column1 AND messages.status = 'accepted' \
         RETURNING messages.id",
        8,
        params,
        true,
    )
    .await?;
    for row in rows {
        done.insert(row.text(0)?);
    }
    let mut parts = Vec::new();
    let mut usage = Vec::new();
    for o in submitted {
        if let Outcome::Submitted {
            message_id,
            route,
            provider_ids,
            at_ms,
            event,
            usage: u,
            ..
        } = o
            && done.contains(message_id)
        {
            let fold = folds.get(message_id);
            for (i, pid) in provider_ids.iter().enumerate() {
                let (state, code) = fold
                    .and_then(|f| f.parts.get(i))
                    .map_or(("submitted", None), |(s, c)| (s.as_str(), c.as_deref()));
                parts.push((
                    message_id,
                    i64::try_from(i).unwrap_or(i64::MAX),
                    route,
                    pid,
                    if fold.is_some() { now } else { *at_ms },
                    state,
                    code,
                ));
            }
            usage.push(u.as_ref());
            events.push(event.clone());
            if let Some(change) = fold.and_then(|f| f.change.as_ref()) {
                events.push(change.event.clone());
            }
        }
    }
    // No parts to clear first: parts are written only here, in the transaction that moves the
    // message out of `accepted`, and nothing moves a message back; a second send of it (an
    // overlapping lease) fails the status check above and writes none.
    let mut params = Vec::with_capacity(parts.len() * 7);
    for (m, i, route, pid, at, state, code) in &parts {
        params.extend([
            Val::from(*m),
            Val::from(*i),
            Val::from(*route),
            Val::from(*pid),
            Val::from(*at),
            Val::from(*state),
            Val::from(*code),
        ]);
    }
    rows_statement(
        ex,
        "INSERT INTO message_parts (message_id, part_index, route, provider_id, updated_at_ms, \
         state, error_code) SELECT * FROM {rows}",
        7,
        params,
        false,
    )
    .await?;
    push_usage(ex, &usage).await?;
    push_events(ex, &events).await?;
    Ok(done)
}

/// Deletes stored receipts.
pub(crate) async fn delete_receipts(ex: &mut impl Exec, ids: &[i64]) -> StoreResult<()> {
    for r in bulk::chunks(ids.len()) {
        let text = format!(
            "DELETE FROM channel_receipts WHERE id IN ({})",
            bulk::list(ex.ph(), r.len(), 1)
        );
        ex.execute(&text, ids[r].iter().map(|id| Val::from(*id)).collect())
            .await?;
    }
    Ok(())
}

fn part_row(r: &Row) -> StoreResult<PartRow> {
    Ok(PartRow {
        message_id: r.text(0)?,
        part_index: r.int(1)?,
        route: r.text(2)?,
        provider_id: r.text(3)?,
        state: r.text(4)?,
        error_code: r.opt_text(5)?,
    })
}

/// Applies receipts matched to their parts: locks their messages, moves the parts on, lets
/// `decide` change each message's status and writes the events. Stored receipts among them
/// are deleted. Returns the status changes written and the workflow messages among them.
pub(crate) async fn apply_matched(
    ex: &mut impl Exec,
    mut matched: Vec<Matched>,
    now: i64,
    decide: &Decide,
) -> StoreResult<(usize, Vec<String>)> {
    if matched.is_empty() {
        return Ok((0, Vec::new()));
    }
    // Lock messages in one order on every node, so two reconcilers cannot deadlock.
    matched.sort_by(|a, b| a.message_id.cmp(&b.message_id).then(a.seq.cmp(&b.seq)));
    let mut mids: Vec<&str> = matched.iter().map(|m| m.message_id.as_str()).collect();
    mids.dedup();
    // id, account_id, channel, status, workflow_id, parts
    let mut heads = Vec::new();
    for r in bulk::chunks(mids.len()) {
        let text = format!(
            "SELECT id, account_id, channel, status, workflow_id, parts FROM messages WHERE id IN ({}) \
             ORDER BY id{}",
            bulk::list(ex.ph(), r.len(), 1),
            ex.lock_clause()
        );
        let params = mids[r].iter().map(|id| Val::from(*id)).collect();
        heads.extend(ex.fetch(&text, params).await?);
    }
    // Each part's receipts applied in the order they came, as one update: a final state is
    // never replaced by a later, non-final one.
    let effective = fold_receipts(matched.iter().map(|m| Receipt {
        id: m.seq,
        route: &m.route,
        provider_id: &m.provider_id,
        state: &m.state,
        error_code: m.error_code.as_deref(),
    }));
    // The parts it changed come back: a message of one part whose part changed needs no
    // second read of its parts below.
    let mut parts: HashMap<String, Vec<PartRow>> = HashMap::new();
    for r in bulk::chunks(effective.len()) {
        let text = format!(
            "UPDATE message_parts SET state = v.column3, error_code = v.column4, updated_at_ms = {} \
             FROM (VALUES {}) AS v WHERE message_parts.route = v.column1 \
             AND message_parts.provider_id = v.column2 \
             AND message_parts.state NOT IN ('delivered', 'failed', 'expired', 'rejected') \
             RETURNING message_parts.message_id, message_parts.part_index, message_parts.route, \
             message_parts.provider_id, message_parts.state, message_parts.error_code",
            ex.ph().at(1),
            bulk::values(ex.ph(), r.len(), 4, 2, "")
        );
        let mut params = Vec::with_capacity(1 + r.len() * 4);
        params.push(Val::from(now));
        for (route, pid, state, code) in &effective[r] {
            params.extend([
                Val::from(*route),
                Val::from(*pid),
                Val::from(*state),
                Val::from(*code),
            ]);
        }
        for row in ex.fetch(&text, params).await? {
            let p = part_row(&row)?;
            parts.entry(p.message_id.clone()).or_default().push(p);
        }
    }
    let stored: Vec<i64> = matched.iter().filter_map(|m| m.stored_id).collect();
    delete_receipts(ex, &stored).await?;
    let live: Vec<String> = heads
        .iter()
        .map(|h| h.text(0))
        .collect::<StoreResult<_>>()?;
    // Every other message's parts are read whole (the ones updated above again, so that none
    // is counted twice).
    let mut unread = Vec::new();
    for (h, mid) in heads.iter().zip(&live) {
        let count = h.int(5)?;
        let known = parts.get(mid).map_or(0, Vec::len);
        if count != 1 || known != 1 {
            parts.remove(mid);
            unread.push(mid);
        }
    }
    for r in bulk::chunks(unread.len()) {
        let text = format!(
            "SELECT message_id, part_index, route, provider_id, state, error_code FROM message_parts \
             WHERE message_id IN ({}) ORDER BY message_id, part_index",
            bulk::list(ex.ph(), r.len(), 1)
        );
        let params = unread[r].iter().map(|id| Val::from(*id)).collect();
        for row in ex.fetch(&text, params).await? {
            let p = part_row(&row)?;
            parts.entry(p.message_id.clone()).or_default().push(p);
        }
    }
    // Decide each message from all its parts; apply the changes set-based, only to messages
    // still `submitted`.
    let mut changes = Vec::new();
    for (h, mid) in heads.iter().zip(&live) {
        let target = ReceiptTarget {
            message_id: mid.clone(),
            account_id: h.text(1)?,
            channel: h.text(2)?,
            status: h.text(3)?,
            parts: parts.remove(mid).unwrap_or_default(),
        };
        if let Some(change) = decide(&target, now) {
            changes.push((mid, change, h.opt_text(4)?.is_some()));
        }
    }
    let mut applied = HashSet::new();
    for r in bulk::chunks(changes.len()) {
        let text = format!(
            "UPDATE messages SET status = v.column2, error_code = v.column3, final_at_ms = {}, \
             updated_at_ms = {} FROM (VALUES {}) AS v WHERE messages.id = v.column1 \
             AND messages.status = 'submitted' RETURNING messages.id",
            ex.ph().at(1),
            ex.ph().at(2),
            bulk::values(ex.ph(), r.len(), 3, 3, "")
        );
        let mut params = Vec::with_capacity(2 + r.len() * 3);
        params.extend([Val::from(now), Val::from(now)]);
        for (mid, change, _) in &changes[r] {
            params.extend([
                Val::from(*mid),
                Val::from(&change.status),
                Val::from(&change.error_code),
            ]);
        }
        for row in ex.fetch(&text, params).await? {
            applied.insert(row.text(0)?);
        }
    }
    let mut events = Vec::new();
    let mut changed = Vec::new();
    for (mid, change, workflow) in changes {
        if applied.contains(mid) {
            events.push(change.event);
            if workflow {
                changed.push(mid.clone());
            }
        }
    }
    push_events(ex, &events).await?;
    Ok((events.len(), changed))
}

/// The sending loop's settle, inside the caller's transaction: the outcomes, then the
/// receipts that came meanwhile (applied when their part is recorded, stored to be tried
/// again when not).
pub(crate) async fn settle(
    ex: &mut impl Exec,
    outcomes: &[Outcome],
    receipts: &[ReceiptRow],
    decide: &Decide,
) -> StoreResult<Settled> {
    let now = haven_platform::clock::now_ms();
    let folds = plan_folds(outcomes, receipts, now, decide);
    let done = write_outcomes(ex, outcomes, &folds, now).await?;
    let mut settled = Settled::default();
    // Receipts folded into a submit that was written are applied; the others (a message that
    // was no longer `accepted`) go the usual way below.
    let mut folded = vec![false; receipts.len()];
    for (mid, fold) in &folds {
        if done.contains(mid) {
            settled.applied += fold.receipts.len();
            settled.folded += fold.receipts.len();
            settled.events += usize::from(fold.change.is_some());
            for &i in &fold.receipts {
                if let Some(f) = folded.get_mut(i) {
                    *f = true;
                }
            }
        }
    }
    let receipts: Vec<&ReceiptRow> = receipts
        .iter()
        .zip(&folded)
        .filter_map(|(r, &f)| (!f).then_some(r))
        .collect();
    if receipts.is_empty() {
        return Ok(settled);
    }
    // Which parts are recorded: one probe of the (route, provider_id) index per receipt,
    // parts written just above included.
    let mut found: HashMap<(String, String), String> = HashMap::new();
    let mut params = Vec::with_capacity(receipts.len() * 2);
    for row in &receipts {
        params.extend([Val::from(&row.route), Val::from(&row.provider_id)]);
    }
    let (_, rows) = rows_statement(
        ex,
        "SELECT p.route, p.provider_id, p.message_id FROM {rows} \
         JOIN message_parts p ON p.route = v.column1 AND p.provider_id = v.column2",
        2,
        params,
        true,
    )
    .await?;
    for row in rows {
        found.insert((row.text(0)?, row.text(1)?), row.text(2)?);
    }
    let mut matched = Vec::new();
    let mut waiting = Vec::new();
    for (i, row) in receipts.iter().enumerate() {
        match found.get(&(row.route.clone(), row.provider_id.clone())) {
            Some(mid) => matched.push(Matched {
                // After every stored receipt: these came last.
                seq: ARRIVING_SEQ.saturating_add(i64::try_from(i).unwrap_or(0)),
                stored_id: None,
                state: row.state.clone(),
                error_code: row.error_code.clone(),
                message_id: mid.clone(),
                route: row.route.clone(),
                provider_id: row.provider_id.clone(),
            }),
            None => waiting.push(row),
        }
    }
    let next_try = now.saturating_add(receipt_retry_after_ms(0));
    for r in bulk::chunks(waiting.len()) {
        let text = format!(
            "INSERT INTO channel_receipts (route, provider_id, state, error_code, at_ms, \
             received_at_ms, next_try_ms, tries) VALUES {}",
            bulk::values(ex.ph(), r.len(), 7, 1, ", 0")
        );
        let mut params = Vec::with_capacity(r.len() * 7);
        for row in &waiting[r] {
            params.extend([
                Val::from(&row.route),
                Val::from(&row.provider_id),
                Val::from(&row.state),
                Val::from(&row.error_code),
                Val::from(row.at_ms),
                Val::from(row.received_at_ms),
                Val::from(next_try),
            ]);
        }
        ex.execute(&text, params).await?;
    }
    settled.applied += matched.len();
    settled.waiting = waiting.len();
    let (events, changed) = apply_matched(ex, matched, now, decide).await?;
    settled.events += events;
    settled.changed = changed;
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r<'a>(id: i64, pid: &'a str, state: &'a str) -> Receipt<'a> {
        Receipt {
            id,
            route: "smsc",
            provider_id: pid,
            state,
            error_code: (state == "failed").then_some("088"),
        }
    }

    #[test]
    fn receipts_fold_in_arrival_order_and_finals_stay() {
        let got = fold_receipts(
            [
                r(4, "b", "enroute"),
                r(1, "a", "enroute"),
                r(3, "a", "enroute"),
                r(2, "a", "delivered"),
                r(5, "b", "failed"),
                r(6, "c", "enroute"),
            ]
            .into_iter(),
        );
        assert_eq!(
            got,
            vec![
                // enroute, then delivered: a later enroute does not undo it.
                ("smsc", "a", "delivered", None),
                ("smsc", "b", "failed", Some("088")),
                ("smsc", "c", "enroute", None),
            ]
        );
    }

    #[test]
    fn a_future_that_waits_is_refused_not_blocked_on() {
        assert_eq!(run_ready(async { Ok(7) }).ok(), Some(7));
        let waits = async {
            std::future::pending::<()>().await;
            Ok(())
        };
        assert!(run_ready(waits).is_err());
    }
}

#[cfg(test)]
mod rows_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Counts the statements an executor runs.
    struct Counting<E> {
        inner: E,
        statements: usize,
    }

    #[async_trait::async_trait]
    impl<E: Exec> Exec for Counting<E> {
        fn ph(&self) -> Ph {
            self.inner.ph()
        }
        fn lock_clause(&self) -> &'static str {
            self.inner.lock_clause()
        }
        fn arrays(&self) -> bool {
            self.inner.arrays()
        }
        async fn execute(&mut self, sql: &str, params: Vec<Val>) -> StoreResult<u64> {
            self.statements += 1;
            self.inner.execute(sql, params).await
        }
        async fn fetch(&mut self, sql: &str, params: Vec<Val>) -> StoreResult<Vec<Row>> {
            self.statements += 1;
            self.inner.fetch(sql, params).await
        }
    }

    const ROWS: usize = 300;

    /// 300 rows of three columns of each type, NULLs included.
    fn params() -> Vec<Val> {
        (0..ROWS)
            .flat_map(|i| {
                let i = i64::try_from(i).unwrap();
                [
                    Val::Int(Some(i)),
                    Val::Text((i % 7 != 0).then(|| format!("t{i}"))),
                    Val::Blob((i % 5 != 0).then(|| i.to_be_bytes().to_vec())),
                ]
            })
            .collect()
    }

    /// Inserts the rows, reads them back joined to their keys and checks every value.
    async fn round_trip(ex: &mut impl Exec) {
        let (n, _) = rows_statement(
            ex,
            "INSERT INTO t (a, b, c) SELECT * FROM {rows}",
            3,
            params(),
            false,
        )
        .await
        .unwrap();
        assert_eq!(n, ROWS as u64);
        let keys = (0..ROWS)
            .map(|i| Val::Int(Some(i64::try_from(i).unwrap())))
            .collect();
        let (_, rows) = rows_statement(
            ex,
            "SELECT t.a, t.b, t.c FROM {rows} JOIN t ON t.a = v.column1 ORDER BY t.a",
            1,
            keys,
            true,
        )
        .await
        .unwrap();
        assert_eq!(rows.len(), ROWS);
        for (i, row) in rows.iter().enumerate() {
            let i = i64::try_from(i).unwrap();
            assert_eq!(row.int(0).unwrap(), i);
            assert_eq!(
                row.opt_text(1).unwrap(),
                (i % 7 != 0).then(|| format!("t{i}"))
            );
            let blob = (i % 5 != 0).then(|| Cell::Blob(i.to_be_bytes().to_vec()));
            assert_eq!(row.cell(2).unwrap(), &blob.unwrap_or(Cell::Null));
        }
        // A column whose type changes between rows is refused, not cast.
        let mixed = vec![Val::Int(Some(1)), Val::Text(Some("x".into()))];
        let refused = rows_statement(ex, "SELECT 1 FROM {rows}", 1, mixed, true).await;
        assert!(refused.is_err() || !ex.arrays());
    }

    #[test]
    fn rows_go_in_power_of_two_values_chunks_on_sqlite() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute("CREATE TABLE t (a INTEGER, b TEXT, c BLOB)", [])
            .unwrap();
        let mut ex = Counting {
            inner: Direct(&mut conn),
            statements: 0,
        };
        run_ready(async {
            round_trip(&mut ex).await;
            Ok(())
        })
        .unwrap();
        // 300 = 256 + 32 + 8 + 4, twice (the insert and the read).
        assert_eq!(ex.statements, 8 + 1);
    }

    /// Runs on PostgreSQL when `HAVEN_TEST_DATABASE_URL` is set (the README's test command
    /// sets it): every row in one statement, whatever their number.
    #[tokio::test]
    async fn rows_go_in_one_statement_of_arrays_on_postgres() {
        use sqlx::Connection as _;
        let Ok(url) = std::env::var("HAVEN_TEST_DATABASE_URL") else {
            return;
        };
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("CREATE TEMPORARY TABLE t (a BIGINT, b TEXT, c BYTEA) ON COMMIT DROP")
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut ex = Counting {
            inner: SqlxTx(&mut tx),
            statements: 0,
        };
        round_trip(&mut ex).await;
        assert_eq!(ex.statements, 2);
        tx.rollback().await.unwrap();
    }
}
