//! The evil-guest suite: modules that try to break the sandbox, each with the outcome it must
//! get. Every one fails fast with a clear error class, and the host goes on serving others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, Error, GuestLimits, JobMeter, Sandbox, TableData, TableInput, run_query,
};

use crate::common;
use crate::common::{OUT_DATA, abi_module as abi};

/// A module of the Tidegate ABI with one function `f` (see [`common::scalar_module`]).
fn guest(sig: &str, body: &str, extra: &str) -> Vec<u8> {
    common::scalar_module("f", sig, body, extra)
}

/// x + 1 over an int64 column: the well-behaved guest.
fn plus_one() -> Vec<u8> {
    guest(
        "int64) -> int64",
        &format!(
            r#"(local.set $n (call $rows (local.get $b)))
            (block $done (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                (i64.store
                    (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8)))
                    (i64.add (i64.load (i32.add (call $src (local.get $b)) (i32.mul (local.get $i) (i32.const 8)))) (i64.const 1)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))
            (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
        ),
        "",
    )
}

fn table(values: &[i64]) -> Vec<TableInput> {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(values.to_vec()))],
    )
    .unwrap();
    vec![TableInput {
        name: "t".into(),
        columns: vec![ColumnSpec {
            name: "x".into(),
            data_type: ColType::Int64,
            tags: vec![],
        }],
        data: TableData::Memory(vec![batch]),
    }]
}

fn tight() -> GuestLimits {
    GuestLimits {
        fuel: 2_000_000_000,
        memory_bytes: 16 << 20,
        call_timeout_ms: 300,
        output_bytes: 1 << 20,
        ..GuestLimits::default()
    }
}

async fn run_with(
    sandbox: &Arc<Sandbox>,
    wasm: &[u8],
    values: &[i64],
    limits: GuestLimits,
) -> Result<Vec<i64>, Error> {
    let module = sandbox.load(wasm)?;
    let meter = Arc::new(JobMeter::new(limits));
    let out = run_query(
        "SELECT f(x) AS y FROM t",
        &table(values),
        sandbox.scalar_udfs(&module, &meter),
        EngineLimits::default(),
    )
    .await?;
    Ok(out
        .batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(i64::MIN))
                .collect::<Vec<_>>()
        })
        .collect())
}

fn run(wasm: &[u8], values: &[i64]) -> Result<Vec<i64>, Error> {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_with(&sandbox, wasm, values, tight()))
}

fn class(e: &Error) -> &'static str {
    match e {
        Error::Limit(_) => "limit",
        Error::BadInput(_) => "bad_input",
        Error::Refused(_) => "refused",
        _ => "other",
    }
}

fn load(wasm: &[u8]) -> Result<(), Error> {
    Sandbox::new().unwrap().load(wasm).map(|_| ())
}

#[test]
fn a_well_behaved_guest_computes_the_right_answer() {
    assert_eq!(run(&plus_one(), &[1, 2, 41]).unwrap(), vec![2, 3, 42]);
}

