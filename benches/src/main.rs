//! `tidegate-bench`: WASM UDFs against the same functions as native DataFusion UDFs, run in
//! the same process through the same query path, and an aggregate over the encrypted store
//! against plaintext Parquet; prints times and ratios.
//!
//! Usage: `cargo run --release -p tidegate-benches -- [--rows N] [--reps R] [--gate-only | --import-only [--csv] | --load-only | --memory-only | --scale VISITS SPOTS]`

/// The allocator the `tidegate` binary runs with, so that the measurements are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, StringBuilder,
};
use arrow::compute::kernels::arity::{binary, unary};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidegate_policy::{ColumnSpec, DataType as ColType};
use tidegate_runtime::{
    EngineLimits, Functions, GuestLimits, JobMeter, Sandbox, TableData, TableInput, run_query,
};

mod aggregate;
mod budgets;
mod gate;
mod import;
mod latency;
mod memory;
mod scale;
mod scan;
mod storage;

const BATCH: usize = 8192;

/// A native DataFusion UDF over an Arrow kernel: the baseline.
struct Native {
    name: &'static str,
    signature: Signature,
    ret: DataType,
    f: fn(&[ArrayRef]) -> ArrayRef,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Native {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Native {}

impl Hash for Native {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for Native {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(self.ret.clone())
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        Ok(ColumnarValue::Array((self.f)(&arrays)))
    }
}

fn native(
    name: &'static str,
    args: Vec<DataType>,
    ret: DataType,
    f: fn(&[ArrayRef]) -> ArrayRef,
) -> ScalarUDF {
    ScalarUDF::new_from_impl(Native {
        name,
        signature: Signature::exact(args, Volatility::Immutable),
        ret,
        f,
    })
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a as i64
}

fn natives() -> Functions {
    Functions {
        scalars: native_scalars(),
        aggregates: vec![aggregate::native_sum_sq()],
        ..Functions::default()
    }
}

fn native_scalars() -> Vec<ScalarUDF> {
    vec![
        native(
            "plus_one",
            vec![DataType::Float64],
            DataType::Float64,
            |a| {
                Arc::new(unary::<Float64Type, _, Float64Type>(
                    a[0].as_primitive(),
                    |x| x + 1.0,
                ))
            },
        ),
        native(
            "int_gcd",
            vec![DataType::Int64, DataType::Int64],
            DataType::Int64,
            |a| {
                Arc::new(
                    binary::<Int64Type, Int64Type, _, Int64Type>(
                        a[0].as_primitive(),
                        a[1].as_primitive(),
                        gcd,
                    )
                    .expect("same lengths"),
                )
            },
        ),
        native("mask_mobile", vec![DataType::Utf8], DataType::Utf8, |a| {
            let s = a[0].as_string::<i32>();
            let mut b = StringBuilder::with_capacity(s.len(), s.len() * 11);
            for v in s.iter() {
                match v {
                    Some(m) if m.len() == 11 && m.is_ascii() => {
                        b.append_value(format!("{}****{}", &m[..3], &m[7..]));
                    }
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }),
    ]
}

fn data(rows: usize) -> Vec<TableInput> {
    let mut rng = StdRng::seed_from_u64(42);
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
        Field::new("m", DataType::Utf8, false),
        Field::new("k", DataType::Int64, false),
    ]));
    let mut batches = Vec::new();
    let mut done = 0;
    while done < rows {
        let n = BATCH.min(rows - done);
        let x: Float64Array = (0..n).map(|_| rng.random::<f64>() * 1000.0).collect();
        let a: Int64Array = (0..n)
            .map(|_| rng.random_range(1..1_000_000_000i64))
            .collect();
        let b: Int64Array = (0..n)
            .map(|_| rng.random_range(1..1_000_000_000i64))
            .collect();
        let m: StringArray = (0..n)
            .map(|_| {
                Some(format!(
                    "1{}{:09}",
                    rng.random_range(3..=9),
                    rng.random_range(0..1_000_000_000u32)
                ))
            })
            .collect();
        // 1,000 groups for the aggregate.
        let k: Int64Array = (0..n).map(|_| rng.random_range(0..1_000i64)).collect();
        batches.push(
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(x),
                    Arc::new(a),
                    Arc::new(b),
                    Arc::new(m),
                    Arc::new(k),
                ],
            )
            .expect("columns match the schema"),
        );
        done += n;
    }
    let spec = |name: &str, data_type| ColumnSpec {
        name: name.into(),
        data_type,
        tags: vec![],
    };
    vec![TableInput {
        name: "t".into(),
        columns: vec![
            spec("x", ColType::Float64),
            spec("a", ColType::Int64),
            spec("b", ColType::Int64),
            spec("m", ColType::Utf8),
            spec("k", ColType::Int64),
        ],
        data: TableData::Memory(batches),
    }]
}

