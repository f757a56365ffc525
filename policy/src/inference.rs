//! Inference control over exact releases: the gate's memory (R-GATE 6).
//!
//! Every released number is remembered as the set of the rows it sums, each row with its
//! subject (keyed hashes of the stored row and of its entity key, never the values), per
//! dataset, whoever asked. Rows, not subjects: a query that leaves out one visit of a
//! resident with many changes no subject's membership but one row's. A new release is judged
//! against all of them:
//!
//! - **Differencing**: a set that differs from an earlier one (or another of the same release)
//!   in rows of between 1 and k-1 subjects would let the two be subtracted to learn about
//!   those few subjects, however its group key is spelled.
//! - **Linear auditing**: each released number is taken as the sum of one unknown per row of
//!   its set (the same unknown in every release: conservative when two releases sum different
//!   things of a row). Rows that appear in exactly the same sets form an *atom*; a release is
//!   refused when, with every earlier one, it makes the total of an atom of rows of fewer than
//!   k subjects determinable (its indicator in the row space of the released sets), or the
//!   total of a set suppressed for having fewer than k subjects (a margin released after its
//!   cell).
//!
//! The row space is kept as the inverse of a weighted Gram matrix over a basis of the released
//! cells, `K = M_S D M_S^T` with a secret random weight per subject (D), over the field of
//! integers modulo the prime 2^61 - 1. A set U is determinable exactly when `w^T K^-1 w`
//! equals `sum(d_s, s in U)` for `w = M_S D 1_U` (the projection along D keeps it), which for
//! an atom is its leverage `d_a m_a^T K^-1 m_a = 1`. Adding a cell is a bordered inverse update
//! (O(r^2) for a basis of r cells); each atom's test reads only the cells it is in. Modular
//! arithmetic with random weights can err only by chance: a set wrongly called determinable
//! (a refusal too many) or, when the prime divides a minor of the cells or the weights hit a
//! root of a non-zero polynomial, a basis too small; both have probability about
//! (number of cells) / 2^61.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// One row of a released number: (the row, its subject), as keyed hashes. A row of a join
/// belongs to the subject of each side: one element each.
pub type Element = (u64, u64);

/// The rows a released number sums: sorted, without repeats.
pub type SubjectSet = Arc<[Element]>;

/// The prime 2^61 - 1.
const P: u64 = (1 << 61) - 1;
const NIL: u32 = u32::MAX;

fn reduce(x: u128) -> u64 {
    let folded = (x & u128::from(P)) + (x >> 61);
    let folded = (folded & u128::from(P)) + (folded >> 61);
    let v = folded as u64;
    if v >= P { v - P } else { v }
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

fn inverse(a: u64) -> u64 {
    // Fermat: a^(p-2).
    let (mut base, mut exp, mut out) = (a, P - 2, 1u64);
    while exp > 0 {
        if exp & 1 == 1 {
            out = mul(out, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    out
}

/// `sum(a_i * b_i)` modulo p, reduced once per 32 products.
fn dot(a: &[u64], b: &[u64]) -> u64 {
    let mut out = 0u64;
    for (x, y) in a.chunks(32).zip(b.chunks(32)) {
        let acc: u128 = x
            .iter()
            .zip(y)
            .map(|(x, y)| u128::from(*x) * u128::from(*y))
            .sum();
        out = add(out, reduce(acc));
    }
    out
}

/// `f` of every row, the rows split between two threads.
fn in_parallel<T: Send>(rows: &[Vec<u64>], f: impl Fn(&[u64]) -> T + Sync) -> Vec<T> {
    let half = rows.len() / 2;
    let (first, second) = rows.split_at(half);
    std::thread::scope(|scope| {
        let f = &f;
        let later = scope.spawn(move || second.iter().map(|r| f(r)).collect::<Vec<_>>());
        let mut out: Vec<T> = first.iter().map(|r| f(r)).collect();
        // Pure arithmetic does not panic; if it did, the panic goes on (no shorter answer).
        out.extend(
            later
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        );
        out
    })
}

/// A field element from 64 random bits, never 0.
fn nonzero(bits: u64) -> u64 {
    match bits & P {
        0 | P => 1,
        x => x,
    }
}

/// The 64-bit finalizer of SplitMix64: a bijection that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many subjects own the rows that are in exactly one of `a` and `b`, when that is
/// between 1 and `k - 1` (the merge stops at k of them).
pub fn differs_by_fewer_than(a: &[Element], b: &[Element], k: u64) -> Option<u64> {
    let mut owners: Vec<u64> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while (owners.len() as u64) < k {
        let owner = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
                continue;
            }
            (Some(x), Some(y)) if x < y => {
                i += 1;
                x.1
            }
            (Some(_), Some(y)) | (None, Some(y)) => {
                j += 1;
                y.1
            }
            (Some(x), None) => {
                i += 1;
                x.1
            }
            (None, None) => break,
        };
        if !owners.contains(&owner) {
            owners.push(owner);
        }
    }
    let d = owners.len() as u64;
    (d > 0 && d < k).then_some(d)
}

/// Hashes an element for the ledger's map of slots. Elements are keyed hashes already (an
/// attacker cannot choose them to collide), so a mix of their bits is enough; SipHash here
/// was a third of the time to add a release.
#[derive(Default)]
struct ElementHasher(u64);

impl Hasher for ElementHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = mix(self.0 ^ u64::from(*b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = mix(self.0.rotate_left(29) ^ v);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Slots = HashMap<Element, u32, BuildHasherDefault<ElementHasher>>;

/// A row's signature (the hash of the cells it is in) and its slot.
type AtomKey = ([u64; 2], u32);

/// A released cell as the ledger keeps it.
#[derive(Debug, Clone)]
struct Cell {
    /// The export that released it.
    origin: String,
    subjects: SubjectSet,
}

/// What a release would make determinable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disclosure {
    /// The total of `groups` atoms of fewer than k subjects (the smallest of `smallest`)
    /// becomes determinable from the cells of `origins`.
    Atoms {
        groups: u64,
        smallest: u64,
        origins: Vec<String>,
    },
    /// A set suppressed by `suppressed_in` for having fewer than k subjects becomes
    /// determinable from the cells of `origins`.
    Suppressed {
        suppressed_in: String,
        origins: Vec<String>,
    },
}

impl std::fmt::Display for Disclosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disclosure::Atoms {
                groups,
                smallest,
                origins,
            } => write!(
                f,
                "together with {} the released cells would determine the total of {groups} group(s) of fewer than k subjects (the smallest of {smallest})",
                names(origins)
            ),
            Disclosure::Suppressed {
                suppressed_in,
                origins,
            } => write!(
                f,
                "together with {} the released cells would determine a cell that {suppressed_in} suppressed",
                names(origins)
            ),
        }
    }
}

