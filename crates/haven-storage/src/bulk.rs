//! Set-based statements for group commits: one statement for many rows instead of one per
//! row. On SQLite every statement is a round trip to the connection's worker thread (and on
//! PostgreSQL one over the network), so a batch of 64 messages written row by row costs 64
//! thread hand-offs where this costs one or a few.
//!
//! Batches are cut into chunks whose sizes are powers of two, so that each statement shape
//! has at most a handful of texts and the prepared-statement caches stay small. The texts use
//! `$n` placeholders, which both backends accept, and only constructs both understand:
//! multi-row `VALUES`, `UPDATE … FROM (VALUES …)` (whose columns both name `column1`,
//! `column2`…), `IN (…)` and `RETURNING`. The texts are made only of constant SQL and
//! placeholder numbers, never of data, which is why callers may wrap them in `AssertSqlSafe`.

use std::ops::Range;

/// How a backend numbers parameters. SQLite gets anonymous `?`: its `$n` names are looked up
/// by a linear scan per parameter when binding, which is quadratic in a statement of
/// thousands; PostgreSQL needs `$n`. Both bind in order of appearance either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ph {
    Question,
    Dollar,
}

impl Ph {
    /// Placeholder number `n` (1-based) in this style.
    pub(crate) fn at(self, n: usize) -> String {
        match self {
            Ph::Question => "?".to_owned(),
            Ph::Dollar => format!("${n}"),
        }
    }
}

/// Rows per statement at most. The widest row (a message) has 29 columns: 256 rows stay far
/// below SQLite's 32,766 and PostgreSQL's 65,535 parameters.
pub(crate) const MAX_ROWS: usize = 256;

/// `0..n` cut into ranges whose lengths are powers of two, largest first, none above
/// [`MAX_ROWS`].
pub(crate) fn chunks(n: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let left = n - start;
        let size = if left >= MAX_ROWS {
            MAX_ROWS
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        out.push(start..start + size);
        start += size;
    }
    out
}

/// `($first, …), (…)`: `rows` tuples of `cols` placeholders numbered from `first`, each
/// followed by `tail` (constant columns such as `, 0`).
pub(crate) fn values(ph: Ph, rows: usize, cols: usize, first: usize, tail: &str) -> String {
    let mut s = String::with_capacity(rows * (cols * 5 + 4 + tail.len()));
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push_str(&ph.at(n));
            n += 1;
        }
        s.push_str(tail);
        s.push(')');
    }
    s
}

/// `$first, …`: `n` placeholders for an `IN (…)` list.
pub(crate) fn list(ph: Ph, n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| ph.at(i))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_and_cover_everything() {
        for n in 0..1200 {
            let c = chunks(n);
            assert_eq!(c.iter().map(ExactSizeIterator::len).sum::<usize>(), n);
            let mut next = 0;
            for r in &c {
                assert_eq!(r.start, next);
                assert!(
                    r.len().is_power_of_two() && r.len() <= MAX_ROWS,
                    "{n}: {c:?}"
                );
                next = r.end;
            }
            // At most one chunk per set bit, plus the full ones.
            assert!(c.len() <= n / MAX_ROWS + (n % MAX_ROWS).count_ones() as usize);
        }
        assert_eq!(chunks(13), vec![0..8, 8..12, 12..13]);
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            values(Ph::Dollar, 2, 3, 1, ""),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(values(Ph::Dollar, 1, 2, 4, ", 0"), "($4, $5, 0)");
        assert_eq!(list(Ph::Dollar, 3, 2), "$2, $3, $4");
        assert_eq!(values(Ph::Question, 1, 3, 9, ""), "(?, ?, ?)");
        assert_eq!(list(Ph::Question, 2, 5), "?, ?");
    }
}
