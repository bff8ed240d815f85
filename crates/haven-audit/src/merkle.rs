//! RFC 6962 §2.1 Merkle tree hashing and proofs over SHA-256.
//!
//! Leaves hash as `SHA-256(0x00 ‖ leaf)`, interior nodes as `SHA-256(0x01 ‖ left ‖ right)`, and a
//! tree of `n` leaves splits at the largest power of two smaller than `n`. Complete subtrees whose
//! start is aligned to their size are nodes `(level, index)`; every hash a proof needs is such a
//! node or a combination of O(log n) of them.
//!
//! Not every node is stored. The leaf hashes (level 0) are, and so is every node of level
//! [`STORED_FROM`] and above; a node in between covers at most `2^STORED_FROM` leaves and is
//! computed from their hashes when it is needed ([`plan_reads`], [`derive_into`]). That keeps an
//! append to about one stored node a leaf instead of two, while a proof reads at most two blocks
//! of `2^STORED_FROM` leaf hashes more.

pub type Hash = [u8; 32];

fn sha256(prefix: u8, parts: &[&[u8]]) -> Hash {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&[prefix]);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    sha256(0x00, &[leaf])
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(0x01, &[left, right])
}

/// The hash of the empty tree.
pub fn empty_root() -> Hash {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"");
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// A stored complete subtree: `level` = log2 of its size, `index` = its start / size.
pub type NodeKey = (u8, u64);

/// The lowest interior level that is stored: nodes of levels `1..STORED_FROM` are computed from
/// the leaf hashes of the aligned block of at most `2^STORED_FROM` leaves under them.
pub const STORED_FROM: u8 = 6;

/// Whether a node is stored (a leaf hash, or an interior node of level [`STORED_FROM`] or above).
pub fn is_stored(key: NodeKey) -> bool {
    key.0 == 0 || key.0 >= STORED_FROM
}

/// How to obtain a set of nodes: the stored ones to read as nodes, and the sorted, disjoint leaf
/// ranges `[start, end)` whose leaf hashes the others are computed from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub nodes: Vec<NodeKey>,
    pub leaves: Vec<(u64, u64)>,
}

/// The leaves under a node.
fn leaves_of((level, idx): NodeKey) -> (u64, u64) {
    (idx << level, (idx + 1) << level)
}

/// What to read for `keys` (see [`Reads`]).
pub fn plan_reads(keys: &[NodeKey]) -> Reads {
    let mut nodes = Vec::new();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for key in keys {
        if is_stored(*key) {
            nodes.push(*key);
        } else {
            ranges.push(leaves_of(*key));
        }
    }
    ranges.sort_unstable();
    let mut leaves: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match leaves.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => leaves.push((s, e)),
        }
    }
    nodes.sort_unstable();
    nodes.dedup();
    Reads { nodes, leaves }
}

/// Computes every key of `keys` that is not stored from the leaf hashes read for
/// `reads.leaves` (`hashes[i]` holds range `i`'s, in order) and adds it to `nodes`. A key whose
/// range came back incomplete is left out, so the hash that needs it is reported missing.
pub fn derive_into(
    nodes: &mut std::collections::HashMap<NodeKey, Hash>,
    keys: &[NodeKey],
    reads: &Reads,
    hashes: &[Vec<Hash>],
) {
    for key in keys.iter().filter(|k| !is_stored(**k)) {
        let (s, e) = leaves_of(*key);
        let Some(i) = reads.leaves.iter().position(|(a, b)| *a <= s && e <= *b) else {
            continue;
        };
        let (a, b) = reads.leaves[i];
        let Some(got) = hashes.get(i).filter(|h| h.len() as u64 == b - a) else {
            continue;
        };
        let from = (s - a) as usize;
        nodes.insert(*key, root_of(&got[from..from + (e - s) as usize]));
    }
}

/// The nodes needed for the hash of leaves `[start, end)`.
fn nodes_for_range(start: u64, end: u64, out: &mut Vec<NodeKey>) {
    let size = end - start;
    if size.is_power_of_two() && start.is_multiple_of(size) {
        out.push((size.trailing_zeros() as u8, start / size));
        return;
    }
    let k = split(size);
    nodes_for_range(start, start + k, out);
    nodes_for_range(start + k, end, out);
}

/// Computes subtree hashes from stored nodes.
pub trait Nodes {
    fn node(&self, key: NodeKey) -> Option<Hash>;
}

impl Nodes for std::collections::HashMap<NodeKey, Hash> {
    fn node(&self, key: NodeKey) -> Option<Hash> {
        self.get(&key).copied()
    }
}