/// The best of `reps` runs of `sql`, with the UDFs `make` gives for each run.
fn time_query(
    rt: &tokio::runtime::Runtime,
    sql: &str,
    tables: &[TableInput],
    reps: usize,
    make: &dyn Fn() -> Functions,
) -> Duration {
    (0..reps)
        .map(|_| {
            let udfs = make();
            let started = Instant::now();
            let out = rt
                .block_on(run_query(sql, tables, udfs, unlimited_rows()))
                .expect("the benchmark query runs");
            let elapsed = started.elapsed();
            assert!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
            elapsed
        })
        .min()
        .expect("at least one repetition")
}

/// The engine's limits, except that the benchmarks return every row.
fn unlimited_rows() -> EngineLimits {
    EngineLimits {
        output_rows: usize::MAX,
        ..EngineLimits::default()
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // As the `tidegate` binary runs, so that the measurements are the server's.
    let _ = tidegate_runtime::without_huge_pages();
    let rows = arg("--rows", 10_000_000);
    let reps = arg("--reps", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--scale") {
        let (Some(visits), Some(spots)) = (args.get(at + 1), args.get(at + 2)) else {
            eprintln!("usage: tidegate-bench --scale VISITS.parquet SPOTS.parquet [--reps R]");
            std::process::exit(2);
        };
        scale::scale(
            &rt,
            std::path::Path::new(visits),
            std::path::Path::new(spots),
            reps,
            args.iter().any(|a| a == "--cluster"),
            args.iter()
                .position(|a| a == "--only")
                .and_then(|at| args.get(at + 1))
                .map(String::as_str),
        );
        return;
    }
    if std::env::args().any(|a| a == "--load-only") {
        println!("tidegate-bench: the API under load, {rows} rows");
        latency::api_under_load(rows);
        return;
    }
    if std::env::args().any(|a| a == "--import-only") {
        println!("tidegate-bench: an import of {rows} rows");
        import::import_workload(rows, std::env::args().any(|a| a == "--csv"));
        return;
    }
    if std::env::args().any(|a| a == "--memory-only") {
        println!("tidegate-bench: the gate's memory, {rows} subjects, best of {reps}");
        memory::memory_workload(rows as u64, reps);
        return;
    }
    if std::env::args().any(|a| a == "--gate-only") {
        println!("tidegate-bench: the gate's workloads only, {rows} rows, best of {reps}");
        gate_workloads(&rt, rows, reps);
        return;
    }
    let tables = data(rows);
    let limited = Arc::new(Sandbox::new().expect("sandbox"));
    let unlimited = Arc::new(Sandbox::without_cpu_limits_for_benchmarks().expect("sandbox"));
    let wasm = tidegate_server::BENCH_UDF_WASM;
    let limited_module = limited.load(wasm).expect("the bench module is valid");
    let unlimited_module = unlimited.load(wasm).expect("the bench module is valid");
    let limits = GuestLimits {
        fuel: u64::MAX / 2,
        ..GuestLimits::default()
    };
    println!("tidegate-bench: {rows} rows in {BATCH}-row batches, best of {reps}; 2 partitions");
    println!(
        "{:<28} {:>10} {:>12} {:>7} {:>14} {:>7}",
        "workload", "native ms", "wasm ms", "ratio", "wasm no-limit", "ratio"
    );
    for (workload, sql) in [
        ("(a) x + 1 on f64", "SELECT plus_one(x) FROM t"),
        ("(b) gcd of two i64", "SELECT int_gcd(a, b) FROM t"),
        ("(c) mask a mobile number", "SELECT mask_mobile(m) FROM t"),
        (
            "(d) sum of squares by key",
            "SELECT k, sum_sq(x) FROM t GROUP BY k",
        ),
    ] {
        let native_t = time_query(&rt, sql, &tables, reps, &natives);
        let wasm_t = time_query(&rt, sql, &tables, reps, &|| {
            limited.udfs(&limited_module, &Arc::new(JobMeter::new(limits)))
        });
        let free_t = time_query(&rt, sql, &tables, reps, &|| {
            unlimited.udfs(&unlimited_module, &Arc::new(JobMeter::new(limits)))
        });
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{workload:<28} {:>10.1} {:>12.1} {:>6.2}x {:>14.1} {:>6.2}x",
            ms(native_t),
            ms(wasm_t),
            ms(wasm_t) / ms(native_t),
            ms(free_t),
            ms(free_t) / ms(native_t)
        );
    }
    let builtin = time_query(
        &rt,
        "SELECT k, sum(x * x) FROM t GROUP BY k",
        &tables,
        reps,
        &Functions::default,
    );
    println!(
        "{:<28} {:>10.1}   (DataFusion's own sum(x * x) by key, for reference)",
        "(d') built-in sum(x * x)",
        builtin.as_secs_f64() * 1e3
    );
    let s = scan::measure(rows, reps);
    println!(
        "{:<28} {:>10.1} {:>12.1}   ({:.0} ns per value on one thread; {} of {rows} values flagged; baseline: reading them)",
        "(f) sensitive-data scan",
        s.base.as_secs_f64() * 1e3,
        s.one_thread.as_secs_f64() * 1e3,
        s.one_thread.as_secs_f64() * 1e9 / rows as f64,
        s.flagged,
    );
    println!(
        "{:<28} {:>10.1} {:>12.1} {:>6.2}x   (the gate's scan on {} threads against one thread)",
        "(f') the gate's scan",
        s.one_thread.as_secs_f64() * 1e3,
        s.gate.as_secs_f64() * 1e3,
        s.one_thread.as_secs_f64() / s.gate.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
    );
    let m = storage::measure(&rt, rows, reps);
    println!(
        "{:<28} {:>10.1} {:>12.1} {:>6.2}x   (plaintext Parquet in plain DataFusion vs the encrypted store; {:.1} of {:.1} MB decrypted)",
        "(e) GROUP BY, encrypted",
        m.plain.as_secs_f64() * 1e3,
        m.sealed.as_secs_f64() * 1e3,
        m.sealed.as_secs_f64() / m.plain.as_secs_f64(),
        m.decrypted as f64 / 1e6,
        m.size as f64 / 1e6
    );

    // Fixed cost of one batch call: a 1-row batch through an already instantiated guest.
    let one: ArrayRef = Arc::new(Float64Array::from(vec![1.0]));
    for (label, sandbox, module) in [
        ("limits on", &limited, &limited_module),
        ("limits off", &unlimited, &unlimited_module),
    ] {
        let session = sandbox.session(module, &Arc::new(JobMeter::new(limits)));
        session
            .call("plus_one", std::slice::from_ref(&one), 1)
            .expect("warm-up");
        let calls = 100_000;
        let started = Instant::now();
        for _ in 0..calls {
            session
                .call("plus_one", std::slice::from_ref(&one), 1)
                .expect("a call");
        }
        println!(
            "fixed cost per batch call ({label}): {:.2} us",
            started.elapsed().as_secs_f64() * 1e6 / calls as f64
        );
    }
    let n = 10_000;
    let started = Instant::now();
    for _ in 0..n {
        limited
            .instantiate_and_drop(&limited_module, GuestLimits::default())
            .expect("instantiates");
    }
    println!(
        "instantiation from the compiled-module cache: {:.2} us",
        started.elapsed().as_secs_f64() * 1e6 / n as f64
    );

    // (g) and (h): the per-job budgets.
    let spin = budgets::spinning_guest(&rt, &limited);
    println!(
        "(g) a spinning guest ends its job after {:.2} s under the default limits ({} fuel charged): {}",
        spin.elapsed.as_secs_f64(),
        spin.fuel,
        spin.error
    );
    let n = rows.min(200_000);
    let distinct = (n / 10).clamp(100, 2_000);
    let plain = budgets::cpu_per_fuel(
        &rt,
        &limited,
        &limited_module,
        "SELECT int_gcd(a, b) FROM t",
        budgets::partitions(n, distinct),
    );
    let window = budgets::cpu_per_fuel(
        &rt,
        &limited,
        &limited_module,
        "SELECT k, sum_sq(x) OVER (PARTITION BY k) FROM t",
        budgets::partitions(n, distinct),
    );
    println!(
        "(h) CPU per fuel charged: guest compute {:.3} ns ({} ms, {} fuel); window over {distinct} partitions {:.3} ns ({} ms, {} fuel, {} instances): {:.2}x",
        plain.ns_per_fuel(),
        plain.cpu_ms,
        plain.fuel,
        window.ns_per_fuel(),
        window.cpu_ms,
        window.fuel,
        window.instances,
        window.ns_per_fuel() / plain.ns_per_fuel()
    );

    gate_workloads(&rt, rows, reps);
    import::import_workload(rows, false);
    import::import_workload(rows, true);
    latency::api_under_load(rows);
    memory::memory_workload(rows.min(1_000_000) as u64, reps);
}