#[test]
fn an_endless_loop_is_interrupted_within_its_time_limit() {
    let started = Instant::now();
    let err = run(
        &guest("int64) -> int64", "(loop (br 0)) unreachable", ""),
        &[1],
    )
    .unwrap_err();
    assert_eq!(class(&err), "limit", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn deep_recursion_overflows_the_guest_stack_not_the_host() {
    let err = run(
        &guest(
            "int64) -> int64",
            "call $r unreachable",
            "(func $r (call $r))",
        ),
        &[1],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "limit exceeded: the guest overflowed its stack during f"
    );
}

#[test]
fn a_memory_grow_loop_stops_at_the_cap() {
    let err = run(
        &guest(
            "int64) -> int64",
            "(loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable",
            "",
        ),
        &[1],
    )
    .unwrap_err();
    // The guest aborts when its growth is refused; what stopped it is the cap, and it is
    // reported as the cap.
    assert_eq!(
        err.to_string(),
        "limit exceeded: a guest reached its memory cap of 16 MiB during f"
    );
}

#[test]
fn a_huge_initial_memory_is_refused_at_upload() {
    let wasm = wat::parse_str(r#"(module (memory (export "memory") 65536))"#).unwrap();
    let err = load(&wasm).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: invalid module: initial memory pages: 65536 is over the limit of 1024"
    );
}

#[test]
fn a_table_bomb_is_refused_at_upload() {
    let err = load(&wat::parse_str("(module (table 10000000 funcref))").unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: invalid module: initial table elements: 10000000 is over the limit of 10000"
    );
}

#[test]
fn a_giant_data_segment_is_refused_before_compiling() {
    let big = "\\00".repeat(9 << 20);
    let err = load(
        &wat::parse_str(format!(
            r#"(module (memory 200) (data (i32.const 0) "{big}"))"#
        ))
        .unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: invalid module: bytes of data segments: 9437184 is over the limit of 8388608"
    );
}

#[test]
fn a_module_with_very_many_functions_is_refused_before_compiling() {
    let funcs = "(func)".repeat(30_000);
    let err = load(&wat::parse_str(format!("(module {funcs})")).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: invalid module: functions: 30000 is over the limit of 20000"
    );
}

#[test]
fn forbidden_imports_are_refused_with_their_names() {
    for (import, name) in [
        (
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            "wasi_snapshot_preview1::fd_write",
        ),
        (
            r#"(import "env" "system" (func (param i32) (result i32)))"#,
            "env::system",
        ),
        (
            r#"(import "tidegate" "log" (func (param i64)))"#,
            "tidegate::log",
        ),
    ] {
        let err = load(&wat::parse_str(format!("(module {import})")).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "bad input: invalid module: imports are not allowed (the ABI has no host functions): {name}"
            )
        );
    }
}

#[test]
fn a_precompiled_artifact_or_a_component_is_refused() {
    assert!(
        load(b"\x7fELF\x02\x01\x01\0\0\0\0\0")
            .unwrap_err()
            .to_string()
            .contains("not a WebAssembly core module")
    );
    let component = b"\0asm\x0d\0\x01\0";
    assert!(
        load(component)
            .unwrap_err()
            .to_string()
            .contains("not a WebAssembly core module")
    );
}

#[test]
fn a_trap_halfway_through_a_batch_leaves_no_output() {
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (if (i32.eq (local.get $i) (i32.const 5000)) (then unreachable))
            (i64.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8))) (i64.const 7))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    let values: Vec<i64> = (0..8000).collect();
    let err = run(&guest("int64) -> int64", &body, ""), &values).unwrap_err();
    assert_eq!(class(&err), "bad_input", "{err}");
}

/// A guest that returns a hand-made output descriptor.
fn returning(
    sig: &str,
    setup: &str,
    ty: u32,
    validity: &str,
    offsets: &str,
    data: &str,
    len: &str,
) -> Vec<u8> {
    guest(
        sig,
        &format!(
            "(local.set $n (call $rows (local.get $b))) {setup}
             (call $desc (i32.const {ty}) (local.get $n) {validity} {offsets} {data} {len})"
        ),
        "",
    )
}

#[test]
fn wrapping_and_out_of_bounds_pointers_are_refused() {
    let wrapping = returning(
        "int64) -> int64",
        "",
        2,
        "(i32.const 0)",
        "(i32.const 0)",
        "(i32.const 0xFFFFFFF0)",
        "(i32.mul (local.get $n) (i32.const 8))",
    );
    let err = run(&wrapping, &[1, 2, 3, 4]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: the guest returned a buffer outside its memory"
    );
    let huge_len = returning(
        "utf8) -> utf8",
        "",
        4,
        "(i32.const 0)",
        &format!("(i32.const {OUT_DATA})"),
        "(i32.const 0)",
        "(i32.const 0x7FFFFFFF)",
    );
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let module = sandbox.load(&huge_len).unwrap();
    let meter = Arc::new(JobMeter::new(tight()));
    let strings = strings_table(&["a", "b"]);
    let err = rt
        .block_on(run_query(
            "SELECT f(s) FROM t",
            &strings,
            sandbox.scalar_udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .unwrap_err();
    // The declared length is refused before anything is copied or allocated.
    assert_eq!(
        err.to_string(),
        "limit exceeded: function `f` returned 2048 MiB at once; at most 64 MiB are read per call"
    );
}

fn strings_table(values: &[&str]) -> Vec<TableInput> {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)])),
        vec![Arc::new(arrow::array::StringArray::from(values.to_vec()))],
    )
    .unwrap();
    vec![TableInput {
        name: "t".into(),
        columns: vec![ColumnSpec {
            name: "s".into(),
            data_type: ColType::Utf8,
            tags: vec![],
        }],
        data: TableData::Memory(vec![batch]),
    }]
}

