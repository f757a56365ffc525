//! The red team's attacks on the sandbox's per-call, per-job and per-process limits, written
//! by someone who did not write the sandbox. Each asserts what must happen; those marked
//! "found" broke the limits when they were written and hold since.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, Error, FUEL_PER_MS, GuestLimits, JobMeter, Sandbox, TableData, TableInput,
    run_query,
};

use crate::common::{OUT, OUT_DATA, abi_module as abi, scalar_module as guest_named};

fn guest(sig: &str, body: &str, extra: &str) -> Vec<u8> {
    guest_named("f", sig, body, extra)
}

/// x + 1 over int64.
const PLUS_ONE: &str = r#"(local.set $n (call $rows (local.get $b)))
    (block $done (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i64.store
            (i32.add (i32.const 1048640) (i32.mul (local.get $i) (i32.const 8)))
            (i64.add (i64.load (i32.add (call $src (local.get $b)) (i32.mul (local.get $i) (i32.const 8)))) (i64.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const 1048640) (i32.mul (local.get $n) (i32.const 8)))"#;

fn spec(name: &str, data_type: ColType) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    }
}

/// Table `t(x int64)`, one batch per slice of `batches`.
fn table(batches: &[&[i64]]) -> Vec<TableInput> {
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
    vec![TableInput {
        name: "t".into(),
        columns: vec![spec("x", ColType::Int64)],
        data: TableData::Memory(
            batches
                .iter()
                .map(|v| {
                    RecordBatch::try_new(
                        Arc::clone(&schema),
                        vec![Arc::new(Int64Array::from(v.to_vec()))],
                    )
                    .unwrap()
                })
                .collect(),
        ),
    }]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn job(
    sandbox: &Arc<Sandbox>,
    wasm: &[u8],
    sql: &str,
    tables: &[TableInput],
    limits: GuestLimits,
    engine: EngineLimits,
) -> (Result<tidegate_runtime::JobOutput, Error>, Arc<JobMeter>) {
    let module = sandbox.load(wasm).unwrap();
    let meter = Arc::new(JobMeter::new(limits));
    let out = rt().block_on(run_query(
        sql,
        tables,
        sandbox.udfs(&module, &meter),
        engine,
    ));
    (out, meter)
}

fn ints(out: &tidegate_runtime::JobOutput) -> Vec<i64> {
    out.batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(i64::MIN))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---- 1. Shadowing built-ins ----

/// Found: `unnest` and `unnest_outer` are planned by DataFusion's SQL planner
/// itself (no registry entry), so they are in no list of reserved names; the planner gives a
/// UDF of that name precedence, so a module's `unnest` replaces SQL's UNNEST.
#[test]
fn redteam_unnest_is_a_name_sql_defines_and_no_module_may_take_it() {
    for name in ["unnest", "unnest_outer"] {
        let wasm = guest_named(name, "int64) -> int64", PLUS_ONE, "");
        let loaded = Sandbox::new().unwrap().load(&wasm).map(drop);
        let mut shown = String::new();
        if loaded.is_ok() {
            // What the module's function does to a query that says UNNEST.
            let sandbox = Arc::new(Sandbox::new().unwrap());
            let (out, meter) = job(
                &sandbox,
                &wasm,
                &format!("SELECT {name}(x) AS y FROM t"),
                &table(&[&[1, 2, 41]]),
                GuestLimits::default(),
                EngineLimits::default(),
            );
            shown = format!(
                "; `SELECT {name}(x) FROM t` ran the guest ({} calls) and gave {:?}",
                meter.calls(),
                out.map(|o| ints(&o))
            );
        }
        assert!(
            loaded.is_err(),
            "a module's function named `{name}` was accepted at upload{shown}"
        );
    }
}

/// Held: built-in names in any case or quoting resolve to the built-in or are refused.
#[test]
fn redteam_builtin_names_in_any_spelling_are_refused() {
    for manifest in [
        "aggregate avg(int64) -> int64 state(int64)",
        "aggregate count(int64) -> int64 state(int64)",
        "aggregate approx_distinct(int64) -> int64 state(int64)",
        "aggregate lag(int64) -> int64 state(int64)",
        "aggregate first_value(int64) -> int64 state(int64)",
        "scalar now(int64) -> int64",
        "scalar power(int64) -> int64",
        "scalar btrim(utf8) -> utf8",
        "scalar substr(utf8) -> utf8",
        "scalar date_part(utf8) -> utf8",
        "scalar strpos(utf8) -> utf8",
        "table range(int64) -> (x int64)",
    ] {
        let more = r#"
            (func (export "tg_agg_update") (param i32 i32 i32 i32) (result i32) i32.const 1)
            (func (export "tg_agg_merge") (param i32 i32 i32 i32) (result i32) i32.const 1)
            (func (export "tg_agg_state") (param i32) (result i32) i32.const 0)
            (func (export "tg_agg_evaluate") (param i32) (result i32) i32.const 0)
            (func (export "tg_agg_reset") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_open") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_push") (param i32 i32) (result i32) i32.const 1)
            (func (export "tg_table_close") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_pull") (param i32) (result i32) i32.const 0)"#;
        let err = Sandbox::new().unwrap().load(&abi(manifest, more));
        assert!(err.is_err(), "{manifest} was accepted");
    }
}

// ---- 2. CPU not charged ----

/// Held: a guest that memsets 16 MiB hundreds of times per call (bulk-memory instructions)
/// is charged for the bytes it touches, not one fuel per instruction: a job with 50 ms of fuel
/// stops at its budget (observed: ~52M fuel after ~3 fills, ~26 ms).
#[test]
fn redteam_bulk_memory_instructions_are_charged_for_the_work_they_do() {
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (drop (memory.grow (i32.const 216)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (i32.const 400)))
            (memory.fill (i32.const 0) (local.get $i) (i32.const 16777216))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    let wasm = guest("int64) -> int64", &body, "");
    // 50 ms worth of fuel at the platform's own rate.
    let limits = GuestLimits {
        fuel: 50 * FUEL_PER_MS,
        call_timeout_ms: 60_000,
        ..GuestLimits::default()
    };
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let started = Instant::now();
    let (out, meter) = job(
        &sandbox,
        &wasm,
        "SELECT f(x) AS y FROM t",
        &table(&[&[1]]),
        limits,
        EngineLimits::default(),
    );
    let elapsed = started.elapsed();
    let charged_ms = meter.fuel_used() / FUEL_PER_MS;
    eprintln!(
        "bulk: {elapsed:?}, fuel {}, {:?}",
        meter.fuel_used(),
        out.as_ref().map(ints)
    );
    assert!(
        matches!(out, Err(Error::Limit(_))) || charged_ms * 4 >= elapsed.as_millis() as u64,
        "a job with 50 ms of fuel ran a guest for {elapsed:?} (6.4 GB memset), was charged {} fuel (= {charged_ms} ms), and ended {:?}",
        meter.fuel_used(),
        out.map(|o| ints(&o))
    );
}

/// Found: every concurrent call is given the job's whole remaining fuel, so two
/// partitions spinning at once burn twice the job's budget before either is stopped.
#[test]
fn redteam_concurrent_calls_cannot_burn_more_than_the_jobs_fuel() {
    let wasm = guest("int64) -> int64", "(loop (br 0)) unreachable", "");
    let limits = GuestLimits {
        fuel: 1_000_000_000,
        call_timeout_ms: 60_000,
        ..GuestLimits::default()
    };
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let (out, meter) = job(
        &sandbox,
        &wasm,
        "SELECT f(x) AS y FROM t",
        &table(&[&[1], &[2]]),
        limits,
        EngineLimits::default(),
    );
    let err = out.unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    assert!(
        meter.fuel_used() <= limits.fuel + limits.fuel / 20,
        "the job's budget was {} fuel; its guests burned {} ({err})",
        limits.fuel,
        meter.fuel_used()
    );
}

// ---- 3. Memory ----

/// Found: the engine's memory pool (the job's "1 GiB of engine memory") covers
/// operators that reserve, not the values a projection makes nor the collected result: a
/// query makes hundreds of MB past a 32 MiB limit.
#[test]
fn redteam_a_query_cannot_hold_more_than_its_engine_memory() {
    let values: Vec<i64> = (0..200).collect();
    let (out, _) = job(
        &Arc::new(Sandbox::new().unwrap()),
        &guest("int64) -> int64", PLUS_ONE, ""),
        "SELECT repeat('x', 1000000) AS y FROM t",
        &table(&[&values]),
        GuestLimits::default(),
        EngineLimits {
            memory_bytes: 32 << 20,
            ..EngineLimits::default()
        },
    );
    match out {
        Err(Error::Limit(_)) => {}
        Ok(o) => {
            let held: usize = o.batches.iter().map(|b| b.get_array_memory_size()).sum();
            panic!(
                "a job limited to 32 MiB of engine memory returned {} MB (engine peak reported: {} bytes)",
                held >> 20,
                o.peak_engine_memory_bytes
            );
        }
        Err(e) => panic!("not a limit error: {e}"),
    }
}

// ---- 4. Covert channels ----

/// Held: a NaN payload written bit by bit into a table function's float64 output is made
/// canonical.
#[test]
fn redteam_nan_payload_through_a_table_pull_is_canonical() {
    let pull = format!(
        r#"(func (export "tg_table_open") (param i32) (result i32) i32.const 1)
        (func (export "tg_table_push") (param i32 i32) (result i32) i32.const 1)
        (func (export "tg_table_close") (param i32) (result i32) i32.const 1)
        (func (export "tg_table_pull") (param i32) (result i32)
            (i32.store (i32.const {OUT}) (i32.const 2))
            (i32.store (i32.const {o4}) (i32.const 1))
            (i32.store (i32.const {o8}) (i32.const 3))
            (i32.store (i32.const {o12}) (i32.const 2))
            (i32.store (i32.const {o16}) (i32.const 0))
            (i32.store (i32.const {o20}) (i32.const 0))
            (i32.store (i32.const {o24}) (i32.const 0))
            (i32.store (i32.const {o28}) (i32.const {OUT_DATA}))
            (i32.store (i32.const {o32}) (i32.const 16))
            (i64.store (i32.const {OUT_DATA}) (i64.const 0x7FF80000DEADBEEF))
            (i64.store (i32.const {d8}) (i64.const 0xFFF00000CAFEF00D))
            (i32.const {OUT}))"#,
        o4 = OUT + 4,
        o8 = OUT + 8,
        o12 = OUT + 12,
        o16 = OUT + 16,
        o20 = OUT + 20,
        o24 = OUT + 24,
        o28 = OUT + 28,
        o32 = OUT + 32,
        d8 = OUT_DATA + 8,
    );
    let wasm = abi("table leak(int64) -> (v float64)", &pull);
    let (out, _) = job(
        &Arc::new(Sandbox::new().unwrap()),
        &wasm,
        "SELECT v FROM leak('t', 'x')",
        &table(&[&[1]]),
        GuestLimits::default(),
        EngineLimits::default(),
    );
    let out = out.unwrap();
    let mut seen = 0;
    for b in &out.batches {
        for v in b.column(0).as_primitive::<Float64Type>().values() {
            seen += 1;
            assert_eq!(v.to_bits(), f64::NAN.to_bits(), "{:#x}", v.to_bits());
        }
    }
    assert!(seen > 0);
}

// ---- 5. Guest text on a terminal ----

/// The `tidegate` binary beside this test's own (the test command builds every target first).
fn tidegate_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("tidegate");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --all-targets`)",
        bin.display()
    );
    bin
}

/// Found: `tidegate dev run` prints the result table as it is; a guest's utf8
/// output holds terminal escapes (clear screen, set title, hide text) and a bidi override,
/// and they reach the scientist's terminal raw.
#[test]
fn redteam_dev_run_does_not_send_guest_text_raw_to_the_terminal() {
    let payload: &[u8] = "\x1b[2J\x1b]0;pwned\x07\x1b[8mhidden\u{202E}evil".as_bytes();
    let l = payload.len();
    let hex: String = payload.iter().map(|b| format!("\\{b:02x}")).collect();
    let offsets = OUT_DATA;
    let data = OUT_DATA + 65_536;
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (block $done (loop $next
            (i32.store (i32.add (i32.const {offsets}) (i32.mul (local.get $i) (i32.const 4))) (i32.mul (local.get $i) (i32.const {l})))
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (memory.copy (i32.add (i32.const {data}) (i32.mul (local.get $i) (i32.const {l}))) (i32.const 8192) (i32.const {l}))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $desc (i32.const 4) (local.get $n) (i32.const 0) (i32.const {offsets}) (i32.const {data}) (i32.mul (local.get $n) (i32.const {l})))"#
    );
    let wasm = guest_named(
        "shout",
        "utf8) -> utf8",
        &body,
        &format!(r#"(data (i32.const 8192) "{hex}")"#),
    );
    // The module computes what it says in-process first.
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("shout.wasm");
    std::fs::write(&module, &wasm).unwrap();
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "s\nhello\nworld\n").unwrap();
    let out = std::process::Command::new(tidegate_bin())
        .args([
            "dev",
            "run",
            "--module",
            module.to_str().unwrap(),
            "--table",
            &format!("t={}", csv.display()),
            "--sql",
            "SELECT shout(s) AS y FROM t",
        ])
        .output()
        .expect("the tidegate binary is built");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\x07') && !stdout.contains('\u{202E}'),
        "raw guest text on the terminal: {stdout:?}"
    );
}

// ---- Beyond the list: the gate's second look at the data runs the guest again ----

/// Found: the dominance check (R-GATE 3) recomputes every subject's contribution
/// to a sum by running the query's input again, guest calls included. A stateful guest gives
/// the real values the first time and flat ones the second, so a sum that one subject
/// dominates is marked undominated.
#[test]
fn redteam_a_stateful_guest_cannot_hide_a_dominated_sum_from_the_gate() {
    // First call: x; every later call: 1.
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (i64.store
                (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8)))
                (if (result i64) (i32.eqz (global.get $calls))
                    (then (i64.load (i32.add (call $src (local.get $b)) (i32.mul (local.get $i) (i32.const 8)))))
                    (else (i64.const 1))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    let wasm = guest("int64) -> int64", &body, "");
    // Group "a": subject s0 holds 10,000 of 10,009.
    let schema = Arc::new(Schema::new(vec![
        Field::new("p", DataType::Utf8, false),
        Field::new("x", DataType::Int64, false),
        Field::new("__tg_entity", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["a"; 10])),
            Arc::new(Int64Array::from(
                (0..10)
                    .map(|i| if i == 0 { 10_000 } else { 1 })
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..10).map(|i| format!("s{i}")),
            )),
        ],
    )
    .unwrap();
    let tables = vec![TableInput {
        name: "t".into(),
        columns: vec![spec("p", ColType::Utf8), spec("x", ColType::Int64)],
        data: TableData::Memory(vec![batch]),
    }];
    // Control: the plain column is dominated.
    let dominated = |sql: &str| {
        let (out, _) = job(
            &Arc::new(Sandbox::new().unwrap()),
            &wasm,
            sql,
            &tables,
            GuestLimits::default(),
            EngineLimits::default(),
        );
        let out = out.unwrap();
        let b = &out.batches.iter().find(|b| b.num_rows() > 0).unwrap();
        let s = b.column_by_name("s").unwrap();
        let s = arrow::compute::cast(s, &DataType::Int64).unwrap();
        (
            s.as_primitive::<Int64Type>().value(0),
            b.column_by_name("__tg_dominated")
                .unwrap()
                .as_boolean()
                .value(0),
        )
    };
    assert_eq!(
        dominated("SELECT p, sum(x) AS s FROM t GROUP BY p"),
        (10_009, true)
    );
    let (sum, flag) = dominated("SELECT p, sum(f(x)) AS s FROM t GROUP BY p");
    assert!(
        flag,
        "released sum {sum} is dominated by one subject but the gate's check saw flat contributions"
    );
}

/// Held by construction: a gated job computes its input once. Every module function is called
/// once per row whatever the gate reads (cells' subjects, each subject's part of a sum, the
/// rows for its memory), and the values the gate reads are those the result was computed from.
#[test]
fn a_gated_job_calls_each_module_function_once_per_row() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("p", DataType::Utf8, false),
        Field::new("x", DataType::Int64, false),
        Field::new("__tg_entity", DataType::Utf8, true),
    ]));
    let (batches, per_batch) = (12, 5_000);
    let data = (0..batches)
        .map(|b| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (0..per_batch).map(|i| format!("p{}", i % 3)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        (0..per_batch).map(|i| (b * per_batch + i) as i64),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        (0..per_batch).map(|i| format!("s{}", i % 700)),
                    )),
                ],
            )
            .unwrap()
        })
        .collect();
    let tables = vec![TableInput {
        name: "t".into(),
        columns: vec![spec("p", ColType::Utf8), spec("x", ColType::Int64)],
        data: TableData::Memory(data),
    }];
    let rows = (batches * per_batch) as u64;
    let (out, meter) = job(
        &Arc::new(Sandbox::new().unwrap()),
        &guest("int64) -> int64", PLUS_ONE, ""),
        "SELECT p, count(*) AS n, sum(f(x)) AS s, avg(f(x)) AS a FROM t GROUP BY p",
        &tables,
        GuestLimits::default(),
        EngineLimits::default(),
    );
    let out = out.unwrap();
    let total: f64 = out
        .batches
        .iter()
        .map(|b| {
            let s =
                arrow::compute::cast(b.column_by_name("s").unwrap(), &DataType::Float64).unwrap();
            s.as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .sum::<f64>()
        })
        .sum();
    let expected = (0..rows).map(|x| (x + 1) as f64).sum::<f64>();
    assert_eq!(total, expected);
    assert!(
        out.batches
            .iter()
            .any(|b| b.column_by_name("__tg_dominated").is_some()),
        "the gate read each subject's part of the sum"
    );
    assert_eq!(
        meter.output_bytes(),
        rows * 8,
        "f returned one value per row: the query and the gate read the same calls"
    );
}

/// Found (a red team of the one-scan change): with instances reused across calls, a guest
/// could carry a value from one batch (a row the query then filters out, another function's
/// argument) into another cell's value. In a gated job every scalar call runs in an instance of
/// its own: a guest that adds what it saw in its last call adds nothing.
#[test]
fn a_guest_in_a_gated_job_carries_nothing_from_one_call_to_the_next() {
    // out = x + (the first x of the previous call, if any); then remember this call's first x.
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (i64.store
                (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8)))
                (i64.add
                    (i64.load (i32.add (call $src (local.get $b)) (i32.mul (local.get $i) (i32.const 8))))
                    (if (result i64) (i64.lt_s (global.get $seen) (i64.const 0))
                        (then (i64.const 0)) (else (global.get $seen)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (global.set $seen (i64.load (call $src (local.get $b))))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("p", DataType::Utf8, false),
        Field::new("x", DataType::Int64, false),
        Field::new("__tg_entity", DataType::Utf8, true),
    ]));
    let data = (0..6)
        .map(|b| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        (0..1_000).map(|i| format!("p{}", i % 2)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        (0..1_000).map(|i| 1_000 * b + i + 1),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        (0..1_000).map(|i| format!("s{}", i % 300)),
                    )),
                ],
            )
            .unwrap()
        })
        .collect();
    let tables = vec![TableInput {
        name: "t".into(),
        columns: vec![spec("p", ColType::Utf8), spec("x", ColType::Int64)],
        data: TableData::Memory(data),
    }];
    let (out, _) = job(
        &Arc::new(Sandbox::new().unwrap()),
        &guest("int64) -> int64", &body, ""),
        "SELECT p, count(*) AS n, sum(f(x)) AS s FROM t GROUP BY p",
        &tables,
        GuestLimits::default(),
        EngineLimits::default(),
    );
    let total: f64 = out
        .unwrap()
        .batches
        .iter()
        .map(|b| {
            let s =
                arrow::compute::cast(b.column_by_name("s").unwrap(), &DataType::Float64).unwrap();
            s.as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .sum::<f64>()
        })
        .sum();
    assert_eq!(
        total,
        (1..=6_000).sum::<i64>() as f64,
        "f(x) = x in every call"
    );
}

/// Found (the same red team): the query's aggregate read every further argument from the
/// shared input, so over L1 data an aggregate that takes a literal there failed to plan. A
/// constant stays a constant.
#[test]
fn an_aggregate_with_a_literal_argument_still_runs_over_l1_data() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("p", DataType::Utf8, false),
        Field::new("x", DataType::Int64, false),
        Field::new("__tg_entity", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["a", "a", "b", "b"])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec!["s1", "s2", "s3", "s4"])),
        ],
    )
    .unwrap();
    let tables = vec![TableInput {
        name: "t".into(),
        columns: vec![spec("p", ColType::Utf8), spec("x", ColType::Int64)],
        data: TableData::Memory(vec![batch]),
    }];
    for sql in [
        "SELECT p, approx_percentile_cont(x, 0.5) AS m FROM t GROUP BY p",
        "SELECT p, string_agg(CAST(x AS VARCHAR), ',') AS m FROM t GROUP BY p",
    ] {
        let out = rt().block_on(run_query(
            sql,
            &tables,
            tidegate_runtime::Functions::default(),
            EngineLimits::default(),
        ));
        assert!(out.is_ok(), "{sql}: {:?}", out.err());
    }
}

#[allow(dead_code)]
fn unused(_: &dyn Array) {}