/// Export names for a reason: the first five, and how many more.
fn names(origins: &[String]) -> String {
    let mut shown: Vec<&str> = origins.iter().take(5).map(String::as_str).collect();
    let more = origins.len().saturating_sub(5);
    if shown.is_empty() {
        shown.push("nothing earlier");
    }
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Everything released over one dataset, as the audit needs it. Cloned to try a release and
/// kept only when the release is.
#[derive(Debug, Clone)]
pub struct Ledger {
    seed: u64,
    cells: Vec<Cell>,
    /// Sets that must never become determinable: cells suppressed for fewer than k subjects.
    protected: Vec<Cell>,
    slots: Slots,
    /// Per slot, its element.
    elements: Vec<Element>,
    /// Per subject slot: a hash of the cells it is in (two lanes), the atoms' key.
    signature: Vec<[u64; 2]>,
    /// The cell at each basis position.
    basis: Vec<u32>,
    /// `K^-1` over the basis, row by row (symmetric).
    inverse: Vec<Vec<u64>>,
    /// Per basis cell, `sum(d_e g_e)` over its elements, for a secret random probe g: the
    /// audit's random vector of the kernel.
    probes: Vec<u64>,
    /// Per basis cell, the slots of its elements.
    members: Vec<Arc<[u32]>>,
}

impl Ledger {
    /// An empty ledger whose weights derive from `seed`, a secret of the platform: an attacker
    /// who knew the weights could choose sets the modular test misjudges.
    pub fn new(seed: u64) -> Ledger {
        Ledger {
            seed,
            cells: Vec::new(),
            protected: Vec::new(),
            slots: Slots::default(),
            elements: Vec::new(),
            signature: Vec::new(),
            basis: Vec::new(),
            inverse: Vec::new(),
            probes: Vec::new(),
            members: Vec::new(),
        }
    }

    /// The cells released so far.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// The rank of the released cells.
    pub fn rank(&self) -> usize {
        self.basis.len()
    }

    /// An element's secret weight, never 0.
    fn weight(&self, e: Element) -> u64 {
        nonzero(mix(e.0 ^ mix(e.1 ^ self.seed)))
    }

    /// An element's entry in the secret random probe vector g, never 0.
    fn probe(&self, e: Element) -> u64 {
        nonzero(mix(e.1 ^ mix(e.0 ^ self.seed ^ 0x7072_6f62_6521)))
    }

    fn slot(&mut self, e: Element) -> u32 {
        let next = self.slots.len() as u32;
        *self.slots.entry(e).or_insert_with(|| {
            self.signature.push([0, 0]);
            self.elements.push(e);
            next
        })
    }

    /// The basis positions of the cells each of these slots is in: one pass over the basis
    /// cells' members (needed only to confirm and name a disclosure).
    fn positions_of(&self, wanted: &std::collections::BTreeSet<u32>) -> HashMap<u32, Vec<u32>> {
        let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
        if wanted.is_empty() {
            return out;
        }
        for (pos, members) in self.members.iter().enumerate() {
            for slot in members.iter() {
                if wanted.contains(slot) {
                    out.entry(*slot).or_default().push(pos as u32);
                }
            }
        }
        out
    }

    /// The first earlier cell whose subjects differ from `subjects` by fewer than `k` (but
    /// some): its export and the difference.
    pub fn close_to(&self, subjects: &[Element], k: u64) -> Option<(&str, u64)> {
        self.cells.iter().find_map(|c| {
            differs_by_fewer_than(&c.subjects, subjects, k).map(|d| (c.origin.as_str(), d))
        })
    }

    /// Records a released cell.
    pub fn add_released(&mut self, origin: &str, subjects: SubjectSet) {
        self.add_all_released(origin, std::slice::from_ref(&subjects));
    }

    /// Records the released cells of one release. Their overlaps with the cells remembered
    /// before are found in one pass over those cells' members (not row by row through every
    /// row's cells: that is a cache miss per membership).
    pub fn add_all_released(&mut self, origin: &str, sets: &[SubjectSet]) {
        let before = self.basis.len();
        // The rows' slots: looked up on two threads (a cache miss each), then the new rows
        // given theirs.
        let lookup = |part: &[SubjectSet]| -> Vec<Vec<u32>> {
            part.iter()
                .map(|set| {
                    set.iter()
                        .map(|e| self.slots.get(e).copied().unwrap_or(NIL))
                        .collect()
                })
                .collect()
        };
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let mut seen = 0usize;
        let half = sets
            .iter()
            .position(|s| {
                seen += s.len();
                seen * 2 >= total
            })
            .map_or(sets.len(), |i| i + 1);
        let mut slots: Vec<Vec<u32>> = std::thread::scope(|scope| {
            let late = scope.spawn(|| lookup(&sets[half..]));
            let mut early = lookup(&sets[..half]);
            early.extend(late.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            early
        });
        for (set, cell) in sets.iter().zip(&mut slots) {
            for (e, slot) in set.iter().zip(cell.iter_mut()) {
                if *slot == NIL {
                    *slot = self.slot(*e);
                }
            }
        }
        // Per slot, the new cells holding it (a list through `holding`), and its weight.
        let mut first = vec![NIL; self.slots.len()];
        let mut weight = vec![0u64; self.slots.len()];
        let mut holding: Vec<(u32, u32)> = Vec::new();
        for (j, (set, cell)) in sets.iter().zip(&slots).enumerate() {
            for (e, slot) in set.iter().zip(cell) {
                weight[*slot as usize] = self.weight(*e);
                holding.push((j as u32, first[*slot as usize]));
                first[*slot as usize] = (holding.len() - 1) as u32;
            }
        }
        // The overlaps, basis cell by basis cell (half of them on a second thread).
        let m = sets.len();
        let columns = |cells: &[Arc<[u32]>]| -> Vec<u64> {
            let mut out = vec![0u64; cells.len() * m];
            for (column, members) in out.chunks_mut(m.max(1)).zip(cells) {
                for slot in members.iter() {
                    let mut at = first[*slot as usize];
                    while at != NIL {
                        let (j, next) = holding[at as usize];
                        let b = &mut column[j as usize];
                        *b = add(*b, weight[*slot as usize]);
                        at = next;
                    }
                }
            }
            out
        };
        let (early, late) = self.members[..before].split_at(before / 2);
        let (early, late) = std::thread::scope(|scope| {
            let late = scope.spawn(|| columns(late));
            let early = columns(early);
            (
                early,
                late.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        let mut overlaps = vec![vec![0u64; before]; m];
        for (i, column) in early
            .chunks(m.max(1))
            .chain(late.chunks(m.max(1)))
            .enumerate()
        {
            for (b, v) in overlaps.iter_mut().zip(column) {
                b[i] = *v;
            }
        }
        // Each new cell in turn: its overlaps with the cells before the release, then with the
        // cells of this release already in the basis. The inverse grows by a rank-one term per
        // independent cell, kept aside and added to the matrix once at the end.
        // `K^-1` times every new cell's overlaps with the cells before, in one pass over the
        // matrix (row by row against all of them: the matrix is read once, not once a cell).
        let product: Vec<Vec<u64>> = in_parallel(&self.inverse, |row| {
            overlaps.iter().map(|b| dot(row, b)).collect()
        });
        let mut position: Vec<Option<u32>> = vec![None; sets.len()];
        let mut pending: Vec<(Vec<u64>, u64)> = Vec::new();
        for (j, ((set, cell), mut b)) in sets.iter().zip(&slots).zip(overlaps).enumerate() {
            b.resize(self.basis.len(), 0);
            for slot in cell {
                let mut at = first[*slot as usize];
                while at != NIL {
                    let (other, next) = holding[at as usize];
                    if (other as usize) < j
                        && let Some(p) = position[other as usize]
                    {
                        let v = &mut b[p as usize];
                        *v = add(*v, weight[*slot as usize]);
                    }
                    at = next;
                }
            }
            let u = product.iter().map(|row| row[j]).collect();
            position[j] = self.add_with(origin, set.clone(), cell, b, u, &mut pending);
        }
        self.materialize(pending);
    }

    /// Adds one released cell given its slots, its weighted overlaps `b` with every basis cell
    /// and `u`, the matrix `inverse` times the part of `b` it covers; returns its basis
    /// position when it is independent of them. The inverse over the basis is `inverse`
    /// (bordered by zeros) plus `c w w^T` for every `(w, c)` in `pending`.
    fn add_with(
        &mut self,
        origin: &str,
        subjects: SubjectSet,
        slots: &[u32],
        b: Vec<u64>,
        mut u: Vec<u64>,
        pending: &mut Vec<(Vec<u64>, u64)>,
    ) -> Option<u32> {
        let index = self.cells.len() as u32;
        let (mut kappa, mut probe) = (0u64, 0u64);
        for e in subjects.iter() {
            let d = self.weight(*e);
            kappa = add(kappa, d);
            probe = add(probe, mul(d, self.probe(*e)));
        }
        let mut joined = None;
        u.resize(b.len(), 0);
        for (w, c) in pending.iter() {
            let f = mul(*c, dot(w, &b));
            if f != 0 {
                for (ui, wi) in u.iter_mut().zip(w) {
                    *ui = add(*ui, mul(f, *wi));
                }
            }
        }
        let sigma = sub(kappa, dot(&b, &u));
        if sigma != 0 {
            // Bordered inverse: [[A + u u^T/s, -u/s], [-u^T/s, 1/s]], which is A bordered by
            // zeros plus w w^T / s for w = (u, -1).
            let mut w = u;
            w.push(P - 1);
            pending.push((w, inverse(sigma)));
            self.probes.push(probe);
            self.members.push(slots.into());
            let pos = self.basis.len() as u32;
            joined = Some(pos);
            self.basis.push(index);
        }
        let lanes = [
            mix(self.seed ^ mix(u64::from(index) ^ 0x5eed_0001)),
            mix(self.seed ^ mix(u64::from(index) ^ 0x5eed_0002)),
        ];
        for slot in slots {
            let sig = &mut self.signature[*slot as usize];
            sig[0] = sig[0].wrapping_add(lanes[0]);
            sig[1] = sig[1].wrapping_add(lanes[1]);
        }
        self.cells.push(Cell {
            origin: origin.to_string(),
            subjects,
        });
        joined
    }

    /// Adds the pending rank-one terms to the inverse: entry (i, j) gains
    /// `sum(c_t w_t[i] w_t[j])`, one dot product per entry of the upper triangle (the matrix is
    /// symmetric), rows shared between two threads.
    fn materialize(&mut self, pending: Vec<(Vec<u64>, u64)>) {
        if pending.is_empty() {
            return;
        }
        let n = self.basis.len();
        let old = std::mem::take(&mut self.inverse);
        // Column j of the terms: w_t[j] for every t.
        let terms: Vec<Vec<u64>> = (0..n)
            .map(|j| {
                pending
                    .iter()
                    .map(|(w, _)| w.get(j).copied().unwrap_or(0))
                    .collect()
            })
            .collect();
        let upper = |i: usize| -> Vec<u64> {
            let scaled: Vec<u64> = pending
                .iter()
                .map(|(w, c)| w.get(i).map_or(0, |x| mul(*c, *x)))
                .collect();
            let base = old.get(i);
            (i..n)
                .map(|j| {
                    let was = base.and_then(|row| row.get(j)).copied().unwrap_or(0);
                    add(was, dot(&scaled, &terms[j]))
                })
                .collect()
        };
        // Rows alternate between the threads: the upper triangle's rows shrink.
        let (even, odd) = std::thread::scope(|scope| {
            let odd = scope.spawn(|| (1..n).step_by(2).map(upper).collect::<Vec<_>>());
            let even: Vec<Vec<u64>> = (0..n).step_by(2).map(upper).collect();
            (
                even,
                odd.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        let (mut even, mut odd) = (even.into_iter(), odd.into_iter());
        let upper: Vec<Vec<u64>> = (0..n)
            .map(|i| if i % 2 == 0 { even.next() } else { odd.next() }.unwrap_or_default())
            .collect();
        self.inverse = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        if j >= i {
                            upper[i][j - i]
                        } else {
                            upper[j][i - j]
                        }
                    })
                    .collect()
            })
            .collect();
    }

    /// Records a set suppressed for having fewer than k subjects: no later release may make
    /// its total determinable.
    pub fn add_protected(&mut self, origin: &str, subjects: SubjectSet) {
        self.protected.push(Cell {
            origin: origin.to_string(),
            subjects,
        });
    }

    /// `w^T K^-1 w` for a sparse `w` (basis position, value).
    fn form(&self, w: &[(u32, u64)]) -> u64 {
        let mut q = 0u64;
        for (i, wi) in w {
            let row = &self.inverse[*i as usize];
            let mut acc = 0u64;
            for (j, wj) in w {
                acc = add(acc, mul(row[*j as usize], *wj));
            }
            q = add(q, mul(*wi, acc));
        }
        q
    }

    /// The exports whose cells determine the set behind `w`: the basis cells with a non-zero
    /// coefficient in `K^-1 w`, the combination that gives its total.
    fn origins(&self, w: &[(u32, u64)]) -> Vec<String> {
        let mut out: Vec<String> = self
            .inverse
            .iter()
            .enumerate()
            .filter(|(_, row)| {
                w.iter()
                    .fold(0u64, |acc, (j, wj)| add(acc, mul(row[*j as usize], *wj)))
                    != 0
            })
            .map(|(i, _)| self.cells[self.basis[i] as usize].origin.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What the cells recorded so far make determinable that must not be, if anything: an
    /// atom of fewer than `k` subjects, or a protected set.
    pub fn disclosure(&self, k: u64) -> Option<Disclosure> {
        self.disclosed(Some(k))
    }

    /// Whether the cells recorded so far make a protected set determinable (atoms are not
    /// tested): the audit of a ledger that holds only some measures.
    pub fn protected_disclosure(&self) -> Option<Disclosure> {
        if self.protected.is_empty() {
            return None;
        }
        self.disclosed(None)
    }

    fn disclosed(&self, k: Option<u64>) -> Option<Disclosure> {
        // Atoms: rows by the sets they are in, with their subjects (up to k), total weight
        // and one of them (every member is in the same sets).
        // A random vector of the kernel of the released cells: x = D (g - pi(g)), where
        // pi(g) = y^T M with y = K^-1 M D g. A set's total is determinable exactly when every
        // kernel vector sums to 0 over it; a random one does so by chance with probability
        // 1/p (a refusal too many, never one too few).
        let y: Vec<u64> = in_parallel(&self.inverse, |row| dot(row, &self.probes));
        // pi(g) per slot, cell by cell.
        let part = |cells: &[Arc<[u32]>], y: &[u64]| -> Vec<u64> {
            let mut pi = vec![0u64; self.slots.len()];
            for (cell, yi) in cells.iter().zip(y) {
                for slot in cell.iter() {
                    let p = &mut pi[*slot as usize];
                    *p = add(*p, *yi);
                }
            }
            pi
        };
        let half = self.members.len() / 2;
        let pi: Vec<u64> = std::thread::scope(|scope| {
            let late = scope.spawn(|| part(&self.members[half..], &y[half..]));
            let early = part(&self.members[..half], &y[..half]);
            let late = late.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            early.iter().zip(&late).map(|(a, b)| add(*a, *b)).collect()
        });
        let kernel = |e: Element, slot: Option<&u32>| -> u64 {
            let pi = slot.map_or(0, |s| pi[*s as usize]);
            mul(self.weight(e), sub(self.probe(e), pi))
        };
        if let Some(k) = k {
            // Atoms: rows by the sets they are in (sorted by their cells' hash, in two halves by
            // that hash's top bit, one per thread). An atom is a candidate when the kernel vector
            // sums to 0 over it (every atom whose total is determinable; others by chance 1/p) and
            // its rows belong to fewer than k subjects: (subjects, total weight, one of its slots).
            let (mut low, mut high): (Vec<AtomKey>, Vec<AtomKey>) = (Vec::new(), Vec::new());
            for (slot, sig) in self.signature.iter().enumerate() {
                // In some released cell (then in some basis cell too).
                if *sig != [0, 0] {
                    let half = if sig[0] >> 63 == 0 {
                        &mut low
                    } else {
                        &mut high
                    };
                    half.push((*sig, slot as u32));
                }
            }
            let scan = |mut half: Vec<AtomKey>| -> Vec<(u64, u64, u32)> {
                half.sort_unstable_by_key(|a| a.0);
                let mut found = Vec::new();
                for atom in half.chunk_by(|a, b| a.0 == b.0) {
                    let x = atom.iter().fold(0u64, |acc, (_, slot)| {
                        add(acc, kernel(self.elements[*slot as usize], Some(slot)))
                    });
                    if x != 0 {
                        continue;
                    }
                    let mut owners: Vec<u64> = Vec::new();
                    for (_, slot) in atom {
                        let subject = self.elements[*slot as usize].1;
                        if (owners.len() as u64) < k && !owners.contains(&subject) {
                            owners.push(subject);
                        }
                    }
                    let count = owners.len() as u64;
                    if count >= k {
                        continue;
                    }
                    let weight = atom.iter().fold(0u64, |acc, (_, slot)| {
                        add(acc, self.weight(self.elements[*slot as usize]))
                    });
                    found.push((count, weight, atom[0].1));
                }
                found
            };
            let candidates: Vec<(u64, u64, u32)> = std::thread::scope(|scope| {
                let high = scope.spawn(|| scan(high));
                let mut found = scan(low);
                found.extend(high.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
                found
            });
            let (mut groups, mut smallest) = (0u64, u64::MAX);
            let mut origins: Vec<String> = Vec::new();
            let wanted = candidates.iter().map(|c| c.2).collect();
            let positions = self.positions_of(&wanted);
            for (count, weight, slot) in candidates {
                let w: Vec<(u32, u64)> = positions
                    .get(&slot)
                    .into_iter()
                    .flatten()
                    .map(|p| (*p, weight))
                    .collect();
                // Confirmed by the leverage: w = d_a m_a and w^T K^-1 w = d_a.
                if !w.is_empty() && self.form(&w) == weight {
                    groups += 1;
                    smallest = smallest.min(count);
                    origins.extend(self.origins(&w));
                }
            }
            if groups > 0 {
                origins.sort();
                origins.dedup();
                return Some(Disclosure::Atoms {
                    groups,
                    smallest,
                    origins,
                });
            }
        }
        for p in &self.protected {
            let x = p
                .subjects
                .iter()
                .fold(0u64, |acc, e| add(acc, kernel(*e, self.slots.get(e))));
            if x != 0 {
                continue;
            }
            let wanted = p
                .subjects
                .iter()
                .filter_map(|e| self.slots.get(e).copied())
                .collect();
            let positions = self.positions_of(&wanted);
            let mut w: HashMap<u32, u64> = HashMap::new();
            let mut total = 0u64;
            for s in p.subjects.iter() {
                let d = self.weight(*s);
                total = add(total, d);
                if let Some(slot) = self.slots.get(s) {
                    for pos in positions.get(slot).into_iter().flatten() {
                        let e = w.entry(*pos).or_insert(0);
                        *e = add(*e, d);
                    }
                }
            }
            let w: Vec<(u32, u64)> = w.into_iter().collect();
            if !w.is_empty() && self.form(&w) == total {
                return Some(Disclosure::Suppressed {
                    suppressed_in: p.origin.clone(),
                    origins: self.origins(&w),
                });
            }
        }
        None
    }
}

#[cfg(test)]
fn put(out: &mut Vec<u8>, v: u64) {
    let mut bytes = [0u8; 10];
    let n = put_into(&mut bytes, v);
    out.extend_from_slice(&bytes[..n]);
}

/// Writes `v` as a LEB128 varint at the start of `out`; answers how many bytes it took (the
/// bytes after them are written too, and mean nothing). Made without a branch per byte: a
/// release's sets are hundreds of millions of varints, most of them of seven bytes or more
/// (row names' gaps and subjects' names are keyed hashes).
#[inline]
fn put_into(out: &mut [u8; 10], v: u64) -> usize {
    const GROUP: u64 = 0x7f;
    let n = put_len(v);
    // The low 56 bits, seven to a byte.
    let mut low = 0u64;
    for g in 0..8 {
        low |= (v >> (7 * g) & GROUP) << (8 * g);
    }
    // Every byte but the last says that more follow.
    let more = n - 1;
    low |= match more {
        8.. => 0x8080_8080_8080_8080,
        m => 0x8080_8080_8080_8080 & ((1u64 << (8 * m)) - 1),
    };
    out[..8].copy_from_slice(&low.to_le_bytes());
    out[8] = (v >> 56) as u8 & GROUP as u8 | if more > 8 { 0x80 } else { 0 };
    out[9] = (v >> 63) as u8;
    n
}

/// How many bytes [`put_into`] writes for `v`.
#[inline]
fn put_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes on their way to a sink in pieces of about `piece` bytes ([`PIECE`]: a release's sets
/// run to hundreds of megabytes, and none of it need be held whole), or kept whole in `buf`
/// when nothing should be handed on before the end. The bytes made are `buf[..used]`; `buf`
/// is longer, so that a varint is written in place (a release's sets run to hundreds of
/// millions of them).
struct Pieces<'a, E> {
    buf: Vec<u8>,
    used: usize,
    piece: usize,
    sink: &'a mut dyn FnMut(&[u8]) -> Result<(), E>,
}

/// The size of the pieces [`Pieces`] hands on.
const PIECE: usize = 1 << 20;

impl<E> Pieces<'_, E> {
    #[inline]
    fn put(&mut self, v: u64) -> Result<(), E> {
        self.room(10);
        let at: &mut [u8; 10] = (&mut self.buf[self.used..self.used + 10])
            .try_into()
            .expect("room for a varint");
        self.used += put_into(at, v);
        if self.used >= self.piece {
            self.flush()?;
        }
        Ok(())
    }

    fn bytes(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.room(bytes.len());
        self.buf[self.used..self.used + bytes.len()].copy_from_slice(bytes);
        self.used += bytes.len();
        if self.used >= self.piece {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes `buf` hold at least `n` bytes past those made.
    #[inline]
    fn room(&mut self, n: usize) {
        let want = self.used + n;
        if self.buf.len() < want {
            self.buf.resize(want.max(2 * self.buf.len()), 0);
        }
    }

    fn flush(&mut self) -> Result<(), E> {
        if self.used > 0 {
            (self.sink)(&self.buf[..self.used])?;
            self.used = 0;
        }
        Ok(())
    }

    /// The bytes made, whole (when nothing was handed on).
    fn into_made(mut self) -> Vec<u8> {
        self.buf.truncate(self.used);
        self.buf
    }
}

/// How many bytes [`write_sets`] writes for `rows`.
fn sets_len(rows: &[Vec<SubjectSet>]) -> usize {
    let mut n = put_len(rows.len() as u64);
    for sets in rows {
        n += put_len(sets.len() as u64);
        for set in sets {
            n += put_len(set.len() as u64);
            let mut last = 0u64;
            for (row, subject) in set.iter() {
                n += put_len(row - last) + put_len(*subject);
                last = *row;
            }
        }
    }
    n
}

fn write_sets<E>(rows: &[Vec<SubjectSet>], out: &mut Pieces<'_, E>) -> Result<(), E> {
    out.put(rows.len() as u64)?;
    for sets in rows {
        out.put(sets.len() as u64)?;
        for set in sets {
            out.put(set.len() as u64)?;
            let mut last = 0u64;
            for (row, subject) in set.iter() {
                out.put(row - last)?;
                out.put(*subject)?;
                last = *row;
            }
        }
    }
    Ok(())
}

/// All of what `write` gives its [`Pieces`], as one buffer of `len` bytes (made in place:
/// never handed on, never copied).
fn collect(len: usize, write: impl FnOnce(&mut Pieces<'_, ()>) -> Result<(), ()>) -> Vec<u8> {
    let mut sink = |_: &[u8]| Ok(());
    let mut pieces = Pieces {
        // Room for the last varint in place.
        buf: vec![0; len + 10],
        used: 0,
        piece: usize::MAX,
        sink: &mut sink,
    };
    write(&mut pieces).expect("nothing is handed on");
    pieces.into_made()
}

/// Result rows' sets as bytes: the number of result rows, then per row its number of sets and
/// each set as its length and, per element, the delta from the previous row hash and the
/// subject, all as LEB128 varints.
pub fn encode_sets(rows: &[Vec<SubjectSet>]) -> Vec<u8> {
    collect(sets_len(rows), |out| write_sets(rows, out))
}

/// How many bytes [`write_rows`] writes.
fn rows_len(rows: &[Vec<SubjectSet>], values: &[u64]) -> usize {
    sets_len(rows) + values.iter().map(|v| put_len(*v)).sum::<usize>()
}

fn write_rows<E>(
    rows: &[Vec<SubjectSet>],
    values: &[u64],
    out: &mut Pieces<'_, E>,
) -> Result<(), E> {
    write_sets(rows, out)?;
    for v in values {
        out.put(*v)?;
    }
    Ok(())
}

/// Result rows' sets and, per row, which of them are a sum's rows (bit i: set i): the sets
/// as [`encode_sets`] writes them, then one varint per row.
pub fn encode_rows(rows: &[Vec<SubjectSet>], values: &[u64]) -> Vec<u8> {
    collect(rows_len(rows, values), |out| write_rows(rows, values, out))
}

/// What [`encode_rows`] wrote, or [`encode_sets`] alone (every set then marked a sum's);
/// `None` for bytes neither wrote.
pub fn decode_rows(bytes: &[u8]) -> Option<(Vec<Vec<SubjectSet>>, Vec<u64>)> {
    let (rows, mut at) = decode_sets_from(bytes)?;
    if at == bytes.len() {
        // Written before sums were told apart: every set is taken for a sum's (the memory of
        // sums then refuses more, never less).
        let n = rows.len();
        return Some((rows, vec![u64::MAX; n]));
    }
    let mut values = Vec::with_capacity(rows.len());
    for _ in 0..rows.len() {
        values.push(varint(bytes, &mut at)?);
    }
    (at == bytes.len()).then_some((rows, values))
}

/// Marks a result's sets kept per dataset ([`encode_by_dataset`]).
const BY_DATASET: &[u8] = b"TGSD1";

/// One dataset's part of a result's sets: per result row, its sets over that dataset's rows,
/// and which of them are a sum's rows (bit i: set i).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetRows {
    pub sets: Vec<Vec<SubjectSet>>,
    pub values: Vec<u64>,
}

/// A result's sets per dataset it read: a marker, the number of datasets, then per dataset
/// its id (length and UTF-8 bytes) and its rows as [`encode_rows`] writes them (length and
/// bytes). Each dataset's memory is given only the rows stored in it.
pub fn encode_by_dataset<R: std::borrow::Borrow<DatasetRows>>(parts: &[(String, R)]) -> Vec<u8> {
    let len = BY_DATASET.len()
        + put_len(parts.len() as u64)
        + parts
            .iter()
            .map(|(dataset, rows)| {
                let body = rows_len(&rows.borrow().sets, &rows.borrow().values);
                put_len(dataset.len() as u64) + dataset.len() + put_len(body as u64) + body
            })
            .sum::<usize>();
    collect(len, |out| by_dataset(parts, out))
}

/// What [`encode_by_dataset`] returns, given to `sink` in pieces of about a megabyte as it is
/// made (never held whole); the first error of `sink` stops it.
pub fn write_by_dataset<R: std::borrow::Borrow<DatasetRows>, E>(
    parts: &[(String, R)],
    sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut out = Pieces {
        buf: vec![0; PIECE + 32],
        used: 0,
        piece: PIECE,
        sink,
    };
    by_dataset(parts, &mut out)?;
    out.flush()
}

fn by_dataset<R: std::borrow::Borrow<DatasetRows>, E>(
    parts: &[(String, R)],
    out: &mut Pieces<'_, E>,
) -> Result<(), E> {
    out.bytes(BY_DATASET)?;
    out.put(parts.len() as u64)?;
    for (dataset, rows) in parts {
        let rows = rows.borrow();
        out.put(dataset.len() as u64)?;
        out.bytes(dataset.as_bytes())?;
        // The body's length first, counted (not encoded twice, not held).
        out.put(rows_len(&rows.sets, &rows.values) as u64)?;
        write_rows(&rows.sets, &rows.values, out)?;
    }
    Ok(())
}

/// Whether `bytes` are a result's sets kept per dataset (not sets written before: a join's
/// rows were then named otherwise, and a row read twice was one element).
pub fn kept_by_dataset(bytes: &[u8]) -> bool {
    bytes.starts_with(BY_DATASET)
}

/// The sets [`encode_by_dataset`] wrote, in the order of `datasets`; `None` for bytes it did
/// not write, or when a dataset of `datasets` is missing.
pub fn decode_by_dataset(bytes: &[u8], datasets: &[String]) -> Option<Vec<DatasetRows>> {
    let rest = bytes.strip_prefix(BY_DATASET)?;
    let mut at = 0usize;
    let n = varint(rest, &mut at)?;
    let mut found: Vec<(String, DatasetRows)> = Vec::new();
    for _ in 0..n {
        let len = usize::try_from(varint(rest, &mut at)?).ok()?;
        let name = std::str::from_utf8(rest.get(at..at.checked_add(len)?)?).ok()?;
        at += len;
        let len = usize::try_from(varint(rest, &mut at)?).ok()?;
        let (sets, values) = decode_rows(rest.get(at..at.checked_add(len)?)?)?;
        at += len;
        found.push((name.to_string(), DatasetRows { sets, values }));
    }
    if at != rest.len() {
        return None;
    }
    datasets
        .iter()
        .map(|d| found.iter().find(|(n, _)| n == d).map(|(_, r)| r.clone()))
        .collect()
}

fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The rows [`encode_sets`] wrote; `None` for bytes it did not write.
pub fn decode_sets(bytes: &[u8]) -> Option<Vec<Vec<SubjectSet>>> {
    let (rows, at) = decode_sets_from(bytes)?;
    (at == bytes.len()).then_some(rows)
}

/// The rows [`encode_sets`] wrote at the start of `bytes`, and where they end.
fn decode_sets_from(bytes: &[u8]) -> Option<(Vec<Vec<SubjectSet>>, usize)> {
    let mut at = 0usize;
    let mut get = || varint(bytes, &mut at);
    let rows = get()?;
    let mut out = Vec::with_capacity(rows.min(1 << 20) as usize);
    for _ in 0..rows {
        let n = get()?;
        let mut sets = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            let len = get()?;
            let mut set: Vec<Element> = Vec::with_capacity(len.min(1 << 24) as usize);
            let mut last = 0u64;
            for _ in 0..len {
                let row = last.checked_add(get()?)?;
                let e = (row, get()?);
                if set.last().is_some_and(|p| *p >= e) {
                    return None;
                }
                set.push(e);
                last = row;
            }
            sets.push(set.into());
        }
        out.push(sets);
    }
    Some((out, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of their own subjects each.
    fn set(members: impl IntoIterator<Item = u64>) -> SubjectSet {
        let mut v: Vec<Element> = members.into_iter().map(|s| (s, s)).collect();
        v.sort_unstable();
        v.dedup();
        v.into()
    }

    #[test]
    fn a_result_s_sets_are_read_back_per_dataset_and_nothing_else_is() {
        let a = DatasetRows {
            sets: vec![vec![set([1, 2, 3])], vec![]],
            values: vec![1, 0],
        };
        let b = DatasetRows {
            sets: vec![vec![set([7])], vec![set([8, 9])]],
            values: vec![0, 1],
        };
        let bytes = encode_by_dataset(&[("ds_a".into(), a.clone()), ("ds_b".into(), b.clone())]);
        let names = ["ds_b".to_string(), "ds_a".to_string()];
        assert_eq!(decode_by_dataset(&bytes, &names), Some(vec![b, a.clone()]));
        assert_eq!(decode_by_dataset(&bytes, &["ds_c".to_string()]), None);
        assert_eq!(decode_by_dataset(&bytes[..bytes.len() - 1], &names), None);
        assert!(kept_by_dataset(&bytes));
        let old = encode_rows(&a.sets, &a.values);
        assert!(!kept_by_dataset(&old));
        assert_eq!(decode_by_dataset(&old, &names), None);
    }

    #[test]
    fn a_result_s_sets_stream_in_pieces_that_make_up_exactly_the_encoding() {
        // Large enough to need several pieces; subjects of every varint length.
        let big = DatasetRows {
            sets: (0..3)
                .map(|r| {
                    vec![
                        (0..200_000u64)
                            .map(|i| (i * 7 + r, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                            .collect::<Vec<Element>>()
                            .into(),
                        set([r]),
                    ]
                })
                .collect(),
            values: vec![1, 2, u64::MAX],
        };
        let parts = [
            ("ds_big".to_string(), &big),
            ("ds_none".to_string(), &DatasetRows::default()),
        ];
        let whole = encode_by_dataset(&parts);
        let mut streamed = Vec::new();
        let mut pieces = 0;
        write_by_dataset(&parts, &mut |piece: &[u8]| -> Result<(), ()> {
            // About a megabyte each (a varint or a short dataset id past the mark).
            assert!(piece.len() < PIECE + 32);
            pieces += 1;
            streamed.extend_from_slice(piece);
            Ok(())
        })
        .unwrap();
        assert!(pieces > 3, "{pieces}");
        assert_eq!(streamed, whole);
        assert_eq!(
            rows_len(&big.sets, &big.values),
            encode_rows(&big.sets, &big.values).len()
        );
        let names = ["ds_big".to_string(), "ds_none".to_string()];
        assert_eq!(
            decode_by_dataset(&whole, &names),
            Some(vec![big.clone(), DatasetRows::default()])
        );
        // The sink's first error stops the writing.
        let mut calls = 0;
        let stopped = write_by_dataset(&parts, &mut |_: &[u8]| {
            calls += 1;
            Err("disk full")
        });
        assert_eq!((stopped, calls), (Err("disk full"), 1));
    }

    #[test]
    fn a_varint_is_written_as_leb128_writes_it_a_byte_at_a_time() {
        fn leb128(mut v: u64) -> Vec<u8> {
            let mut out = Vec::new();
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out
        }
        let mut next = 0x9e37_79b9_7f4a_7c15u64;
        let edges = (0..64).flat_map(|b| [(1u64 << b) - 1, 1 << b, (1 << b) + 1]);
        let spread = std::iter::repeat_with(|| {
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            next >> (next % 64)
        });
        for v in edges.chain([u64::MAX]).chain(spread.take(10_000)) {
            let mut out = [0u8; 10];
            let n = put_into(&mut out, v);
            assert_eq!(out[..n], leb128(v)[..], "{v}");
            let mut at = 0;
            assert_eq!((varint(&out[..n], &mut at), at), (Some(v), n), "{v}");
        }
    }

    #[test]
    fn sets_are_written_as_counts_row_gaps_and_subjects_each_a_varint() {
        // The format as `encode_sets` documents it, restated: elements of every varint
        // length, in sets empty, short and long, ending a buffer made to measure.
        let mut next = 0x2545_f491_4f6c_dd1du64;
        let mut spread = || {
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            next >> (next % 64)
        };
        let rows: Vec<Vec<SubjectSet>> = (0..40usize)
            .map(|r| {
                (0..r % 3)
                    .map(|s| {
                        let mut v: Vec<Element> = (0..(r * 37 + s) % 500)
                            .map(|_| (spread(), spread()))
                            .collect();
                        v.sort_unstable();
                        // A set's rows are each in it once.
                        v.dedup_by_key(|e| e.0);
                        v.into()
                    })
                    .collect()
            })
            .collect();
        let mut expected = Vec::new();
        put(&mut expected, rows.len() as u64);
        for sets in &rows {
            put(&mut expected, sets.len() as u64);
            for set in sets {
                put(&mut expected, set.len() as u64);
                let mut last = 0;
                for (row, subject) in set.iter() {
                    put(&mut expected, row - last);
                    put(&mut expected, *subject);
                    last = *row;
                }
            }
        }
        assert_eq!(encode_sets(&rows), expected);
        assert_eq!(decode_sets(&expected), Some(rows));
    }

    #[test]
    fn a_varint_s_counted_length_is_its_written_length() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            1 << 63,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put(&mut out, v);
            assert_eq!(put_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn arithmetic_modulo_the_prime_inverts() {
        for a in [1, 2, 12345, P - 1, 1 << 60] {
            assert_eq!(mul(a, inverse(a)), 1, "{a}");
        }
        assert_eq!(reduce(u128::from(P) * u128::from(P)), 0);
        assert_eq!(dot(&[P - 1; 100], &[P - 1; 100]), 100);
    }

    #[test]
    fn two_cells_that_differ_by_fewer_than_k_subjects_are_close() {
        let a = set(0..100);
        let b = set(0..98);
        assert_eq!(differs_by_fewer_than(&a, &b, 5), Some(2));
        assert_eq!(differs_by_fewer_than(&a, &a, 5), None, "the same set");
        assert_eq!(differs_by_fewer_than(&a, &set(50..150), 5), None);
        // Same size, one subject swapped for another: two apart.
        let swapped = set((1..100).chain([1000]));
        assert_eq!(differs_by_fewer_than(&a, &swapped, 5), Some(2));
    }

    #[test]
    fn rows_of_one_subject_count_as_one_subject() {
        // Resident 7 has four visits; leaving one out changes no subject's membership.
        let visits = |skip: Option<u64>| -> SubjectSet {
            let v: Vec<Element> = (0..40u64)
                .filter(|r| Some(*r) != skip)
                .map(|r| (r, r / 4))
                .collect();
            v.into()
        };
        assert_eq!(
            differs_by_fewer_than(&visits(None), &visits(Some(29)), 3),
            Some(1)
        );
        let mut l = Ledger::new(1);
        l.add_released("ex_all", visits(None));
        l.add_released("ex_but_one", visits(Some(29)));
        assert!(matches!(
            l.disclosure(3),
            Some(Disclosure::Atoms { smallest: 1, .. })
        ));
        // Rows of 3 subjects (12 rows) are fewer than k=5 subjects, however many rows.
        let many: SubjectSet = (0..12u64).map(|r| (r, r / 4)).collect::<Vec<_>>().into();
        assert_eq!(differs_by_fewer_than(&many, &set([]), 5), Some(3));
    }

    #[test]
    fn a_subset_sum_differenced_with_its_superset_determines_the_rest() {
        let mut l = Ledger::new(7);
        l.add_released("ex_all", set(0..100));
        assert_eq!(l.disclosure(5), None);
        l.add_released("ex_most", set(0..97));
        assert_eq!(
            l.disclosure(5),
            Some(Disclosure::Atoms {
                groups: 1,
                smallest: 3,
                origins: vec!["ex_all".into(), "ex_most".into()],
            })
        );
    }

    #[test]
    fn a_tracker_of_three_cells_determines_the_small_set() {
        // C (2 subjects) or T, C or not T, everyone: C = first + second - third.
        let c = [0u64, 1];
        let t: Vec<u64> = (10..60).collect();
        let not_t: Vec<u64> = (60..120).collect();
        let mut l = Ledger::new(11);
        l.add_released("ex_1", set(c.iter().copied().chain(t.iter().copied())));
        l.add_released("ex_2", set(c.iter().copied().chain(not_t.iter().copied())));
        assert_eq!(
            l.disclosure(5),
            None,
            "two cells alone determine nothing small"
        );
        l.add_released("ex_3", set(c.iter().chain(&t).chain(&not_t).copied()));
        assert!(matches!(
            l.disclosure(5),
            Some(Disclosure::Atoms { smallest: 2, .. })
        ));
    }

    #[test]
    fn a_partition_and_its_margins_determine_nothing_small() {
        // Districts by age band, each margin released, every cell of at least k... or not:
        // the cross cells are atoms of 3, but no combination of margins isolates one.
        let mut l = Ledger::new(3);
        let subject = |d: u64, a: u64, i: u64| d * 1000 + a * 10 + i;
        for d in 0..4 {
            l.add_released(
                "ex_d",
                set((0..5).flat_map(|a| (0..3).map(move |i| subject(d, a, i)))),
            );
        }
        for a in 0..5 {
            l.add_released(
                "ex_a",
                set((0..4).flat_map(|d| (0..3).map(move |i| subject(d, a, i)))),
            );
        }
        l.add_released(
            "ex_t",
            set((0..4)
                .flat_map(|d| (0..5).flat_map(move |a| (0..3).map(move |i| subject(d, a, i))))),
        );
        assert_eq!(
            l.rank(),
            8,
            "4 + 5 margins, one dependency through the total"
        );
        assert_eq!(l.disclosure(5), None);
    }

    #[test]
    fn a_margin_released_after_a_suppressed_cell_reveals_it() {
        let mut l = Ledger::new(5);
        // Three districts released, the fourth (2 subjects) suppressed.
        for d in 0..3u64 {
            l.add_released("ex_table", set((0..10).map(|i| d * 100 + i)));
        }
        let small = set([300, 301]);
        l.add_protected("ex_table", small.clone());
        assert_eq!(l.disclosure(5), None);
        // Later, the total over all four.
        l.add_released(
            "ex_total",
            set((0..3u64)
                .flat_map(|d| (0..10).map(move |i| d * 100 + i))
                .chain([300, 301])),
        );
        assert!(matches!(
            l.disclosure(5),
            Some(Disclosure::Atoms { smallest: 2, .. })
        ));
        // A suppressed set split into atoms that stay hidden is still caught as a whole:
        // a = {0,2}, b = {1,3}, X = 4..20, Y = 20..40; X+Y, a+X and b+Y give a+b, not a or b.
        let mut l = Ledger::new(5);
        l.add_released("ex_1", set(4..40));
        l.add_protected("ex_1", set(0..4));
        l.add_released("ex_2", set([0, 2].into_iter().chain(4..20)));
        assert_eq!(l.disclosure(3), None);
        l.add_released("ex_3", set([1, 3].into_iter().chain(20..40)));
        assert_eq!(
            l.disclosure(3),
            Some(Disclosure::Suppressed {
                suppressed_in: "ex_1".into(),
                origins: vec!["ex_1".into(), "ex_2".into(), "ex_3".into()],
            })
        );
    }

    #[test]
    fn random_subset_sums_stop_before_any_value_is_determined() {
        // Dinur-Nissim: sums over random halves of 40 subjects. Each atom's test fires at the
        // first release that makes it determinable: never later than when the equations
        // could be solved.
        let n = 40u64;
        let mut l = Ledger::new(99);
        let mut stopped = None;
        for q in 0..200u64 {
            let subset = set((0..n).filter(|s| mix(s * 1_000_003 + q) & 1 == 1));
            let mut next = l.clone();
            next.add_released(&format!("ex_{q}"), subset);
            if next.disclosure(5).is_some() {
                stopped = Some(q);
                break;
            }
            l = next;
        }
        let q = stopped.expect("the audit stops the attack");
        assert!(
            l.rank() < n as usize,
            "stopped at query {q} with rank {}",
            l.rank()
        );
        assert!(q >= 5, "the first few releases determine nothing ({q})");
    }

    /// The rank of rows of rationals, by elimination in floating point (small 0/1 systems).
    fn rank(rows: &[Vec<f64>]) -> usize {
        let mut m = rows.to_vec();
        let cols = m.first().map_or(0, Vec::len);
        let mut r = 0;
        for c in 0..cols {
            let Some(p) = (r..m.len()).find(|i| m[*i][c].abs() > 1e-9) else {
                continue;
            };
            m.swap(r, p);
            for i in 0..m.len() {
                if i != r && m[i][c].abs() > 1e-9 {
                    let f = m[i][c] / m[r][c];
                    let pivot = m[r].clone();
                    for (x, p) in m[i].iter_mut().zip(&pivot) {
                        *x -= f * p;
                    }
                }
            }
            r += 1;
        }
        r
    }

    #[test]
    fn the_audit_agrees_with_exact_elimination_on_small_random_systems() {
        // An independent model: an atom of fewer than k is determinable when adding its
        // indicator to the released rows does not raise their rank over the rationals.
        let (n, k) = (12u64, 3u64);
        for trial in 0..300u64 {
            let cells: Vec<SubjectSet> = (0..(1 + trial % 7))
                .map(|c| set((0..n).filter(|s| !mix(trial * 977 + c * 131 + s).is_multiple_of(3))))
                .filter(|c| !c.is_empty())
                .collect();
            let mut l = Ledger::new(trial);
            for c in &cells {
                l.add_released("ex", c.clone());
            }
            let rows: Vec<Vec<f64>> = cells
                .iter()
                .map(|c| {
                    (0..n)
                        .map(|s| f64::from(u8::from(c.contains(&(s, s)))))
                        .collect()
                })
                .collect();
            let mut atoms: HashMap<Vec<bool>, Vec<u64>> = HashMap::new();
            for s in 0..n {
                let sig: Vec<bool> = cells.iter().map(|c| c.contains(&(s, s))).collect();
                if sig.iter().any(|x| *x) {
                    atoms.entry(sig).or_default().push(s);
                }
            }
            let expected = atoms.values().any(|members| {
                (members.len() as u64) < k && {
                    let mut with = rows.clone();
                    with.push(
                        (0..n)
                            .map(|s| f64::from(u8::from(members.contains(&s))))
                            .collect(),
                    );
                    rank(&with) == rank(&rows)
                }
            });
            assert_eq!(l.rank(), rank(&rows), "trial {trial}");
            assert_eq!(
                l.disclosure(k).is_some(),
                expected,
                "trial {trial}: {cells:?}"
            );
        }
    }

    #[test]
    fn a_release_added_at_once_is_the_same_as_added_cell_by_cell() {
        for trial in 0..50u64 {
            let cells: Vec<SubjectSet> = (0..(2 + trial % 9))
                .map(|c| set((0..30u64).filter(|s| mix(trial * 31 + c * 7 + s).is_multiple_of(3))))
                .collect();
            let (split, k) = ((trial % 4) as usize, 3);
            let (mut one, mut all) = (Ledger::new(trial), Ledger::new(trial));
            for c in &cells {
                one.add_released("ex", c.clone());
            }
            all.add_all_released("ex", &cells[..split.min(cells.len())]);
            all.add_all_released("ex", &cells[split.min(cells.len())..]);
            assert_eq!(one.rank(), all.rank(), "trial {trial}");
            assert_eq!(one.inverse, all.inverse, "trial {trial}");
            assert_eq!(one.disclosure(k), all.disclosure(k), "trial {trial}");
        }
    }

    #[test]
    fn sets_round_trip_through_their_encoding_and_bad_bytes_are_refused() {
        let rows = vec![
            vec![set([1, 5, u64::MAX]), set([])],
            vec![],
            vec![set(0..1000)],
        ];
        let bytes = encode_sets(&rows);
        assert_eq!(decode_sets(&bytes).unwrap(), rows);
        assert_eq!(decode_sets(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_sets(&[1, 1, 2, 5, 1, 0, 1]), None, "not increasing");
        assert_eq!(decode_sets(&[0xff; 11]), None);
    }
}