fn run_strings(wasm: &[u8], values: &[&str], limits: GuestLimits) -> Result<Vec<String>, Error> {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(wasm)?;
    let meter = Arc::new(JobMeter::new(limits));
    let out = tokio::runtime::Runtime::new().unwrap().block_on(run_query(
        "SELECT f(s) FROM t",
        &strings_table(values),
        sandbox.scalar_udfs(&module, &meter),
        EngineLimits::default(),
    ))?;
    Ok(out
        .batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Writes offsets 0, 2, 4, ... for n rows at OUT_DATA, and `bytes` at OUT_DATA + 4096.
fn string_setup(first_offset: i32, bytes: &str) -> String {
    format!(
        r#"(block $done (loop $next
            (br_if $done (i32.gt_u (local.get $i) (local.get $n)))
            (i32.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 4))) (i32.mul (local.get $i) (i32.const 2)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (i32.store (i32.const {OUT_DATA}) (i32.const {first_offset}))
        (i32.store16 (i32.const {b}) (i32.const {bytes}))
        (i32.store16 (i32.const {b2}) (i32.const {bytes}))"#,
        b = OUT_DATA + 4096,
        b2 = OUT_DATA + 4098,
    )
}

#[test]
fn malformed_returned_strings_are_refused() {
    let strings = |first: i32, bytes: &str, data_len: &str| {
        returning(
            "utf8) -> utf8",
            &string_setup(first, bytes),
            4,
            "(i32.const 0)",
            &format!("(i32.const {OUT_DATA})"),
            &format!("(i32.const {})", OUT_DATA + 4096),
            data_len,
        )
    };
    // "ok" twice, well formed: the control case.
    let good = strings(0, "0x6b6f", "(i32.mul (local.get $n) (i32.const 2))");
    assert_eq!(
        run_strings(&good, &["a", "b"], tight()).unwrap(),
        vec!["ok", "ok"]
    );
    // Invalid UTF-8 (0xFF 0xFE).
    let bad_utf8 = strings(0, "0xFEFF", "(i32.mul (local.get $n) (i32.const 2))");
    assert_eq!(
        run_strings(&bad_utf8, &["a", "b"], tight())
            .unwrap_err()
            .to_string(),
        "bad input: function `f` returned malformed Arrow data"
    );
    // Offsets that go backwards.
    let backwards = strings(3, "0x6b6f", "(i32.mul (local.get $n) (i32.const 2))");
    assert_eq!(
        run_strings(&backwards, &["a", "b"], tight())
            .unwrap_err()
            .to_string(),
        "bad input: function `f` returned malformed Arrow data"
    );
    // Offsets past the end of the data.
    let short = strings(0, "0x6b6f", "(i32.const 1)");
    assert_eq!(
        run_strings(&short, &["a", "b"], tight())
            .unwrap_err()
            .to_string(),
        "bad input: function `f` returned malformed Arrow data"
    );
}

#[test]
fn a_validity_bitmap_past_the_end_of_memory_is_refused() {
    let wasm = returning(
        "int64) -> int64",
        "",
        2,
        "(i32.const 2621439)",
        "(i32.const 0)",
        &format!("(i32.const {OUT_DATA})"),
        "(i32.mul (local.get $n) (i32.const 8))",
    );
    let values: Vec<i64> = (0..100).collect();
    assert_eq!(
        run(&wasm, &values).unwrap_err().to_string(),
        "bad input: the guest returned a buffer outside its memory"
    );
}

#[test]
fn a_wrong_row_count_or_type_is_refused() {
    let wrong_len = returning(
        "int64) -> int64",
        "",
        2,
        "(i32.const 0)",
        "(i32.const 0)",
        &format!("(i32.const {OUT_DATA})"),
        "(i32.const 8)",
    );
    let err = run(&wrong_len, &[1, 2]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: function `f` returned a data buffer of the wrong size"
    );
    let wrong_type = returning(
        "int64) -> int64",
        "",
        4,
        "(i32.const 0)",
        "(i32.const 0)",
        &format!("(i32.const {OUT_DATA})"),
        "(i32.const 16)",
    );
    let err = run(&wrong_type, &[1, 2]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad input: function `f` returned a column of another type than it declared"
    );
}

#[test]
fn output_explosion_stops_at_the_byte_limit() {
    // Every row claims a 1 MiB string: offsets i * 2^20, data of n MiB.
    let setup = format!(
        r#"(drop (memory.grow (i32.const 100)))
        (block $done (loop $next
            (br_if $done (i32.gt_u (local.get $i) (local.get $n)))
            (i32.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 4))) (i32.mul (local.get $i) (i32.const 1048576)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))"#
    );
    let wasm = returning(
        "utf8) -> utf8",
        &setup,
        4,
        "(i32.const 0)",
        &format!("(i32.const {OUT_DATA})"),
        "(i32.const 0)",
        "(i32.mul (local.get $n) (i32.const 1048576))",
    );
    let limits = GuestLimits {
        memory_bytes: 16 << 20,
        output_bytes: 2 << 20,
        ..tight()
    };
    let err = run_strings(&wasm, &["a", "b", "c"], limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "limit exceeded: the job's guests returned more than the output byte limit"
    );
}