/// (i) and (j): the gate's analysis.
fn gate_workloads(rt: &tokio::runtime::Runtime, rows: usize, reps: usize) {
    for f in gate::fixed_cost(rt, reps) {
        println!(
            "(i) {:<24} {:>10.2} {:>12.2} {:>6.2}x   (plain DataFusion vs plan, lineage, run, contributions and gate, 1,000 rows per table)",
            f.name,
            f.plain.as_secs_f64() * 1e3,
            f.gated.as_secs_f64() * 1e3,
            f.gated.as_secs_f64() / f.plain.as_secs_f64()
        );
    }
    let g = gate::at_scale(rt, rows, reps);
    println!(
        "(j) gated aggregate, {rows} rows: plain DataFusion {:.1} ms; the job with the full gate {:.1} ms ({:.2}x; engine peak {:.0} MB); plain DataFusion also computing each subject's contributions {:.1} ms ({:.2}x of it)",
        g.plain.as_secs_f64() * 1e3,
        g.gated.as_secs_f64() * 1e3,
        g.gated.as_secs_f64() / g.plain.as_secs_f64(),
        g.peak_engine_memory as f64 / 1e6,
        g.plain_with_subjects.as_secs_f64() * 1e3,
        g.gated.as_secs_f64() / g.plain_with_subjects.as_secs_f64()
    );
}
