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

/// What workload (f) measured, each the best of its repetitions.
pub(crate) struct Scan {
    /// Reading every value's length.
    pub base: Duration,
    /// `scan_value` on every value, one thread.
    pub one_thread: Duration,
    /// The gate's scan of the same column as a result batch, on the machine's threads.
    pub gate: Duration,
    pub flagged: usize,
}

pub(crate) fn measure(rows: usize, reps: usize) -> Scan {
    let column = values(rows);
    let batch = arrow::array::RecordBatch::try_from_iter([(
        "v",
        std::sync::Arc::new(column.clone()) as arrow::array::ArrayRef,
    )])
    .expect("one column");
    let mut gate = Duration::MAX;
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
        let started = Instant::now();
        let (scanned, hits) =
            tidegate_runtime::scan_columns(std::slice::from_ref(&batch)).expect("the scan runs");
        gate = gate.min(started.elapsed());
        assert_eq!(scanned as usize, rows);
        assert!(hits[0].values().sum::<u64>() as usize >= flagged);
    }
    Scan {
        base,
        one_thread: scan,
        gate,
        flagged,
    }
}