#[test]
fn state_kept_between_calls_never_crosses_jobs() {
    // The guest remembers the first value it ever saw and returns it for every row.
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (if (i64.eq (global.get $seen) (i64.const -1))
            (then (global.set $seen (i64.load (call $src (local.get $b))))))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (i64.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8))) (global.get $seen))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    let wasm = guest("int64) -> int64", &body, "");
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = rt
        .block_on(run_with(&sandbox, &wasm, &[111, 1], tight()))
        .unwrap();
    assert_eq!(first, vec![111, 111]);
    // Another job on the same host, with the same module, gets a fresh instance.
    let second = rt
        .block_on(run_with(&sandbox, &wasm, &[222, 2], tight()))
        .unwrap();
    assert_eq!(second, vec![222, 222]);
}

#[test]
fn a_spinning_guest_does_not_stop_a_well_behaved_job_beside_it() {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spin = guest("int64) -> int64", "(loop (br 0)) unreachable", "");
    let good = plus_one();
    let values: Vec<i64> = (0..50_000).collect();
    let (bad, ok) = rt.block_on(async {
        let s1 = Arc::clone(&sandbox);
        let s2 = Arc::clone(&sandbox);
        let bad = tokio::spawn(async move { run_with(&s1, &spin, &[1], tight()).await });
        let v = values.clone();
        let ok = tokio::spawn(async move { run_with(&s2, &good, &v, tight()).await });
        (bad.await.unwrap(), ok.await.unwrap())
    });
    assert_eq!(class(&bad.unwrap_err()), "limit");
    // Batches may come back in any order across partitions: compare as sorted lists.
    let mut ok = ok.unwrap();
    ok.sort_unstable();
    let expected: Vec<i64> = values.iter().map(|x| x + 1).collect();
    assert_eq!(ok, expected);
}

