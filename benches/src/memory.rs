//! (m) The gate's memory: a release of 100 cells checked against 1,000 cells released earlier
//! over 1M subjects (ten earlier tables of 100 groups each, every subject in one group of
//! each, so that nearly every subject is an atom of its own), against reading those cells'
//! stored sets once, in the same process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_policy::{Element, Ledger, SubjectSet, decode_sets, encode_sets};

/// A pseudo-random 64-bit mix (SplitMix64's finalizer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One table of `groups` cells over `subjects` subjects (one row each), grouped by a hash.
fn table(subjects: u64, groups: u64, salt: u64) -> Vec<SubjectSet> {
    let mut cells: Vec<Vec<Element>> = vec![Vec::new(); groups as usize];
    for s in 0..subjects {
        let subject = mix(s ^ 0xabcd);
        let row = mix(s);
        cells[(mix(s ^ salt) % groups) as usize].push((row, subject));
    }
    cells
        .into_iter()
        .map(|mut c| {
            c.sort_unstable();
            Arc::from(c)
        })
        .collect()
}

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

pub(crate) fn memory_workload(subjects: u64, reps: usize) {
    let (tables, groups, k) = (10u64, 100u64, 10u64);
    let earlier: Vec<Vec<SubjectSet>> = (0..tables)
        .map(|t| table(subjects, groups, t + 1))
        .collect();
    let new = table(subjects, groups, 999);
    let stored: Vec<Vec<u8>> = earlier
        .iter()
        .map(|cells| encode_sets(&[cells.clone(), Vec::new()]))
        .collect();
    let disk: usize = stored.iter().map(Vec::len).sum();
    let before = resident();
    let started = Instant::now();
    let mut ledger = Ledger::new(42);
    for (t, cells) in earlier.iter().enumerate() {
        ledger.add_all_released(&format!("ex_{t}"), cells);
    }
    let built = started.elapsed();
    let held = resident().saturating_sub(before);
    let best = |f: &mut dyn FnMut()| -> Duration {
        (0..reps.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    let read = best(&mut || {
        for bytes in &stored {
            assert!(decode_sets(bytes).is_some());
        }
    });
    let differencing = best(&mut || {
        for c in &new {
            assert!(ledger.close_to(c, k).is_none());
        }
    });
    let adding = best(&mut || {
        let mut next = ledger.clone();
        next.add_all_released("ex_new", &new);
    });
    println!(
        "    adding the release {:.0} ms",
        adding.as_secs_f64() * 1e3
    );
    let mut next = ledger.clone();
    next.add_all_released("ex_new", &new);
    let disclosing = best(&mut || {
        assert!(next.disclosure(k).is_none());
    });
    println!(
        "    testing every atom {:.0} ms",
        disclosing.as_secs_f64() * 1e3
    );
    let audit = best(&mut || {
        let mut next = ledger.clone();
        next.add_all_released("ex_new", &new);
        assert!(next.disclosure(k).is_none());
    });
    // A dataset with a cell suppressed for dominance keeps a second ledger of its sums alone
    // (here every earlier cell is a sum's, and one hidden cell is protected in it).
    let mut sums = Ledger::new(43);
    for (t, cells) in earlier.iter().enumerate() {
        sums.add_all_released(&format!("ex_{t}"), cells);
    }
    let hidden = table(subjects, groups, 777);
    sums.add_protected("ex_hidden", hidden[0].clone());
    let summing = best(&mut || {
        let mut next = sums.clone();
        next.add_all_released("ex_new", &new);
        let _ = next.protected_disclosure();
    });
    println!(
        "    with a ledger of sums too (a dataset with a dominated cell): {:.0} ms more",
        summing.as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "(m) gate's memory: {} earlier cells over {subjects} subjects (rank {}), a release of {} cells",
        ledger.cells(),
        ledger.rank(),
        new.len()
    );
    println!(
        "    stored sets: {:.1} MB on disk (before sealing); the ledger: {:.0} MB resident, built in {:.0} ms",
        disk as f64 / 1e6,
        held as f64 / 1e6,
        ms(built)
    );
    println!(
        "    reading the stored sets {:.0} ms; differencing {:.0} ms ({:.2}x); linear audit {:.0} ms ({:.2}x); whole check {:.0} ms",
        ms(read),
        ms(differencing),
        ms(differencing) / ms(read),
        ms(audit),
        ms(audit) / ms(read),
        ms(differencing + audit)
    );
}
