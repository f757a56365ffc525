//! Workload (f): the gate's sensitive-data scan over 10 million values of a text column (a mix
//! of plain words, Chinese free text, valid resident IDs and mobile numbers), against a plain
//! pass over the same values that only measures their length: the scan's own cost per value.

use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn values(rows: usize) -> StringArray {
    let mut rng = StdRng::seed_from_u64(5);
    StringArray::from_iter_values((0..rows).map(|i| match i % 5 {
        0 => format!("West Lake visitor {}", rng.random_range(0..1000)),
        1 => format!(
            "联系电话1{}{:09}",
            rng.random_range(3..10),
            rng.random_range(0..1_000_000_000u64)
        ),
        2 => "11010519491231002X".to_string(),
        3 => format!(
            "order {} paid {:.2}",
            rng.random_range(0..1_000_000),
            rng.random_range(0.0..500.0)
        ),
        _ => "景区游客满意度调查".to_string(),
    }))
}

/// (baseline, scan, values flagged) for `rows` values, best of `reps`.
pub(crate) fn measure(rows: usize, reps: usize) -> (Duration, Duration, usize) {
    let column = values(rows);
    let (mut base, mut scan, mut flagged) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..reps {
        let started = Instant::now();
        let total: usize = column.iter().flatten().map(str::len).sum();
        std::hint::black_box(total);
        base = base.min(started.elapsed());
        let started = Instant::now();
        flagged = (0..column.len())
            .filter(|i| !tidegate_policy::scan_value(column.value(*i)).is_empty())
            .count();
        scan = scan.min(started.elapsed());
    }
    (base, scan, flagged)
}