#[test]
fn fuel_is_deterministic_for_the_same_job_on_the_same_data() {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let module = sandbox.load(&plus_one()).unwrap();
    let values: Vec<i64> = (0..20_000).collect();
    let fuel = |_: u32| {
        let meter = Arc::new(JobMeter::new(tight()));
        rt.block_on(run_query(
            "SELECT f(x) FROM t",
            &table(&values),
            sandbox.scalar_udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .unwrap();
        meter.fuel_used()
    };
    let first = fuel(0);
    assert!(first > 20_000, "fuel counts work: {first}");
    assert_eq!(fuel(1), first);
}

#[test]
fn memory_left_by_one_guest_is_never_seen_by_the_next() {
    // Guest A fills all of its (grown) memory with the canary 0xA5.
    let fill = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (drop (memory.grow (i32.const 100)))
        (memory.fill (i32.const 0) (i32.const 0xA5) (i32.mul (memory.size) (i32.const 65536)))
        (call $desc (i32.const 2) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    // Guest B, without data beyond its manifest, grows as much and counts canary bytes.
    let scan = format!(
        r#"(local $count i64) (local $end i32)
        (local.set $n (call $rows (local.get $b)))
        (drop (memory.grow (i32.const 100)))
        (local.set $end (i32.mul (memory.size) (i32.const 65536)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
            (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 0xA5))
                (then (local.set $count (i64.add (local.get $count) (i64.const 1)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (i64.store (i32.const {OUT_DATA}) (local.get $count))
        (call $desc (i32.const 2) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.const 8))"#
    );
    let (a, b) = (
        guest("int64) -> int64", &fill, ""),
        guest("int64) -> int64", &scan, ""),
    );
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let limits = GuestLimits {
        fuel: 20_000_000_000,
        call_timeout_ms: 5_000,
        ..tight()
    };
    for _ in 0..5 {
        let written = rt.block_on(run_with(&sandbox, &a, &[1], limits)).unwrap();
        assert_eq!(
            written,
            vec![i64::from_le_bytes([0xA5; 8])],
            "guest A wrote its canary"
        );
        let seen = rt.block_on(run_with(&sandbox, &b, &[1], limits)).unwrap();
        assert_eq!(seen, vec![0], "guest B saw guest A's canary bytes");
    }
}

// ---- Per-job budgets (one job's limits hold across all its calls and instances) ----

/// The aggregate exports of the ABI, all succeeding and keeping nothing.
const AGGREGATE_EXPORTS: &str = r#"
    (func (export "tg_agg_update") (param i32 i32 i32 i32) (result i32) i32.const 1)
    (func (export "tg_agg_merge") (param i32 i32 i32 i32) (result i32) i32.const 1)
    (func (export "tg_agg_state") (param i32) (result i32) i32.const 0)
    (func (export "tg_agg_evaluate") (param i32) (result i32) i32.const 0)
    (func (export "tg_agg_reset") (param i32) (result i32) i32.const 1)"#;

#[test]
fn a_module_function_cannot_take_the_name_of_a_built_in_or_platform_function() {
    for manifest in [
        "aggregate sum(int64) -> int64 state(int64)",
        "aggregate mean(float64) -> float64 state(float64)",
        "aggregate row_number(int64) -> int64 state(int64)",
        "scalar abs(int64) -> int64",
        "scalar coalesce(int64) -> int64",
        "scalar tg_mask(utf8) -> utf8",
        "scalar tg_anything(utf8) -> utf8",
        "table generate_series(int64) -> (x int64)",
    ] {
        let err = load(&abi(manifest, AGGREGATE_EXPORTS)).unwrap_err();
        let name = manifest.split([' ', '(']).nth(1).unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "bad input: invalid module: function name `{name}` is taken by a built-in or platform function (a module's functions never replace one)"
            ),
            "{manifest}"
        );
    }
}

#[test]
fn two_modules_of_one_job_cannot_both_define_a_function() {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let meter = Arc::new(JobMeter::new(tight()));
    let first = sandbox.load(&plus_one()).unwrap();
    let second = sandbox
        .load(&guest("int64) -> int64", "i32.const 0", ""))
        .unwrap();
    let mut udfs = sandbox.udfs(&first, &meter);
    udfs.extend(sandbox.udfs(&second, &meter));
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_query(
            "SELECT f(x) FROM t",
            &table(&[1]),
            udfs,
            EngineLimits::default(),
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused: function `f` would replace a function of the same name; a job's functions never shadow one another or a built-in"
    );
}

fn spinning() -> Vec<u8> {
    guest("int64) -> int64", "(loop (br 0)) unreachable", "")
}

#[test]
fn a_guest_is_never_called_while_the_query_is_planned() {
    // `f(1)` is a constant expression: an engine folding it at planning would run the guest
    // outside the job's accounting (and swallow its error). The branch is never taken.
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(&spinning()).unwrap();
    let meter = Arc::new(JobMeter::new(tight()));
    let out = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_query(
            "SELECT CASE WHEN x < 0 THEN f(1) ELSE x END AS y FROM t",
            &table(&[1, 2, 3]),
            sandbox.udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .unwrap();
    assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert_eq!(meter.calls(), 0);
    assert_eq!(meter.fuel_used(), 0);
}

#[test]
fn a_call_stopped_by_its_time_limit_is_charged_for_its_time_and_ends_the_job() {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(&spinning()).unwrap();
    let meter = Arc::new(JobMeter::new(tight()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(run_query(
            "SELECT f(1) AS y FROM t",
            &table(&[1, 2, 3]),
            sandbox.udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "limit exceeded: a guest call exceeded its time limit during f"
    );
    let at_least = tight().call_timeout_ms * tidegate_runtime::FUEL_PER_MS;
    assert!(
        meter.fuel_used() >= at_least,
        "charged {} fuel for a call of {} ms",
        meter.fuel_used(),
        tight().call_timeout_ms
    );
    // The job's failure stands: no later call of its guests starts.
    let calls = meter.calls();
    assert_eq!(meter.check().unwrap_err().to_string(), err.to_string());
    assert_eq!(meter.calls(), calls);
}

#[test]
fn the_jobs_deadline_ends_it_while_its_workers_are_busy_in_guests() {
    // Each call may run a minute; the job has a second. Every worker is inside a guest
    // when the deadline passes: the job still ends at it.
    let limits = GuestLimits {
        call_timeout_ms: 60_000,
        fuel: u64::MAX / 2,
        ..tight()
    };
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(&spinning()).unwrap();
    let meter = Arc::new(JobMeter::new(limits));
    let values: Vec<i64> = (0..20_000).collect();
    let started = Instant::now();
    let err = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
        .block_on(run_query(
            "SELECT f(x) AS y FROM t",
            &table(&values),
            sandbox.udfs(&module, &meter),
            EngineLimits {
                wall_time: Duration::from_secs(1),
                ..EngineLimits::default()
            },
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "limit exceeded: the job exceeded its wall-clock limit"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the job ended only after {:?}, not at its deadline",
        started.elapsed()
    );
}

/// `rows` rows of (p int64, x float64): `partitions` distinct values of p.
fn partitioned(rows: usize, partitions: usize) -> Vec<TableInput> {
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("p", DataType::Int64, false),
            Field::new("x", DataType::Float64, false),
            Field::new("n", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..rows).map(|i| (i % partitions) as i64),
            )),
            Arc::new(arrow::array::Float64Array::from_iter_values(
                (0..rows).map(|i| 1.0 + (i % 13) as f64),
            )),
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i as i64))),
        ],
    )
    .unwrap();
    let col = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    };
    vec![TableInput {
        name: "t".into(),
        columns: vec![
            col("p", ColType::Int64),
            col("x", ColType::Float64),
            col("n", ColType::Int64),
        ],
        data: TableData::Memory(vec![batch]),
    }]
}

fn aggregate_job(
    sql: &str,
    tables: &[TableInput],
    limits: GuestLimits,
) -> (Result<(), Error>, Arc<JobMeter>) {
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(tidegate_server::AGGREGATE_UDF_WASM).unwrap();
    let meter = Arc::new(JobMeter::new(limits));
    let out = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_query(
            sql,
            tables,
            sandbox.udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .map(drop);
    (out, meter)
}

#[test]
fn every_instance_a_job_creates_is_charged_and_counted_against_its_budget() {
    // A window over 300 partitions gives each its own accumulator, and so its own instance.
    let sql = "SELECT p, sum_sq(x) OVER (PARTITION BY p) AS s FROM t";
    let (out, meter) = aggregate_job(sql, &partitioned(3_000, 300), GuestLimits::default());
    out.unwrap();
    let created = u64::from(meter.instances_created());
    assert!(created >= 300, "{created} instances");
    assert!(
        meter.fuel_used() >= created * tidegate_runtime::INSTANCE_FUEL,
        "{} fuel for {created} instances",
        meter.fuel_used()
    );
    let few = GuestLimits {
        max_instances: 100,
        ..GuestLimits::default()
    };
    let (out, _) = aggregate_job(sql, &partitioned(3_000, 300), few);
    assert_eq!(
        out.unwrap_err().to_string(),
        "limit exceeded: the job created more than 100 guest instances"
    );
}

#[test]
fn a_job_holds_no_more_live_instances_than_its_share_of_the_pool() {
    let sql = "SELECT p, sum_sq(x), geo_mean(x), largest(n), weighted_mean(x, n) FROM t GROUP BY p";
    let share = GuestLimits {
        live_instances: 2,
        ..GuestLimits::default()
    };
    let (out, _) = aggregate_job(sql, &partitioned(1_000, 7), share);
    assert_eq!(
        out.unwrap_err().to_string(),
        "limit exceeded: the job holds 2 guest instances at once, its share of the sandbox's pool"
    );
    // The same query within its share runs, and gives its instances back when it ends.
    let (out, meter) = aggregate_job(sql, &partitioned(1_000, 7), GuestLimits::default());
    out.unwrap();
    assert!(meter.instances_created() >= 4);
}

#[test]
fn guest_memory_is_budgeted_for_the_whole_job_across_its_instances() {
    // Four aggregates hold four instances at once; each fits its own cap, together they do
    // not fit the job's budget.
    let sql = "SELECT p, sum_sq(x), geo_mean(x), largest(n), weighted_mean(x, n) FROM t GROUP BY p";
    let tight_job = GuestLimits {
        job_memory_bytes: 2 << 20,
        ..GuestLimits::default()
    };
    let (out, meter) = aggregate_job(sql, &partitioned(1_000, 7), tight_job);
    let err = out.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "limit exceeded: the job's guests reached their memory budget of 2 MiB together during"
        ),
        "{err}"
    );
    assert!(meter.peak_memory() <= 2 << 20, "{}", meter.peak_memory());
    let (out, meter) = aggregate_job(sql, &partitioned(1_000, 7), GuestLimits::default());
    out.unwrap();
    assert!(meter.peak_memory() > 2 << 20, "{}", meter.peak_memory());
}

