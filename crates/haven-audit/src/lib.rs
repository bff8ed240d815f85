//! The tamper-evident audit log: every audit event is a leaf of an append-only RFC 6962 Merkle
//! tree; signed tree heads (Ed25519) commit to it; inclusion and consistency proofs let anyone
//! check it with the published key and a standard verifier; `verify` recomputes everything and
//! names the first event that was altered, deleted, inserted or reordered.

pub mod merkle;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use haven_crypto::jwt::SigningKey;
use haven_crypto::ring::KeyProvider;
use haven_platform::audit::AuditEvent;
use haven_platform::page::PageRequest;
use haven_platform::store::{StoreError, StoreResult};
use merkle::{Hash, NodeKey};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// The exact bytes hashed for an event (`SHA-256(0x00 ‖ leaf)`): compact JSON with fields in
/// this order. Changing it is a format version change (`v`).
#[derive(Debug, Serialize)]
pub struct Leaf<'a> {
    pub v: u8,
    pub index: u64,
    pub id: &'a str,
    pub at_ms: i64,
    pub action: &'a str,
    pub outcome: &'a str,
    pub account_id: Option<&'a str>,
    pub credential_id: Option<&'a str>,
    pub auth_method: Option<&'a str>,
    pub source_addr: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

/// An event as stored, with its position in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub leaf_index: u64,
    pub id: String,
    pub at_ms: i64,
    pub action: String,
    pub outcome: String,
    pub account_id: Option<String>,
    pub credential_id: Option<String>,
    pub auth_method: Option<String>,
    pub source_addr: Option<String>,
    pub user_agent: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl StoredEvent {
    pub fn from_event(e: &AuditEvent, index: u64) -> Self {
        let source = e.actor.source_addr.map(|a| a.to_string());
        Self {
            leaf_index: index,
            id: e.id.clone(),
            at_ms: e.at_ms,
            action: e.action.as_str().to_owned(),
            outcome: e.outcome.as_str().to_owned(),
            account_id: e.actor.account_id.clone(),
            credential_id: e.actor.credential_id.clone(),
            auth_method: e.actor.auth_method.map(str::to_owned),
            source_addr: source,
            user_agent: e.actor.user_agent.clone(),
            resource_type: e.resource_type.map(str::to_owned),
            resource_id: e.resource_id.clone(),
            reason: e.reason.map(str::to_owned),
            request_id: e.actor.request_id.clone(),
        }
    }

    /// The leaf bytes: the canonical serialization of these columns, which the tree's level-0
    /// node commits to. Never stored (the columns are); recomputed wherever it is needed, so a
    /// changed column cannot hide behind an unchanged copy.
    pub fn leaf(&self) -> Vec<u8> {
        let leaf = Leaf {
            v: 1,
            index: self.leaf_index,
            id: &self.id,
            at_ms: self.at_ms,
            action: &self.action,
            outcome: &self.outcome,
            account_id: self.account_id.as_deref(),
            credential_id: self.credential_id.as_deref(),
            auth_method: self.auth_method.as_deref(),
            source_addr: self.source_addr.as_deref(),
            user_agent: self.user_agent.as_deref(),
            resource_type: self.resource_type.as_deref(),
            resource_id: self.resource_id.as_deref(),
            reason: self.reason.as_deref(),
            request_id: self.request_id.as_deref(),
        };
        serde_json::to_vec(&leaf).unwrap_or_default()
    }
}

/// What an append writes: the events as stored, and every new tree node that is stored.
pub type AppendPlan = (Vec<StoredEvent>, Vec<(NodeKey, Hash)>);

/// Plans an append: the stored events and every new tree node to store (see
/// [`merkle::is_stored`]), given the tree's size and its frontier nodes (read with
/// [`merkle::plan_reads`] of [`merkle::frontier`], then [`merkle::derive_into`]). Pure; the store
/// runs it inside its append transaction.
pub fn plan_append(
    size: u64,
    frontier: &HashMap<NodeKey, Hash>,
    events: &[AuditEvent],
) -> StoreResult<AppendPlan> {
    let stored: Vec<StoredEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| StoredEvent::from_event(e, size + i as u64))
        .collect();
    let leaves: Vec<Hash> = stored
        .iter()
        .map(|s| merkle::leaf_hash(&s.leaf()))
        .collect();
    let mut nodes = merkle::append(size, frontier, &leaves)
        .ok_or_else(|| StoreError::Backend("audit tree frontier is incomplete".into()))?;
    nodes.retain(|(key, _)| merkle::is_stored(*key));
    Ok((stored, nodes))
}

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    pub tree_size: u64,
    pub timestamp_ms: i64,
    pub root_hash: Hash,
    pub signature: Vec<u8>,
}