/// MTH(D[start:end]) from stored nodes; `None` if a node is missing.
pub fn range_hash(nodes: &dyn Nodes, start: u64, end: u64) -> Option<Hash> {
    let size = end - start;
    if size == 0 {
        return Some(empty_root());
    }
    if size.is_power_of_two() && start.is_multiple_of(size) {
        return nodes.node((size.trailing_zeros() as u8, start / size));
    }
    let k = split(size);
    Some(node_hash(
        &range_hash(nodes, start, start + k)?,
        &range_hash(nodes, start + k, end)?,
    ))
}

/// The ranges whose hashes make up the inclusion proof of leaf `m` in a tree of `n` leaves,
/// bottom-up (RFC 6962 §2.1.1 PATH(m, D[n])).
pub fn inclusion_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    fn path(m: u64, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
        let size = end - start;
        if size <= 1 {
            return;
        }
        let k = split(size);
        if m < k {
            path(m, start, start + k, out);
            out.push((start + k, end));
        } else {
            path(m - k, start + k, end, out);
            out.push((start, start + k));
        }
    }
    if m < n {
        path(m, 0, n, &mut out);
    }
    out
}

/// The ranges whose hashes make up the consistency proof between sizes `m` and `n`, in order
/// (RFC 6962 §2.1.2 PROOF(m, D[n])). Empty when `m` is 0 or equal to `n`.
pub fn consistency_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    fn sub(m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<(u64, u64)>) {
        let size = end - start;
        if m == size {
            if !complete {
                out.push((start, end));
            }
            return;
        }
        let k = split(size);
        if m <= k {
            sub(m, start, start + k, complete, out);
            out.push((start + k, end));
        } else {
            sub(m - k, start + k, end, false, out);
            out.push((start, start + k));
        }
    }
    if m > 0 && m < n {
        sub(m, 0, n, true, &mut out);
    }
    out
}