#[test]
fn a_nan_written_bit_by_bit_leaves_the_guest_canonical() {
    // The guest writes a NaN whose payload spells 0xDEADBEEF: a covert channel past any
    // scan of values, through the built-in sum and avg.
    let body = format!(
        r#"(local.set $n (call $rows (local.get $b)))
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (i64.store (i32.add (i32.const {OUT_DATA}) (i32.mul (local.get $i) (i32.const 8)))
                (i64.const 0x7FF80000DEADBEEF))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (call $desc (i32.const 3) (local.get $n) (i32.const 0) (i32.const 0) (i32.const {OUT_DATA}) (i32.mul (local.get $n) (i32.const 8)))"#
    );
    let wasm = guest("int64) -> float64", &body, "");
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(&wasm).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for sql in [
        "SELECT f(x) AS y FROM t",
        "SELECT sum(f(x)) AS y FROM t",
        "SELECT avg(f(x)) AS y FROM t",
    ] {
        let meter = Arc::new(JobMeter::new(tight()));
        let out = rt
            .block_on(run_query(
                sql,
                &table(&[1, 2, 3]),
                sandbox.udfs(&module, &meter),
                EngineLimits::default(),
            ))
            .unwrap();
        for b in &out.batches {
            for v in b
                .column(0)
                .as_primitive::<arrow::datatypes::Float64Type>()
                .values()
            {
                assert_eq!(v.to_bits(), f64::NAN.to_bits(), "{sql}: {:#x}", v.to_bits());
            }
        }
    }
}