/// The bytes signed for a tree head: RFC 6962 §3.5 `TreeHeadSignature` — version v1 (0),
/// signature type tree_hash (1), timestamp (u64 ms, big-endian), tree size (u64, big-endian),
/// root hash (32 bytes): 50 bytes.
pub fn tree_head_signed_bytes(tree_size: u64, timestamp_ms: i64, root: &Hash) -> Vec<u8> {
    let mut b = Vec::with_capacity(50);
    b.push(0);
    b.push(1);
    b.extend_from_slice(&(timestamp_ms.max(0) as u64).to_be_bytes());
    b.extend_from_slice(&tree_size.to_be_bytes());
    b.extend_from_slice(root);
    b
}

/// Filters of `GET /v1/audit/events`.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Accounts whose events may be returned (the caller's tree); `None`: every account
    /// (the operator).
    pub visible_to: Option<String>,
    pub account_id: Option<String>,
    pub credential_id: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// The storage port of the audit log.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends events as leaves, atomically with their tree nodes, serialized across nodes, in
    /// one transaction; returns the new tree size.
    /// `waited_for` says someone is waiting for them to be durable: on a single-writer store
    /// that append goes before background work, otherwise it queues behind it.
    async fn append(&self, events: &[AuditEvent], waited_for: bool) -> StoreResult<u64>;
    /// The most events one append should carry: a store with a single writer keeps each of
    /// its transactions short so that others waiting for the writer are not held up long.
    fn max_append(&self) -> usize {
        usize::MAX
    }
    async fn tree_size(&self) -> StoreResult<u64>;
    /// The stored nodes among `keys` (see [`merkle::is_stored`]); absent ones are left out.
    async fn nodes(&self, keys: &[NodeKey]) -> StoreResult<HashMap<NodeKey, Hash>>;
    async fn latest_tree_head(&self) -> StoreResult<Option<TreeHead>>;
    async fn tree_heads(&self) -> StoreResult<Vec<TreeHead>>;
    async fn insert_tree_head(&self, head: &TreeHead) -> StoreResult<()>;
    async fn event(&self, id: &str) -> StoreResult<Option<StoredEvent>>;
    /// Events matching `q`, by leaf index after `page.after` (a decimal index).
    async fn list(&self, q: &EventQuery, page: &PageRequest) -> StoreResult<Vec<StoredEvent>>;
    /// Up to `limit` events with `leaf_index >= start`, in order (verification, export).
    async fn scan(&self, start: u64, limit: u32) -> StoreResult<Vec<StoredEvent>>;
    async fn get_system_secret(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    async fn put_system_secret(&self, name: &str, sealed: &[u8], now_ms: i64) -> StoreResult<bool>;
    /// Leaf hashes (level-0 nodes) of `[start, end)`, in order.
    async fn leaf_hashes(&self, start: u64, end: u64) -> StoreResult<Vec<Hash>>;
    /// Events below this index were pruned by retention.
    async fn pruned_below(&self) -> StoreResult<u64>;
    /// Deletes the events older than `before_ms` that form a prefix of the log (pruning stops
    /// at the first newer event), keeping every tree node and tree head. Returns the new
    /// boundary and how many events were deleted.
    async fn prune(&self, before_ms: i64) -> StoreResult<(u64, u64)>;
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("no such event")]
    NotFound,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] haven_crypto::CryptoError),
}

pub type AuditResult<T> = Result<T, AuditError>;

/// An inclusion proof (RFC 6962 §2.1.1).
#[derive(Debug, Clone)]
pub struct InclusionProof {
    pub event: StoredEvent,
    pub tree_size: u64,
    pub audit_path: Vec<Hash>,
}

const SIGNING_KEY_NAME: &str = "audit_signing_key";

pub struct AuditLog {
    store: Arc<dyn AuditStore>,
    signer: SigningKey,
}