/// Every node that the hashes of `ranges` need (stored or not: see [`plan_reads`]).
pub fn nodes_needed(ranges: &[(u64, u64)]) -> Vec<NodeKey> {
    let mut out = Vec::new();
    for (s, e) in ranges {
        if e > s {
            nodes_for_range(*s, *e, &mut out);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The complete subtrees on the right edge of a tree of `n` leaves, left to right: the nodes
/// that new leaves pair with.
pub fn frontier(n: u64) -> Vec<NodeKey> {
    let mut out = Vec::new();
    let mut start = 0u64;
    for level in (0..64u8).rev() {
        let size = 1u64 << level;
        if n & size != 0 {
            out.push((level, start / size));
            start += size;
        }
    }
    out
}

/// Appends leaf hashes to a tree of `n` leaves whose frontier is known; returns every new node
/// (the leaves themselves at level 0, and each completed parent).
pub fn append(n: u64, frontier: &dyn Nodes, leaves: &[Hash]) -> Option<Vec<(NodeKey, Hash)>> {
    let mut new_nodes: std::collections::HashMap<NodeKey, Hash> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(leaves.len() * 2);
    for (i, leaf) in leaves.iter().enumerate() {
        let index = n + i as u64;
        new_nodes.insert((0, index), *leaf);
        out.push(((0, index), *leaf));
        let mut level = 0u8;
        let mut idx = index;
        // While this node is a right child, its parent is now complete.
        while idx % 2 == 1 {
            let left_key = (level, idx - 1);
            let left = match new_nodes.get(&left_key) {
                Some(h) => *h,
                None => frontier.node(left_key)?,
            };
            let right = new_nodes.get(&(level, idx)).copied()?;
            let parent = node_hash(&left, &right);
            level += 1;
            idx /= 2;
            new_nodes.insert((level, idx), parent);
            out.push(((level, idx), parent));
        }
    }
    Some(out)
}

/// RFC 6962 root of a list of leaf hashes (used by `haven audit verify` and tests).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, m: u64, n: u64, path: &[Hash], root: &Hash) -> bool {
    if m >= n {
        return false;
    }
    let (mut fnode, mut snode) = (m, n - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return false;
        }
        if fnode % 2 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode % 2 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, proof: &[Hash], first: &Hash, second: &Hash) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && first == second;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if m.is_power_of_two() {
        path.insert(0, *first);
    }
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode % 2 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode % 2 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode % 2 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &fr == first && &sr == second
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// What a store does for `keys`: reads the stored ones and the leaf ranges, then derives.
    fn read(stored: &HashMap<NodeKey, Hash>, keys: &[NodeKey]) -> HashMap<NodeKey, Hash> {
        let reads = plan_reads(keys);
        let mut out: HashMap<NodeKey, Hash> = reads
            .nodes
            .iter()
            .filter_map(|k| stored.get(k).map(|h| (*k, *h)))
            .collect();
        let hashes: Vec<Vec<Hash>> = reads
            .leaves
            .iter()
            .map(|(s, e)| {
                (*s..*e)
                    .filter_map(|i| stored.get(&(0, i)).copied())
                    .collect()
            })
            .collect();
        derive_into(&mut out, keys, &reads, &hashes);
        out
    }

    /// Appends `n` leaves in uneven batches, as the writer does, keeping only the stored nodes.
    fn build(n: u64) -> (Vec<Hash>, HashMap<NodeKey, Hash>) {
        let leaves: Vec<Hash> = (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect();
        let mut nodes = HashMap::new();
        let mut done = 0u64;
        let mut batch = 1usize;
        while done < n {
            let end = (done as usize + batch).min(n as usize);
            let fr = read(&nodes, &frontier(done));
            let new = append(done, &fr, &leaves[done as usize..end])
                .unwrap_or_else(|| panic!("frontier incomplete at {done}"));
            nodes.extend(new.into_iter().filter(|(k, _)| is_stored(*k)));
            done = end as u64;
            batch = batch % 97 + 1;
        }
        (leaves, nodes)
    }

    fn hashes(nodes: &HashMap<NodeKey, Hash>, ranges: &[(u64, u64)]) -> Vec<Hash> {
        let known = read(nodes, &nodes_needed(ranges));
        ranges
            .iter()
            .map(|(s, e)| range_hash(&known, *s, *e).unwrap_or_else(|| panic!("missing node")))
            .collect()
    }

    #[test]
    fn only_leaves_and_the_upper_levels_are_stored() {
        let n = 1u64 << 12;
        let (_, nodes) = build(n);
        assert!(nodes.keys().all(|k| is_stored(*k)));
        let interior = nodes.keys().filter(|k| k.0 > 0).count() as u64;
        // Levels STORED_FROM..=12 of a complete tree of 2^12 leaves.
        assert_eq!(interior, (1u64 << (12 - STORED_FROM + 1)) - 1);
        assert_eq!(nodes.len() as u64, n + interior);
    }

    #[test]
    fn a_missing_leaf_hash_makes_a_derived_node_missing_not_wrong() {
        let (_, mut nodes) = build(200);
        nodes.remove(&(0, 70));
        let known = read(&nodes, &nodes_needed(&inclusion_ranges(71, 200)));
        assert_eq!(range_hash(&known, 0, 200), None);
        assert!(!known.contains_key(&(1, 35)));
    }

    #[test]
    fn reads_merge_the_leaf_ranges_of_unstored_nodes() {
        let reads = plan_reads(&[(0, 5), (1, 0), (2, 1), (STORED_FROM, 3), (1, 8), (1, 1)]);
        assert_eq!(reads.nodes, vec![(0, 5), (STORED_FROM, 3)]);
        assert_eq!(reads.leaves, vec![(0, 8), (16, 18)]);
    }

    #[test]
    fn roots_match_the_reference_definition() {
        // RFC 6962 test vector: the empty tree.
        assert_eq!(
            empty_root()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let (leaves, nodes) = build(300);
        for n in 1..=300u64 {
            assert_eq!(
                range_hash(&read(&nodes, &nodes_needed(&[(0, n)])), 0, n),
                Some(root_of(&leaves[..n as usize])),
                "root of {n}"
            );
        }
    }

    #[test]
    fn inclusion_and_consistency_proofs_verify_and_detect_tampering() {
        let (leaves, nodes) = build(150);
        for n in 1..=150u64 {
            let root = root_of(&leaves[..n as usize]);
            for m in 0..n {
                let path = hashes(&nodes, &inclusion_ranges(m, n));
                assert!(
                    verify_inclusion(&leaves[m as usize], m, n, &path, &root),
                    "inclusion {m} in {n}"
                );
                if m + 1 < n {
                    assert!(!verify_inclusion(
                        &leaves[m as usize + 1],
                        m,
                        n,
                        &path,
                        &root
                    ));
                }
            }
            for m in 1..=n {
                let first = root_of(&leaves[..m as usize]);
                let proof = hashes(&nodes, &consistency_ranges(m, n));
                assert!(
                    verify_consistency(m, n, &proof, &first, &root),
                    "consistency {m}→{n}"
                );
                if m < n {
                    let mut bad = proof.clone();
                    if let Some(h) = bad.last_mut() {
                        h[0] ^= 1;
                    }
                    assert!(!verify_consistency(m, n, &bad, &first, &root));
                }
            }
        }
    }

    #[test]
    fn frontier_is_the_binary_decomposition() {
        assert_eq!(frontier(0), vec![]);
        assert_eq!(frontier(1), vec![(0, 0)]);
        assert_eq!(frontier(6), vec![(2, 0), (1, 2)]);
        assert_eq!(frontier(7), vec![(2, 0), (1, 2), (0, 6)]);
    }
}