#[test]
fn text_from_a_module_is_defused_and_cut_short_in_every_message() {
    // An import named with terminal escapes (cursor up, erase line), a thousand times over.
    let imports: String = (0..1_000)
        .map(|i| format!(r#"(import "env" "\1b[1A\1b[2Kvalid Tidegate module {i:0>200}" (func))"#))
        .collect();
    let err = load(&wat::parse_str(format!("(module {imports})")).unwrap())
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\x1b'), "{err}");
    assert!(err.contains("\\u{1b}[1A"), "{err}");
    assert!(err.len() < 400, "{} bytes", err.len());
    // A manifest line with the same escapes, and a bidirectional override.
    let manifest = "scalar f(int64) -> int64\nscalar g\x1b[8m\u{202E}hidden";
    let wasm = wat::parse_str(format!(
        r#"(module (memory (export "memory") 1)
            (data (i32.const 16) "\20\00\00\00\{len:02x}\00\00\00")
            (data (i32.const 32) "{text}")
            (func (export "tg_abi_version") (result i32) i32.const 1)
            (func (export "tg_manifest") (result i32) i32.const 16)
            (func (export "tg_alloc") (param i32) (result i32) i32.const 0)
            (func (export "tg_scalar") (param i32 i32) (result i32) i32.const 0)
            (func (export "tg_error") (result i32) i32.const 16))"#,
        len = manifest.len(),
        text = manifest
            .bytes()
            .map(|b| format!("\\{b:02x}"))
            .collect::<String>(),
    ))
    .unwrap();
    let err = load(&wasm).unwrap_err().to_string();
    assert!(!err.contains('\x1b') && !err.contains('\u{202E}'), "{err}");
    assert!(err.contains("g\\u{1b}[8m\\u{202e}hidden"), "{err}");
}

#[test]
fn a_table_functions_pull_is_bounded_before_anything_is_copied() {
    // 26 text columns, each naming the same 6 MB of guest memory as its one value: 156 MB
    // if copied out, from an instance of 6.5 MB.
    let names: Vec<String> = ('a'..='z').map(|c| format!("{c} utf8")).collect();
    let manifest = format!("table explode(int64) -> ({})", names.join(", "));
    let columns: String = (0..26)
        .map(|i| {
            let d = 1_048_576 + 8 + 28 * i;
            format!(
                "(i32.store (i32.const {d}) (i32.const 4))
                 (i32.store (i32.const {}) (i32.const 1))
                 (i32.store (i32.const {}) (i32.const 2097152))
                 (i32.store (i32.const {}) (i32.const 0))
                 (i32.store (i32.const {}) (i32.const 6000000))",
                d + 4,
                d + 16,
                d + 20,
                d + 24
            )
        })
        .collect();
    let wasm = abi(
        &manifest,
        &format!(
            r#"(func (export "tg_table_open") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_push") (param i32 i32) (result i32) i32.const 1)
            (func (export "tg_table_close") (param i32) (result i32) i32.const 1)
            (func (export "tg_table_pull") (param i32) (result i32)
                (drop (memory.grow (i32.const 60)))
                (i32.store (i32.const 2097156) (i32.const 6000000))
                (i32.store (i32.const 1048576) (i32.const 1))
                (i32.store (i32.const 1048580) (i32.const 26))
                {columns}
                i32.const 1048576)"#
        ),
    );
    let sandbox = Arc::new(Sandbox::new().unwrap());
    let module = sandbox.load(&wasm).unwrap();
    let meter = Arc::new(JobMeter::new(GuestLimits::default()));
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run_query(
            "SELECT count(*) AS n FROM explode('t', 'x')",
            &table(&[1, 2, 3]),
            sandbox.udfs(&module, &meter),
            EngineLimits::default(),
        ))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "limit exceeded: function `explode` returned 148 MiB at once; at most 64 MiB are read per call"
    );
    assert_eq!(meter.output_bytes(), 0, "nothing was copied out");
}