impl AuditLog {
    /// Opens the log, creating its Ed25519 tree-head signing key (sealed with the master key)
    /// on a new database.
    pub async fn open(store: Arc<dyn AuditStore>, master: &dyn KeyProvider) -> AuditResult<Self> {
        let context = format!("haven:system:{SIGNING_KEY_NAME}");
        if store.get_system_secret(SIGNING_KEY_NAME).await?.is_none() {
            let (_, pkcs8) = SigningKey::generate("audit".into())?;
            store
                .put_system_secret(
                    SIGNING_KEY_NAME,
                    &master.wrap(&context, &pkcs8)?,
                    haven_platform::clock::now_ms(),
                )
                .await?;
        }
        let sealed = store
            .get_system_secret(SIGNING_KEY_NAME)
            .await?
            .ok_or(AuditError::Invalid("audit signing key vanished"))?;
        let signer = SigningKey::from_pkcs8("audit".into(), &master.unwrap(&context, &sealed)?)?;
        Ok(Self { store, signer })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.signer.public_key()
    }

    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.store
    }

    /// The latest signed tree head, signing a new one if the tree has grown since.
    pub async fn tree_head(&self) -> AuditResult<TreeHead> {
        let size = self.store.tree_size().await?;
        if let Some(h) = self.store.latest_tree_head().await?
            && h.tree_size >= size
        {
            return Ok(h);
        }
        let root = self.root(size).await?;
        let timestamp_ms = haven_platform::clock::now_ms();
        let signature = self
            .signer
            .sign_raw(&tree_head_signed_bytes(size, timestamp_ms, &root));
        let head = TreeHead {
            tree_size: size,
            timestamp_ms,
            root_hash: root,
            signature,
        };
        match self.store.insert_tree_head(&head).await {
            Ok(()) | Err(StoreError::Conflict) => Ok(head),
            Err(e) => Err(e.into()),
        }
    }

    async fn hashes(&self, ranges: &[(u64, u64)]) -> AuditResult<Vec<Hash>> {
        let keys = merkle::nodes_needed(ranges);
        let reads = merkle::plan_reads(&keys);
        let mut nodes = self.store.nodes(&reads.nodes).await?;
        let mut leaves = Vec::with_capacity(reads.leaves.len());
        for (start, end) in &reads.leaves {
            leaves.push(self.store.leaf_hashes(*start, *end).await?);
        }
        merkle::derive_into(&mut nodes, &keys, &reads, &leaves);
        ranges
            .iter()
            .map(|(s, e)| {
                merkle::range_hash(&nodes, *s, *e).ok_or(AuditError::Store(StoreError::Backend(
                    "audit tree node missing".into(),
                )))
            })
            .collect()
    }

    pub async fn root(&self, size: u64) -> AuditResult<Hash> {
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        Ok(self.hashes(&[(0, size)]).await?.remove(0))
    }

    /// The inclusion proof of an event in the tree of `tree_size` leaves (default: the latest
    /// signed tree head, signing one if the event is newer).
    pub async fn inclusion(
        &self,
        event: StoredEvent,
        tree_size: Option<u64>,
    ) -> AuditResult<InclusionProof> {
        let size = match tree_size {
            Some(s) => s,
            None => self.tree_head().await?.tree_size,
        };
        if event.leaf_index >= size || size > self.store.tree_size().await? {
            return Err(AuditError::Invalid(
                "tree_size must include the event and not exceed the log",
            ));
        }
        let audit_path = self
            .hashes(&merkle::inclusion_ranges(event.leaf_index, size))
            .await?;
        Ok(InclusionProof {
            event,
            tree_size: size,
            audit_path,
        })
    }

    /// The consistency proof between two tree sizes.
    pub async fn consistency(&self, first: u64, second: u64) -> AuditResult<Vec<Hash>> {
        if first == 0 || first > second || second > self.store.tree_size().await? {
            return Err(AuditError::Invalid(
                "need 0 < first <= second <= the log's size",
            ));
        }
        self.hashes(&merkle::consistency_ranges(first, second))
            .await
    }

    /// Recomputes the whole log. Reports problems in log order; `progress` is called with the
    /// number of events checked so far.
    pub async fn verify(&self, mut progress: impl FnMut(u64, u64)) -> AuditResult<VerifyReport> {
        let size = self.store.tree_size().await?;
        let mut problems = Vec::new();
        let mut leaves: Vec<Hash> = Vec::with_capacity(size as usize);
        // Pruned events are gone on purpose; the tree's own leaf hashes stand in for them.
        let pruned = self.store.pruned_below().await?.min(size);
        leaves.extend(self.store.leaf_hashes(0, pruned).await?);
        if leaves.len() as u64 != pruned {
            problems.push(Problem::Deleted {
                index: leaves.len() as u64,
            });
        }
        let mut expected = pruned;
        // Scans forward from `cursor`, which only grows, through the events past the tree's
        // size as well (those were never committed: inserted).
        let mut cursor = 0u64;
        const PAGE: u32 = 5000;
        const MAX_REORDER_CANDIDATES: usize = 256;
        let mut below_boundary = Vec::new();
        let mut mismatched: Vec<(usize, StoredEvent)> = Vec::new();
        loop {
            let rows = self.store.scan(cursor, PAGE).await?;
            let Some(last) = rows.last().map(|r| r.leaf_index) else {
                break;
            };
            if last < cursor {
                break;
            }
            cursor = last + 1;
            let keys: Vec<NodeKey> = rows
                .iter()
                .filter(|r| r.leaf_index < size)
                .map(|r| (0u8, r.leaf_index))
                .collect();
            let stored_leaves = self.store.nodes(&keys).await?;
            for row in rows {
                if row.leaf_index < pruned {
                    below_boundary.push(row);
                    continue;
                }
                if row.leaf_index >= size {
                    problems.push(Problem::Inserted {
                        id: row.id,
                        index: row.leaf_index,
                    });
                    continue;
                }
                while expected < row.leaf_index {
                    problems.push(Problem::Deleted { index: expected });
                    leaves.push(
                        stored_leaves
                            .get(&(0, expected))
                            .copied()
                            .unwrap_or([0; 32]),
                    );
                    expected += 1;
                }
                let index = row.leaf_index;
                let hash = merkle::leaf_hash(&row.leaf());
                if stored_leaves.get(&(0, index)) != Some(&hash) {
                    problems.push(Problem::Altered {
                        id: row.id.clone(),
                        index,
                    });
                    if mismatched.len() < MAX_REORDER_CANDIDATES {
                        mismatched.push((problems.len() - 1, row));
                    }
                }
                leaves.push(hash);
                expected = index + 1;
            }
            // An event that fails at its own index but matches the tree at another mismatching
            // index of this page was moved there: say so rather than "altered".
            let indices: Vec<u64> = mismatched.iter().map(|(_, r)| r.leaf_index).collect();
            for (pos, row) in mismatched.drain(..) {
                let claimed = indices.iter().copied().find(|&j| {
                    if j == row.leaf_index {
                        return false;
                    }
                    let mut moved = row.clone();
                    moved.leaf_index = j;
                    stored_leaves.get(&(0, j)) == Some(&merkle::leaf_hash(&moved.leaf()))
                });
                if let Some(claimed) = claimed {
                    problems[pos] = Problem::Reordered {
                        id: row.id,
                        index: row.leaf_index,
                        claimed: Some(claimed),
                    };
                }
            }
            progress(expected.min(size), size);
        }
        // Rows below the pruning boundary must be what the tree committed to (a pruned event put
        // back is harmless; a forged one is not).
        for row in below_boundary {
            let committed = leaves.get(row.leaf_index as usize);
            if committed != Some(&merkle::leaf_hash(&row.leaf())) {
                problems.push(Problem::Altered {
                    id: row.id,
                    index: row.leaf_index,
                });
            }
        }
        while expected < size {
            problems.push(Problem::Deleted { index: expected });
            expected += 1;
        }
        // Every signed tree head must verify and match the events.
        let public = self.public_key();
        let mut heads_checked = 0;
        for head in self.store.tree_heads().await? {
            let signed = tree_head_signed_bytes(head.tree_size, head.timestamp_ms, &head.root_hash);
            let sig_ok = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ED25519,
                &public,
            )
            .verify(&signed, &head.signature)
            .is_ok();
            let root_ok = head.tree_size as usize <= leaves.len()
                && merkle::root_of(&leaves[..head.tree_size as usize]) == head.root_hash;
            if !sig_ok || !root_ok {
                problems.push(Problem::TreeHead {
                    tree_size: head.tree_size,
                    signature_valid: sig_ok,
                });
            }
            heads_checked += 1;
        }
        Ok(VerifyReport {
            tree_size: size,
            heads_checked,
            problems,
        })
    }
}

impl AuditLog {
    /// Applies retention: deletes events older than `before_ms`, signing a tree head first so
    /// that the pruned events stay committed to by a signed head.
    pub async fn prune(&self, before_ms: i64) -> AuditResult<(u64, u64)> {
        self.tree_head().await?;
        Ok(self.store.prune(before_ms).await?)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Altered {
        id: String,
        index: u64,
    },
    Deleted {
        index: u64,
    },
    Inserted {
        id: String,
        index: u64,
    },
    Reordered {
        id: String,
        index: u64,
        claimed: Option<u64>,
    },
    TreeHead {
        tree_size: u64,
        signature_valid: bool,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Altered { id, index } => write!(f, "event {id} at index {index} was altered"),
            Self::Deleted { index } => write!(f, "the event at index {index} was deleted"),
            Self::Inserted { id, index } => write!(
                f,
                "event {id} at index {index} was inserted: the tree never committed to it"
            ),
            Self::Reordered { id, index, claimed } => match claimed {
                Some(c) => write!(
                    f,
                    "event {id} at index {index} was reordered (it was appended at index {c})"
                ),
                None => write!(f, "event {id} at index {index} was reordered or replaced"),
            },
            Self::TreeHead {
                tree_size,
                signature_valid,
            } => {
                if *signature_valid {
                    write!(
                        f,
                        "the signed tree head of size {tree_size} does not match the events"
                    )
                } else {
                    write!(
                        f,
                        "the signed tree head of size {tree_size} has an invalid signature"
                    )
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct VerifyReport {
    pub tree_size: u64,
    pub heads_checked: usize,
    pub problems: Vec<Problem>,
}

/// Base64 of a hash, as the API shows it.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}
