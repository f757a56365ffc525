//! The WebAssembly host: one hardened engine, module validation at upload, and scalar UDFs
//! that run guest functions batch at a time under fuel, epoch, memory and output limits.
//!
//! Every byte a guest returns is untrusted: pointers and lengths are bounds-checked with
//! checked arithmetic and arrays are built with arrow-rs's validating constructors.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, ArrayData, ArrayRef, AsArray, make_array};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type, Int64Type};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use wasmtime::{
    Config, Engine, ExternType, Instance, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    Module, PoolConcurrencyLimitError, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Strategy, Trap, TypedFunc, UpdateDeadline, ValType,
};

use crate::crypto::sha256_hex;
use crate::error::{Error, Result};
use crate::job::Functions;

/// The ABI version this host speaks (udf-sdk/ABI.md).
pub(crate) const ABI_VERSION: i32 = 1;
const MAX_MODULE_BYTES: usize = 16 << 20;
const MAX_DEFINED_FUNCTIONS: u32 = 20_000;
const MAX_BODY_BYTES: usize = 128 << 10;
const MAX_DATA_SEGMENTS: u32 = 1_000;
const MAX_DATA_BYTES: usize = 8 << 20;
const MAX_TABLE_ELEMENTS: u64 = 10_000;
const MAX_ELEMENT_ITEMS: u64 = 100_000;
const MAX_GLOBALS: u32 = 10_000;
const MAX_EXPORTS: u32 = 1_000;
/// Instances that can be alive at once in the process (jobs times partitions).
const POOL_INSTANCES: u32 = 256;
/// The largest memory cap a job may ask for.
pub(crate) const MAX_GUEST_MEMORY: usize = 1 << 30;
const MAX_MANIFEST_BYTES: usize = 64 << 10;
const MAX_FUNCTIONS: usize = 64;
const MAX_ARGS: usize = 8;
const EPOCH_TICK: Duration = Duration::from_millis(10);
const COLUMN_DESC: usize = 28;
const MAX_STATE_COLUMNS: usize = 4;
/// Compiled modules kept in memory (a module of 16 MiB compiles to tens of MiB).
const CACHED_MODULES: usize = 64;
const MAX_TABLE_COLUMNS: usize = 32;
/// The most rows one pull of a table function may return.
const MAX_PULL_ROWS: usize = 1 << 20;

/// Limits applied to every store of a job, before instantiation.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct GuestLimits {
    /// Total fuel the job's guests may burn (deterministic work).
    pub fuel: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one guest call, enforced by epoch interruption.
    pub call_timeout_ms: u64,
    /// Total bytes the job's guests may return.
    pub output_bytes: u64,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            fuel: 50_000_000_000,
            memory_bytes: 64 << 20,
            call_timeout_ms: 10_000,
            output_bytes: 1 << 30,
        }
    }
}

/// The column types of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasmType {
    Int32,
    Int64,
    Float64,
    Utf8,
    Date32,
    Boolean,
}

impl WasmType {
    fn id(self) -> u32 {
        match self {
            WasmType::Int32 => 1,
            WasmType::Int64 => 2,
            WasmType::Float64 => 3,
            WasmType::Utf8 => 4,
            WasmType::Date32 => 5,
            WasmType::Boolean => 6,
        }
    }

    /// The manifest's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            WasmType::Int32 => "int32",
            WasmType::Int64 => "int64",
            WasmType::Float64 => "float64",
            WasmType::Utf8 => "utf8",
            WasmType::Date32 => "date32",
            WasmType::Boolean => "boolean",
        }
    }

    fn parse(s: &str) -> Option<WasmType> {
        Some(match s {
            "int32" => WasmType::Int32,
            "int64" => WasmType::Int64,
            "float64" => WasmType::Float64,
            "utf8" => WasmType::Utf8,
            "date32" => WasmType::Date32,
            "boolean" => WasmType::Boolean,
            _ => return None,
        })
    }

    pub fn arrow(self) -> DataType {
        match self {
            WasmType::Int32 => DataType::Int32,
            WasmType::Int64 => DataType::Int64,
            WasmType::Float64 => DataType::Float64,
            WasmType::Utf8 => DataType::Utf8,
            WasmType::Date32 => DataType::Date32,
            WasmType::Boolean => DataType::Boolean,
        }
    }

    fn width(self) -> usize {
        match self {
            WasmType::Int32 | WasmType::Date32 => 4,
            WasmType::Int64 | WasmType::Float64 => 8,
            WasmType::Utf8 | WasmType::Boolean => 0,
        }
    }
}

/// One function a module exports, as its manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionSig {
    /// `scalar` or `aggregate`.
    pub kind: String,
    pub name: String,
    pub args: Vec<WasmType>,
    pub ret: WasmType,
    /// An aggregate's partial state, one column per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<WasmType>,
    /// A table function's output columns (its `ret` is the first one's type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<(String, WasmType)>,
}

/// A module that passed upload validation, compiled by this process.
pub struct ValidatedModule {
    pub hash: String,
    pub functions: Vec<FunctionSig>,
    pre: InstancePre<GuestState>,
}

impl std::fmt::Debug for ValidatedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedModule")
            .field("hash", &self.hash)
            .field("functions", &self.functions)
            .finish()
    }
}

struct GuestState {
    limits: StoreLimits,
    meter: Arc<JobMeter>,
    /// Epoch ticks the current call may still run.
    ticks_left: u64,
}

/// The trap a guest gets when its job is cancelled (its scenario suspended or revoked).
#[derive(Debug)]
struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the job was cancelled")
    }
}

impl std::error::Error for Cancelled {}

fn call_ticks(limits: &GuestLimits) -> u64 {
    limits
        .call_timeout_ms
        .div_ceil(EPOCH_TICK.as_millis() as u64)
}

/// The process's one wasmtime engine, its (empty) linker and the compiled-module cache.
pub struct Sandbox {
    engine: Engine,
    /// Fuel and epoch interruption; off only in the benchmarks' baseline.
    interruptible: bool,
    linker: Linker<GuestState>,
    /// Compiled modules by engine compatibility hash and module hash, compiled by this
    /// process from the bytes a user uploaded (never deserialized from them), oldest first out.
    cache: Mutex<ModuleCache>,
    /// The engine's compatibility hash (its settings and wasmtime's version).
    compatibility: String,
}

/// Compiled modules this process keeps, at most [`CACHED_MODULES`].
#[derive(Default)]
struct ModuleCache {
    modules: HashMap<String, Arc<ValidatedModule>>,
    order: std::collections::VecDeque<String>,
}

impl ModuleCache {
    fn get(&self, key: &str) -> Option<Arc<ValidatedModule>> {
        self.modules.get(key).cloned()
    }

    fn insert(&mut self, key: String, module: Arc<ValidatedModule>) {
        if self.modules.insert(key.clone(), module).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > CACHED_MODULES {
            if let Some(old) = self.order.pop_front() {
                self.modules.remove(&old);
            }
        }
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sandbox")
    }
}

impl Sandbox {
    /// Builds the hardened engine and starts its epoch ticker.
    pub fn new() -> Result<Sandbox> {
        Self::build(true)
    }

    /// A sandbox without fuel or epoch interruption, so benchmarks can measure what the CPU
    /// limit costs. Never used to run jobs: a guest in it can spin forever.
    pub fn without_cpu_limits_for_benchmarks() -> Result<Sandbox> {
        Self::build(false)
    }

    fn build(interruptible: bool) -> Result<Sandbox> {
        let mut c = Config::new();
        c.strategy(Strategy::Cranelift)
            .consume_fuel(interruptible)
            .epoch_interruption(interruptible)
            .max_wasm_stack(512 << 10)
            .cranelift_nan_canonicalization(true)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            .wasm_relaxed_simd(false)
            .wasm_tail_call(false)
            .wasm_custom_page_sizes(false)
            .wasm_wide_arithmetic(false)
            .wasm_stack_switching(false)
            .gc_support(false)
            .shared_memory(false);
        // Pooled slots make instantiation cheap; wasmtime zeroes a slot before reuse, and
        // nothing is kept resident between instances.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES * 2)
            .max_memories_per_module(1)
            .max_tables_per_module(2)
            .table_elements(MAX_TABLE_ELEMENTS as usize)
            .max_memory_size(MAX_GUEST_MEMORY)
            .max_core_instance_size(1 << 20)
            .linear_memory_keep_resident(0)
            .table_keep_resident(0);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c)
            .map_err(|e| Error::Internal(format!("wasm engine configuration: {e}")))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("tidegate-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::Internal(format!("epoch ticker: {e}")))?;
        // The guest ABI has no imports: the linker stays empty.
        let linker = Linker::new(&engine);
        let compatibility = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        Ok(Sandbox {
            engine,
            interruptible,
            linker,
            cache: Mutex::new(ModuleCache::default()),
            compatibility,
        })
    }

    /// Validates and compiles a module uploaded by a user, and reads its manifest in a
    /// limited instance. The module's identity is the SHA-256 of its bytes.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<ValidatedModule>> {
        let hash = sha256_hex(bytes);
        let key = format!("{}:{hash}", self.compatibility);
        if let Some(m) = self.cache.lock().expect("module cache").get(&key) {
            return Ok(m);
        }
        let validated = Arc::new(self.validate(bytes, hash)?);
        self.cache
            .lock()
            .expect("module cache")
            .insert(key, Arc::clone(&validated));
        Ok(validated)
    }

    fn validate(&self, bytes: &[u8], hash: String) -> Result<ValidatedModule> {
        let invalid = |why: String| Error::BadInput(format!("invalid module: {why}"));
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(invalid(format!(
                "{} bytes is over the {} byte limit",
                bytes.len(),
                MAX_MODULE_BYTES
            )));
        }
        if !bytes.starts_with(b"\0asm\x01\0\0\0") {
            return Err(invalid(
                "not a WebAssembly core module (precompiled artifacts and components are refused)"
                    .into(),
            ));
        }
        precheck(bytes, GuestLimits::default().memory_bytes).map_err(invalid)?;
        let module = Module::new(&self.engine, bytes).map_err(|e| invalid(format!("{e:#}")))?;
        let imports: Vec<String> = module
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect();
        if !imports.is_empty() {
            return Err(invalid(format!(
                "imports are not allowed (the ABI has no host functions): {}",
                imports.join(", ")
            )));
        }
        let none: [ValType; 0] = [];
        let one = [ValType::I32];
        let two = [ValType::I32, ValType::I32];
        let required: [(&str, &[ValType], &[ValType]); 5] = [
            ("tg_abi_version", &none, &one),
            ("tg_manifest", &none, &one),
            ("tg_alloc", &one, &one),
            ("tg_scalar", &two, &one),
            ("tg_error", &none, &one),
        ];
        for (name, params, results) in required {
            check_export(&module, name, params, results).map_err(invalid)?;
        }
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err(invalid("required export `memory` is missing".into()));
        }
        // The linker is empty: this fails for any import, which was refused above anyway.
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let mut validated = ValidatedModule {
            hash,
            functions: Vec::new(),
            pre,
        };
        // Reading the manifest is cheap; a module that needs more than this is refused.
        let meter = Arc::new(JobMeter::new(GuestLimits {
            fuel: 1_000_000_000,
            call_timeout_ms: 2_000,
            output_bytes: 1 << 20,
            ..GuestLimits::default()
        }));
        let mut guest = self.instantiate(&validated, &meter)?;
        let version = guest.call_i32("tg_abi_version", ())?;
        if version != ABI_VERSION {
            return Err(invalid(format!(
                "ABI version {version}; this host speaks version {ABI_VERSION}"
            )));
        }
        let desc = guest.call_i32("tg_manifest", ())?;
        let manifest = guest.read_pair(desc, MAX_MANIFEST_BYTES)?;
        let manifest =
            String::from_utf8(manifest).map_err(|_| invalid("the manifest is not UTF-8".into()))?;
        validated.functions = parse_manifest(&manifest).map_err(invalid)?;
        if validated.functions.iter().any(|f| f.kind == "aggregate") {
            let four = [ValType::I32, ValType::I32, ValType::I32, ValType::I32];
            let aggregate: [(&str, &[ValType], &[ValType]); 5] = [
                ("tg_agg_update", &four, &one),
                ("tg_agg_merge", &four, &one),
                ("tg_agg_state", &one, &one),
                ("tg_agg_evaluate", &one, &one),
                ("tg_agg_reset", &one, &one),
            ];
            for (name, params, results) in aggregate {
                check_export(&module, name, params, results).map_err(invalid)?;
            }
        }
        if validated.functions.iter().any(|f| f.kind == "table") {
            let table: [(&str, &[ValType], &[ValType]); 4] = [
                ("tg_table_open", &one, &one),
                ("tg_table_push", &two, &one),
                ("tg_table_pull", &one, &one),
                ("tg_table_close", &one, &one),
            ];
            for (name, params, results) in table {
                check_export(&module, name, params, results).map_err(invalid)?;
            }
        }
        Ok(validated)
    }

    fn instantiate(&self, module: &ValidatedModule, meter: &Arc<JobMeter>) -> Result<Guest> {
        let limits = meter.limits;
        let mut store = Store::new(
            &self.engine,
            GuestState {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .table_elements(10_000)
                    .instances(1)
                    .tables(2)
                    .memories(1)
                    .build(),
                meter: Arc::clone(meter),
                ticks_left: call_ticks(&limits),
            },
        );
        store.limiter(|s| &mut s.limits);
        // Limits are in place before instantiation, so a start function is covered too.
        if self.interruptible {
            store
                .set_fuel(meter.remaining_fuel())
                .map_err(|e| Error::Internal(format!("fuel: {e}")))?;
            // Every tick the guest is checked: a cancelled job stops within one tick, and a
            // call that used up its ticks is interrupted.
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut ctx| {
                let state = ctx.data_mut();
                if state.meter.is_cancelled() {
                    return Err(wasmtime::Error::new(Cancelled));
                }
                if state.ticks_left == 0 {
                    return Ok(UpdateDeadline::Interrupt);
                }
                state.ticks_left -= 1;
                Ok(UpdateDeadline::Continue(1))
            });
        }
        let instance = module.pre.instantiate(&mut store);
        if self.interruptible {
            let fuel_left = store.get_fuel().unwrap_or(0);
            meter.charge(meter.remaining_fuel().saturating_sub(fuel_left));
        }
        let instance = instance.map_err(|e| classify_trap(&e, "instantiation"))?;
        Guest::new(store, instance, Arc::clone(meter), self.interruptible)
    }

    /// Instantiates `module` under `limits` and drops the instance: what every job pays once
    /// per partition, measured by the benchmarks.
    pub fn instantiate_and_drop(
        &self,
        module: &ValidatedModule,
        limits: GuestLimits,
    ) -> Result<()> {
        let meter = Arc::new(JobMeter::new(limits));
        self.instantiate(module, &meter).map(drop)
    }

    /// A session of one job with one module: its instances are created on demand, reused
    /// across the job's batches and never shared with another session.
    pub fn session(
        self: &Arc<Self>,
        module: &Arc<ValidatedModule>,
        meter: &Arc<JobMeter>,
    ) -> GuestSession {
        GuestSession {
            pool: Arc::new(JobInstances {
                sandbox: Arc::clone(self),
                module: Arc::clone(module),
                meter: Arc::clone(meter),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The scalar and aggregate UDFs of `module` for one job.
    pub fn udfs(
        self: &Arc<Self>,
        module: &Arc<ValidatedModule>,
        meter: &Arc<JobMeter>,
    ) -> Functions {
        let pool = self.session(module, meter).pool;
        Functions {
            scalars: scalars_of(&pool),
            aggregates: crate::guest_aggregate::aggregate_udfs(&pool),
            tables: crate::guest_table::table_functions(&pool),
        }
    }

    /// Scalar UDFs for a job over the functions of `module`; instances are created per job and
    /// never shared with another job.
    pub fn scalar_udfs(
        self: &Arc<Self>,
        module: &Arc<ValidatedModule>,
        meter: &Arc<JobMeter>,
    ) -> Vec<ScalarUDF> {
        scalars_of(&self.session(module, meter).pool)
    }
}

/// `[a-z_][a-z0-9_]*`, at most 64 bytes: a function or column name of the manifest.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An export the ABI requires, with its exact type.
fn check_export(
    module: &Module,
    name: &str,
    params: &[ValType],
    results: &[ValType],
) -> std::result::Result<(), String> {
    match module.get_export(name) {
        Some(ExternType::Func(f))
            if f.params()
                .map(|p| p.to_string())
                .eq(params.iter().map(|p| p.to_string()))
                && f.results()
                    .map(|p| p.to_string())
                    .eq(results.iter().map(|p| p.to_string())) =>
        {
            Ok(())
        }
        Some(_) => Err(format!("export `{name}` has the wrong type")),
        None => Err(format!("required export `{name}` is missing")),
    }
}

/// Structural caps checked by parsing, before anything is compiled: a module too large or too
/// complex is refused cheaply with a report of what is over which limit.
fn precheck(bytes: &[u8], memory_cap: usize) -> std::result::Result<(), String> {
    use wasmparser::{ElementItems, Encoding, Parser, Payload};
    let over = |what: &str, n: u64, max: u64| format!("{what}: {n} is over the limit of {max}");
    let mut data_bytes = 0usize;
    let mut element_items = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("malformed: {e}"))? {
            Payload::Version { encoding, .. } if encoding != Encoding::Module => {
                return Err("a component; only core modules are accepted".into());
            }
            Payload::FunctionSection(r) if r.count() > MAX_DEFINED_FUNCTIONS => {
                return Err(over(
                    "functions",
                    r.count().into(),
                    MAX_DEFINED_FUNCTIONS.into(),
                ));
            }
            Payload::CodeSectionEntry(body) if body.range().len() > MAX_BODY_BYTES => {
                return Err(over(
                    "bytes in one function body",
                    body.range().len() as u64,
                    MAX_BODY_BYTES as u64,
                ));
            }
            Payload::GlobalSection(r) if r.count() > MAX_GLOBALS => {
                return Err(over("globals", r.count().into(), MAX_GLOBALS.into()));
            }
            Payload::ExportSection(r) if r.count() > MAX_EXPORTS => {
                return Err(over("exports", r.count().into(), MAX_EXPORTS.into()));
            }
            Payload::MemorySection(r) => {
                if r.count() > 1 {
                    return Err(over("memories", r.count().into(), 1));
                }
                for m in r {
                    let m = m.map_err(|e| format!("malformed memory: {e}"))?;
                    let max_pages = (memory_cap / 65536) as u64;
                    if m.initial > max_pages {
                        return Err(over("initial memory pages", m.initial, max_pages));
                    }
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    let t = t.map_err(|e| format!("malformed table: {e}"))?;
                    if t.ty.initial > MAX_TABLE_ELEMENTS {
                        return Err(over(
                            "initial table elements",
                            t.ty.initial,
                            MAX_TABLE_ELEMENTS,
                        ));
                    }
                }
            }
            Payload::ElementSection(r) => {
                for e in r {
                    let e = e.map_err(|e| format!("malformed element segment: {e}"))?;
                    element_items += match e.items {
                        ElementItems::Functions(f) => u64::from(f.count()),
                        ElementItems::Expressions(_, x) => u64::from(x.count()),
                    };
                    if element_items > MAX_ELEMENT_ITEMS {
                        return Err(over(
                            "element segment items",
                            element_items,
                            MAX_ELEMENT_ITEMS,
                        ));
                    }
                }
            }
            Payload::DataSection(r) => {
                if r.count() > MAX_DATA_SEGMENTS {
                    return Err(over(
                        "data segments",
                        r.count().into(),
                        MAX_DATA_SEGMENTS.into(),
                    ));
                }
                for d in r {
                    let d = d.map_err(|e| format!("malformed data segment: {e}"))?;
                    data_bytes += d.data.len();
                    if data_bytes > MAX_DATA_BYTES {
                        return Err(over(
                            "bytes of data segments",
                            data_bytes as u64,
                            MAX_DATA_BYTES as u64,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_manifest(text: &str) -> std::result::Result<Vec<FunctionSig>, String> {
    let mut out: Vec<FunctionSig> = Vec::new();
    for line in text.lines() {
        let bad = || {
            format!(
                "manifest line `{}` is malformed",
                line.chars().take(80).collect::<String>()
            )
        };
        let (kind, rest) = if let Some(rest) = line.strip_prefix("scalar ") {
            ("scalar", rest)
        } else if let Some(rest) = line.strip_prefix("aggregate ") {
            ("aggregate", rest)
        } else if let Some(rest) = line.strip_prefix("table ") {
            ("table", rest)
        } else {
            return Err("a manifest line is `scalar NAME(TYPES) -> TYPE` or `aggregate NAME(TYPE) -> TYPE state(TYPES)`".into());
        };
        let (name, rest) = rest.split_once('(').ok_or_else(bad)?;
        let (args, ret) = rest.split_once(") -> ").ok_or_else(bad)?;
        let (ret, state) = match kind {
            "aggregate" => {
                let (ret, state) = ret.split_once(" state(").ok_or_else(bad)?;
                let state = state.strip_suffix(')').ok_or_else(bad)?;
                let state: Vec<WasmType> = state
                    .split(',')
                    .map(|t| WasmType::parse(t.trim()).ok_or_else(bad))
                    .collect::<std::result::Result<_, _>>()?;
                if state.is_empty()
                    || state.len() > MAX_STATE_COLUMNS
                    || state.contains(&WasmType::Utf8)
                {
                    return Err(format!(
                        "aggregate `{}` must keep 1 to {MAX_STATE_COLUMNS} state columns of fixed width or boolean",
                        name.chars().take(80).collect::<String>()
                    ));
                }
                (ret, state)
            }
            _ => (ret, Vec::new()),
        };
        let mut columns = Vec::new();
        let ret = if kind == "table" {
            let list = ret
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?;
            for c in list.split(',') {
                let (cname, ty) = c.trim().split_once(' ').ok_or_else(bad)?;
                let ty = WasmType::parse(ty.trim()).ok_or_else(bad)?;
                if !valid_name(cname) || cname.starts_with("__tg") {
                    return Err(format!(
                        "output column `{}` is not [a-z_][a-z0-9_]{{0,63}} (and not __tg*)",
                        cname.chars().take(80).collect::<String>()
                    ));
                }
                if columns.iter().any(|(n, _)| n == cname) {
                    return Err(format!("output column `{cname}` is declared twice"));
                }
                columns.push((cname.to_string(), ty));
            }
            if columns.len() > MAX_TABLE_COLUMNS {
                return Err(format!(
                    "a table function has at most {MAX_TABLE_COLUMNS} output columns"
                ));
            }
            columns[0].1.name()
        } else {
            ret
        };
        if !valid_name(name) {
            return Err(format!(
                "function name `{}` is not [a-z_][a-z0-9_]{{0,63}}",
                name.chars().take(80).collect::<String>()
            ));
        }
        let args: Vec<WasmType> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',')
                .map(|a| WasmType::parse(a.trim()).ok_or_else(bad))
                .collect::<std::result::Result<_, _>>()?
        };
        if args.len() > MAX_ARGS {
            return Err(format!(
                "function `{name}` has more than {MAX_ARGS} arguments"
            ));
        }
        let ret = WasmType::parse(ret.trim()).ok_or_else(bad)?;
        if out.iter().any(|f| f.name == name) {
            return Err(format!("function `{name}` is declared twice"));
        }
        if kind == "aggregate" && args.len() != 1 {
            return Err(format!("aggregate `{name}` must take exactly one argument"));
        }
        out.push(FunctionSig {
            kind: kind.into(),
            name: name.to_string(),
            args,
            ret,
            state,
            columns,
        });
        if out.len() > MAX_FUNCTIONS {
            return Err(format!("more than {MAX_FUNCTIONS} functions"));
        }
    }
    if out.is_empty() {
        return Err("the manifest declares no functions".into());
    }
    Ok(out)
}

/// Resource use of one job's guests, and its limits.
#[derive(Debug)]
pub struct JobMeter {
    pub limits: GuestLimits,
    cancelled: std::sync::atomic::AtomicBool,
    fuel_used: AtomicU64,
    output_bytes: AtomicU64,
    peak_memory: AtomicU64,
    calls: AtomicU64,
}

impl JobMeter {
    pub fn new(limits: GuestLimits) -> Self {
        JobMeter {
            limits,
            cancelled: std::sync::atomic::AtomicBool::new(false),
            fuel_used: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
            peak_memory: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// Cancels the job: its guests trap at the next epoch tick, and no new call starts.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn remaining_fuel(&self) -> u64 {
        self.limits
            .fuel
            .saturating_sub(self.fuel_used.load(Ordering::Relaxed))
    }

    fn charge(&self, fuel: u64) {
        self.fuel_used.fetch_add(fuel, Ordering::Relaxed);
    }

    pub fn fuel_used(&self) -> u64 {
        self.fuel_used.load(Ordering::Relaxed)
    }

    pub fn peak_memory(&self) -> u64 {
        self.peak_memory.load(Ordering::Relaxed)
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }
}

/// Maps a wasmtime error to our error class; trap descriptions name the trap, never data.
fn cancelled_error() -> Error {
    Error::Refused("the job was cancelled: its scenario was suspended or revoked".into())
}

fn classify_trap(e: &wasmtime::Error, during: &str) -> Error {
    if e.downcast_ref::<Cancelled>().is_some() {
        return cancelled_error();
    }
    if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return Error::Limit("the sandbox is running its maximum of instances; retry later".into());
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            Error::Limit(format!("the job's fuel budget ran out during {during}"))
        }
        Some(Trap::Interrupt) => Error::Limit(format!(
            "a guest call exceeded its time limit during {during}"
        )),
        Some(Trap::StackOverflow) => {
            Error::Limit(format!("the guest overflowed its stack during {during}"))
        }
        Some(trap) => Error::BadInput(format!("the guest trapped during {during}: {trap}")),
        None => Error::BadInput(format!(
            "the guest failed during {during}: {}",
            e.root_cause()
        )),
    }
}

/// One job's use of one module, outside SQL: calls a function on arrays.
#[derive(Debug, Clone)]
pub struct GuestSession {
    pool: Arc<JobInstances>,
}

impl GuestSession {
    /// Calls the scalar function `name` on `args` (all of `n_rows` rows).
    pub fn call(&self, name: &str, args: &[ArrayRef], n_rows: usize) -> Result<ArrayRef> {
        let (id, sig) = self
            .pool
            .module
            .functions
            .iter()
            .enumerate()
            .find(|(_, f)| f.name == name)
            .ok_or_else(|| Error::BadInput(format!("the module has no function `{name}`")))?;
        self.pool.call(id as i32, sig, args, n_rows)
    }
}

/// One live instance, owned by one job.
pub(crate) struct Guest {
    store: Store<GuestState>,
    instance: Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    scalar: TypedFunc<(i32, i32), i32>,
    meter: Arc<JobMeter>,
    interruptible: bool,
}

impl Guest {
    fn new(
        mut store: Store<GuestState>,
        instance: Instance,
        meter: Arc<JobMeter>,
        interruptible: bool,
    ) -> Result<Guest> {
        let missing = |what: &str| Error::BadInput(format!("invalid module: `{what}` missing"));
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| missing("memory"))?;
        let alloc = instance
            .get_typed_func(&mut store, "tg_alloc")
            .map_err(|_| missing("tg_alloc"))?;
        let scalar = instance
            .get_typed_func(&mut store, "tg_scalar")
            .map_err(|_| missing("tg_scalar"))?;
        Ok(Guest {
            store,
            instance,
            memory,
            alloc,
            scalar,
            meter,
            interruptible,
        })
    }

    /// Runs `f` with fresh fuel and deadline, and charges what it burned to the job.
    fn metered<R>(
        &mut self,
        during: &str,
        f: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if !self.interruptible {
            let result = f(&mut self.store);
            self.meter.calls.fetch_add(1, Ordering::Relaxed);
            return result.map_err(|e| classify_trap(&e, during));
        }
        let budget = self.meter.remaining_fuel();
        if budget == 0 {
            return Err(Error::Limit("the job's fuel budget ran out".into()));
        }
        self.store
            .set_fuel(budget)
            .map_err(|e| Error::Internal(format!("fuel: {e}")))?;
        if self.meter.is_cancelled() {
            return Err(cancelled_error());
        }
        self.store.data_mut().ticks_left = call_ticks(&self.meter.limits);
        self.store.set_epoch_deadline(1);
        let result = f(&mut self.store);
        let left = self.store.get_fuel().unwrap_or(0);
        self.meter.charge(budget.saturating_sub(left));
        self.meter.calls.fetch_add(1, Ordering::Relaxed);
        let size = self.memory.data_size(&self.store) as u64;
        self.meter.peak_memory.fetch_max(size, Ordering::Relaxed);
        result.map_err(|e| classify_trap(&e, during))
    }

    fn call_i32<P: wasmtime::WasmParams>(&mut self, name: &str, params: P) -> Result<i32> {
        let f: TypedFunc<P, i32> = self
            .instance
            .get_typed_func(&mut self.store, name)
            .map_err(|_| Error::BadInput(format!("invalid module: `{name}` missing")))?;
        self.metered(name, |s| f.call(s, params))
    }

    /// Bounds-checked view of guest memory.
    fn bytes(&self, ptr: u32, len: usize) -> Result<&[u8]> {
        let start = ptr as usize;
        let end = start.checked_add(len).ok_or_else(|| {
            Error::BadInput("the guest returned a wrapping pointer and length".into())
        })?;
        self.memory
            .data(&self.store)
            .get(start..end)
            .ok_or_else(|| Error::BadInput("the guest returned a buffer outside its memory".into()))
    }

    fn u32_at(&self, ptr: u32, index: usize) -> Result<u32> {
        let at = ptr
            .checked_add(4 * index as u32)
            .ok_or_else(|| Error::BadInput("the guest returned a wrapping pointer".into()))?;
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Reads a `[ptr, len]` pair at `desc` and the bytes it names, capped at `max`.
    fn read_pair(&self, desc: i32, max: usize) -> Result<Vec<u8>> {
        let desc = desc as u32;
        let (ptr, len) = (self.u32_at(desc, 0)?, self.u32_at(desc, 1)? as usize);
        if len > max {
            return Err(Error::BadInput(format!(
                "the guest returned {len} bytes where at most {max} are read"
            )));
        }
        Ok(self.bytes(ptr, len)?.to_vec())
    }

    /// Copies one batch (and, for aggregates, its group indices as u32 after it) into the
    /// guest's input buffer. Returns the addresses of the batch and of the indices.
    fn write_input(
        &mut self,
        args: &[ArrayRef],
        n_rows: usize,
        groups: Option<&[usize]>,
    ) -> Result<(u32, u32)> {
        let input = encode_batch(args, n_rows)?;
        let groups_len = groups.map_or(0, |g| align8(g.len() * 4));
        let total = i32::try_from(input.len + groups_len)
            .map_err(|_| Error::Limit("an input batch is over 2 GiB".into()))?;
        let alloc = self.alloc.clone();
        let base = self.metered("tg_alloc", |s| alloc.call(s, total))? as u32;
        if base == 0 {
            return Err(Error::Limit(
                "the guest could not allocate its input buffer".into(),
            ));
        }
        let start = base as usize;
        let dst = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(start..start.saturating_add(input.len + groups_len))
            .ok_or_else(|| {
                Error::BadInput("the guest's input buffer lies outside its memory".into())
            })?;
        input.write_into(base, &mut dst[..input.len])?;
        if let Some(groups) = groups {
            for (slot, g) in dst[input.len..].chunks_exact_mut(4).zip(groups) {
                let g =
                    u32::try_from(*g).map_err(|_| Error::Limit("more than 2^32 groups".into()))?;
                slot.copy_from_slice(&g.to_le_bytes());
            }
        }
        let groups_at = u32::try_from(start + input.len).map_err(|_| {
            Error::BadInput("the guest's input buffer lies outside its memory".into())
        })?;
        Ok((base, groups_at))
    }

    fn call_scalar(
        &mut self,
        fn_id: i32,
        sig: &FunctionSig,
        args: &[ArrayRef],
        n_rows: usize,
    ) -> Result<ArrayRef> {
        let (base, _) = self.write_input(args, n_rows, None)?;
        let scalar = self.scalar.clone();
        let out = self.metered(&sig.name, |s| scalar.call(s, (fn_id, base as i32)))?;
        if out == 0 {
            // The guest's message is the scientist's code talking about real data: it is not
            // shown, so it cannot carry values out.
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        self.decode_column(out as u32, sig.ret, &sig.name, n_rows)
    }

    /// Calls an aggregate's `tg_agg_update` (or, with `merge`, `tg_agg_merge` over state
    /// columns) on one batch with its group indices.
    pub(crate) fn aggregate_batch(
        &mut self,
        merge: bool,
        fn_id: i32,
        sig: &FunctionSig,
        columns: &[ArrayRef],
        groups: &[usize],
        total_groups: usize,
    ) -> Result<()> {
        let (base, groups_at) = self.write_input(columns, groups.len(), Some(groups))?;
        let total = i32::try_from(total_groups)
            .map_err(|_| Error::Limit("more than 2^31 groups".into()))?;
        let name = if merge {
            "tg_agg_merge"
        } else {
            "tg_agg_update"
        };
        let f: TypedFunc<(i32, i32, i32, i32), i32> = self
            .instance
            .get_typed_func(&mut self.store, name)
            .map_err(|_| Error::BadInput(format!("invalid module: `{name}` missing")))?;
        let ok = self.metered(&sig.name, |s| {
            f.call(s, (fn_id, base as i32, groups_at as i32, total))
        })?;
        if ok != 1 {
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        Ok(())
    }

    /// An aggregate's partial state for its `n_groups` groups, one array per state column.
    pub(crate) fn aggregate_state(
        &mut self,
        fn_id: i32,
        sig: &FunctionSig,
        n_groups: usize,
    ) -> Result<Vec<ArrayRef>> {
        let desc = self.call_i32("tg_agg_state", fn_id)?;
        let (desc, rows, cols) = self.batch_header(desc, sig)?;
        if rows != n_groups || cols != sig.state.len() {
            return Err(Error::BadInput(format!(
                "function `{}` returned a state of {rows} groups and {cols} columns where {n_groups} and {} were due",
                sig.name,
                sig.state.len()
            )));
        }
        self.decode_columns(desc, &sig.state, &sig.name, rows)
    }

    /// The address, row count and column count of a batch descriptor a guest call returned
    /// (`0` is the guest reporting an error).
    fn batch_header(&self, desc: i32, sig: &FunctionSig) -> Result<(u32, usize, usize)> {
        if desc == 0 {
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        let desc = desc as u32;
        Ok((
            desc,
            self.u32_at(desc, 0)? as usize,
            self.u32_at(desc, 1)? as usize,
        ))
    }

    /// The columns of a batch descriptor at `desc`, of the given types, validated.
    fn decode_columns(
        &self,
        desc: u32,
        types: &[WasmType],
        fname: &str,
        rows: usize,
    ) -> Result<Vec<ArrayRef>> {
        types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let at = desc
                    .checked_add((8 + COLUMN_DESC * i) as u32)
                    .ok_or_else(|| {
                        Error::BadInput("the guest returned a wrapping pointer".into())
                    })?;
                self.decode_column(at, *ty, fname, rows)
            })
            .collect()
    }

    /// An aggregate's final values for its `n_groups` groups.
    pub(crate) fn aggregate_evaluate(
        &mut self,
        fn_id: i32,
        sig: &FunctionSig,
        n_groups: usize,
    ) -> Result<ArrayRef> {
        let desc = self.call_i32("tg_agg_evaluate", fn_id)?;
        if desc == 0 {
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        self.decode_column(desc as u32, sig.ret, &sig.name, n_groups)
    }

    /// Forgets every group of an aggregate.
    pub(crate) fn aggregate_reset(&mut self, fn_id: i32, sig: &FunctionSig) -> Result<()> {
        if self.call_i32("tg_agg_reset", fn_id)? != 1 {
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        Ok(())
    }

    /// Opens table function `fn_id` (a fresh state in the guest).
    pub(crate) fn table_open(&mut self, fn_id: i32, sig: &FunctionSig) -> Result<()> {
        self.status("tg_table_open", fn_id, sig)
    }

    /// Says there is no more input.
    pub(crate) fn table_close(&mut self, fn_id: i32, sig: &FunctionSig) -> Result<()> {
        self.status("tg_table_close", fn_id, sig)
    }

    fn status(&mut self, export: &str, fn_id: i32, sig: &FunctionSig) -> Result<()> {
        if self.call_i32(export, fn_id)? != 1 {
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        Ok(())
    }

    /// Pushes one input batch into table function `fn_id`.
    pub(crate) fn table_push(
        &mut self,
        fn_id: i32,
        sig: &FunctionSig,
        columns: &[ArrayRef],
        n_rows: usize,
    ) -> Result<()> {
        let (base, _) = self.write_input(columns, n_rows, None)?;
        let f: TypedFunc<(i32, i32), i32> = self
            .instance
            .get_typed_func(&mut self.store, "tg_table_push")
            .map_err(|_| Error::BadInput("invalid module: `tg_table_push` missing".into()))?;
        if self.metered(&sig.name, |s| f.call(s, (fn_id, base as i32)))? != 1 {
            return Err(Error::BadInput(format!(
                "function `{}` reported an error",
                sig.name
            )));
        }
        Ok(())
    }

    /// The rows table function `fn_id` produced since the last pull, validated.
    pub(crate) fn table_pull(&mut self, fn_id: i32, sig: &FunctionSig) -> Result<Vec<ArrayRef>> {
        let desc = self.call_i32("tg_table_pull", fn_id)?;
        let (desc, rows, cols) = self.batch_header(desc, sig)?;
        let bad = |why: String| Error::BadInput(format!("function `{}` returned {why}", sig.name));
        if cols != sig.columns.len() {
            return Err(bad(format!(
                "{cols} columns where it declared {}",
                sig.columns.len()
            )));
        }
        if rows > MAX_PULL_ROWS {
            return Err(bad(format!(
                "{rows} rows at once; at most {MAX_PULL_ROWS} are read"
            )));
        }
        let types: Vec<WasmType> = sig.columns.iter().map(|(_, t)| *t).collect();
        self.decode_columns(desc, &types, &sig.name, rows)
    }

    /// Bytes of guest memory: what an aggregate's groups may occupy.
    pub(crate) fn memory_size(&self) -> usize {
        self.memory.data_size(&self.store)
    }

    /// Reads and validates one column descriptor the guest returned.
    fn decode_column(
        &self,
        desc: u32,
        ty: WasmType,
        fname: &str,
        n_rows: usize,
    ) -> Result<ArrayRef> {
        let field = |i| self.u32_at(desc, i);
        let (type_id, len) = (field(0)?, field(1)? as usize);
        let (validity, offsets, data, data_len) =
            (field(3)?, field(4)?, field(5)?, field(6)? as usize);
        let bad = |why: &str| Error::BadInput(format!("function `{fname}` returned {why}"));
        if type_id != ty.id() {
            return Err(bad("a column of another type than it declared"));
        }
        if len != n_rows {
            return Err(bad(&format!("{len} rows for a batch of {n_rows}")));
        }
        let expected_data = match ty {
            WasmType::Utf8 => data_len,
            WasmType::Boolean => n_rows.div_ceil(8),
            t => n_rows * t.width(),
        };
        if data_len != expected_data {
            return Err(bad("a data buffer of the wrong size"));
        }
        let total = data_len as u64
            + if ty == WasmType::Utf8 {
                (n_rows as u64 + 1) * 4
            } else {
                0
            };
        let used = self.meter.output_bytes.fetch_add(total, Ordering::Relaxed) + total;
        if used > self.meter.limits.output_bytes {
            return Err(Error::Limit(
                "the job's guests returned more than the output byte limit".into(),
            ));
        }
        let nulls = if validity == 0 {
            None
        } else {
            Some(Buffer::from(self.bytes(validity, n_rows.div_ceil(8))?))
        };
        let mut buffers = Vec::with_capacity(2);
        if ty == WasmType::Utf8 {
            buffers.push(Buffer::from(self.bytes(offsets, (n_rows + 1) * 4)?));
        }
        buffers.push(Buffer::from(self.bytes(data, data_len)?));
        // `try_new` validates everything: lengths, offsets, UTF-8 and the null bitmap.
        let array = ArrayData::try_new(ty.arrow(), n_rows, nulls, 0, buffers, vec![])
            .map_err(|_| bad("malformed Arrow data"))?;
        Ok(make_array(array))
    }
}

/// The input of one call, laid out as the ABI's batch descriptor plus buffers. The buffers are
/// borrowed from the Arrow arrays where their bytes are already what the ABI wants, so that
/// the only copy is the one into guest memory.
struct EncodedBatch<'a> {
    len: usize,
    n_rows: usize,
    cols: Vec<EncodedColumn<'a>>,
}

/// One argument column's buffers, rebased to offset 0.
struct EncodedColumn<'a> {
    ty: WasmType,
    null_count: usize,
    validity: Option<Cow<'a, [u8]>>,
    offsets: Option<Cow<'a, [u8]>>,
    data: Cow<'a, [u8]>,
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The bytes of a primitive array's values (its slice, not the whole buffer).
fn value_bytes<T: arrow::datatypes::ArrowPrimitiveType>(a: &ArrayRef) -> &[u8] {
    let values = a.as_primitive::<T>().values();
    let bytes: &[u8] = values.inner().as_slice();
    &bytes[..values.len() * std::mem::size_of::<T::Native>()]
}

fn encode_batch(args: &[ArrayRef], n_rows: usize) -> Result<EncodedBatch<'_>> {
    let mut cols = Vec::with_capacity(args.len());
    let mut len = align8(8 + COLUMN_DESC * args.len());
    for a in args {
        let validity = if a.null_count() > 0 {
            a.nulls().map(|n| {
                let bits = n.inner();
                if bits.offset() == 0 {
                    Cow::Borrowed(&bits.values()[..n_rows.div_ceil(8)])
                } else {
                    Cow::Owned(bits.sliced().as_slice()[..n_rows.div_ceil(8)].to_vec())
                }
            })
        } else {
            None
        };
        let (ty, offsets, data) = match a.data_type() {
            DataType::Int32 => (
                WasmType::Int32,
                None,
                Cow::Borrowed(value_bytes::<Int32Type>(a)),
            ),
            DataType::Int64 => (
                WasmType::Int64,
                None,
                Cow::Borrowed(value_bytes::<Int64Type>(a)),
            ),
            DataType::Float64 => (
                WasmType::Float64,
                None,
                Cow::Borrowed(value_bytes::<Float64Type>(a)),
            ),
            DataType::Date32 => (
                WasmType::Date32,
                None,
                Cow::Borrowed(value_bytes::<Date32Type>(a)),
            ),
            DataType::Boolean => {
                let bits = a.as_boolean().values();
                let data = if bits.offset() == 0 {
                    Cow::Borrowed(&bits.values()[..n_rows.div_ceil(8)])
                } else {
                    Cow::Owned(bits.sliced().as_slice()[..n_rows.div_ceil(8)].to_vec())
                };
                (WasmType::Boolean, None, data)
            }
            DataType::Utf8 => {
                let s = a.as_string::<i32>();
                let offs = s.value_offsets();
                let first = offs[0];
                let offsets = if first == 0 {
                    let raw: &[u8] = s.offsets().inner().inner().as_slice();
                    Cow::Borrowed(&raw[..offs.len() * 4])
                } else {
                    Cow::Owned(
                        offs.iter()
                            .flat_map(|o| (o - first).to_le_bytes())
                            .collect(),
                    )
                };
                let bytes = &s.value_data()[first as usize..offs[offs.len() - 1] as usize];
                (WasmType::Utf8, Some(offsets), Cow::Borrowed(bytes))
            }
            other => {
                return Err(Error::Internal(format!(
                    "argument type {other} is not part of the ABI"
                )));
            }
        };
        len += validity.as_ref().map_or(0, |v| align8(v.len()));
        len += offsets.as_ref().map_or(0, |o| align8(o.len()));
        len += align8(data.len());
        cols.push(EncodedColumn {
            ty,
            null_count: a.null_count(),
            validity,
            offsets,
            data,
        });
    }
    Ok(EncodedBatch { len, n_rows, cols })
}

impl EncodedBatch<'_> {
    /// Writes the region into `dst`, guest memory at address `base` (`dst.len() >= self.len`).
    fn write_into(&self, base: u32, dst: &mut [u8]) -> Result<()> {
        let addr = |off: usize| -> Result<u32> {
            u32::try_from(base as usize + off).map_err(|_| {
                Error::BadInput("the guest's input buffer lies outside its memory".into())
            })
        };
        let put =
            |dst: &mut [u8], at: usize, v: u32| dst[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(dst, 0, self.n_rows as u32);
        put(dst, 4, self.cols.len() as u32);
        let mut cursor = align8(8 + COLUMN_DESC * self.cols.len());
        for (i, col) in self.cols.iter().enumerate() {
            let d = 8 + COLUMN_DESC * i;
            let mut place = |dst: &mut [u8], bytes: &[u8]| -> Result<u32> {
                let at = cursor;
                dst[at..at + bytes.len()].copy_from_slice(bytes);
                cursor += align8(bytes.len());
                addr(at)
            };
            let v = match &col.validity {
                Some(v) => place(dst, v)?,
                None => 0,
            };
            let o = match &col.offsets {
                Some(o) => place(dst, o)?,
                None => 0,
            };
            let p = place(dst, &col.data)?;
            for (k, val) in [
                col.ty.id(),
                self.n_rows as u32,
                col.null_count as u32,
                v,
                o,
                p,
                col.data.len() as u32,
            ]
            .into_iter()
            .enumerate()
            {
                put(dst, d + 4 * k, val);
            }
        }
        Ok(())
    }
}

/// The instances of one module for one job: created on demand, reused across the job's
/// batches, dropped after any trap, and never handed to another job.
pub(crate) struct JobInstances {
    sandbox: Arc<Sandbox>,
    pub(crate) module: Arc<ValidatedModule>,
    meter: Arc<JobMeter>,
    idle: Mutex<Vec<Guest>>,
}

impl std::fmt::Debug for JobInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobInstances({})", self.module.hash)
    }
}

impl JobInstances {
    /// An instance of its own for an aggregate's groups: it holds their state between calls
    /// and is dropped with the accumulator, never pooled.
    pub(crate) fn dedicated(&self) -> Result<Guest> {
        self.sandbox.instantiate(&self.module, &self.meter)
    }

    fn call(
        &self,
        fn_id: i32,
        sig: &FunctionSig,
        args: &[ArrayRef],
        n_rows: usize,
    ) -> Result<ArrayRef> {
        let idle = self.idle.lock().expect("instance pool").pop();
        let mut guest = match idle {
            Some(g) => g,
            None => self.sandbox.instantiate(&self.module, &self.meter)?,
        };
        let out = guest.call_scalar(fn_id, sig, args, n_rows)?;
        // Only a guest whose call succeeded goes back; a trapped one is dropped above by `?`.
        self.idle.lock().expect("instance pool").push(guest);
        Ok(out)
    }
}

/// One function of a job's module: what its DataFusion wrappers hold. Two are equal when
/// they are the same function of the same job's instances.
pub(crate) struct GuestFn {
    pub(crate) sig: FunctionSig,
    pub(crate) fn_id: i32,
    pub(crate) pool: Arc<JobInstances>,
}

impl GuestFn {
    /// The functions of `kind` in the pool's module.
    pub(crate) fn all(pool: &Arc<JobInstances>, kind: &str) -> Vec<GuestFn> {
        pool.module
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == kind)
            .map(|(id, f)| GuestFn {
                sig: f.clone(),
                fn_id: id as i32,
                pool: Arc::clone(pool),
            })
            .collect()
    }

    /// DataFusion's signature: exactly the declared argument types.
    pub(crate) fn signature(&self) -> Signature {
        Signature::exact(
            self.sig.args.iter().map(|a| a.arrow()).collect(),
            Volatility::Immutable,
        )
    }
}

impl Clone for GuestFn {
    fn clone(&self) -> Self {
        GuestFn {
            sig: self.sig.clone(),
            fn_id: self.fn_id,
            pool: Arc::clone(&self.pool),
        }
    }
}

impl std::fmt::Debug for GuestFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} from {}",
            self.sig.kind, self.sig.name, self.pool.module.hash
        )
    }
}

impl PartialEq for GuestFn {
    fn eq(&self, other: &Self) -> bool {
        self.fn_id == other.fn_id && Arc::ptr_eq(&self.pool, &other.pool)
    }
}

impl Eq for GuestFn {}

impl Hash for GuestFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pool.module.hash.hash(state);
        self.fn_id.hash(state);
    }
}

fn scalars_of(pool: &Arc<JobInstances>) -> Vec<ScalarUDF> {
    GuestFn::all(pool, "scalar")
        .into_iter()
        .map(|f| {
            ScalarUDF::new_from_impl(WasmScalarUdf {
                signature: f.signature(),
                f,
            })
        })
        .collect()
}

/// A guest scalar function registered in DataFusion under its manifest name.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WasmScalarUdf {
    f: GuestFn,
    signature: Signature,
}

impl ScalarUDFImpl for WasmScalarUdf {
    fn name(&self) -> &str {
        &self.f.sig.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(self.f.sig.ret.arrow())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let n_rows = args.number_rows;
        let mut arrays = Vec::with_capacity(args.args.len());
        for (value, want) in args.args.iter().zip(&self.f.sig.args) {
            let a = value.to_array(n_rows)?;
            let a = if a.data_type() == &want.arrow() {
                a
            } else {
                arrow::compute::cast(&a, &want.arrow())?
            };
            arrays.push(a);
        }
        self.f
            .pool
            .call(self.f.fn_id, &self.f.sig, &arrays, n_rows)
            .map(ColumnarValue::Array)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_parse_into_signatures() {
        let f = parse_manifest("scalar age(utf8,date32) -> int32\nscalar m(utf8) -> utf8").unwrap();
        assert_eq!(f[0].name, "age");
        assert_eq!(f[0].args, vec![WasmType::Utf8, WasmType::Date32]);
        assert_eq!(f[1].ret, WasmType::Utf8);
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        assert_eq!(
            parse_manifest("scalar Bad(utf8) -> utf8").unwrap_err(),
            "function name `Bad` is not [a-z_][a-z0-9_]{0,63}"
        );
        assert_eq!(
            parse_manifest("scalar f(utf8) -> utf8\nscalar f(int32) -> utf8").unwrap_err(),
            "function `f` is declared twice"
        );
        assert!(parse_manifest("aggregate f(utf8) -> utf8").is_err());
        assert!(parse_manifest("").is_err());
    }

    fn load_wat(wat: &str) -> Result<Arc<ValidatedModule>> {
        let sandbox = Sandbox::new().unwrap();
        sandbox.load(&wat::parse_str(wat).unwrap())
    }

    #[test]
    fn a_module_importing_wasi_is_refused_with_the_import_named() {
        let err = load_wat(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad input: invalid module: imports are not allowed (the ABI has no host functions): wasi_snapshot_preview1::fd_write"
        );
    }

    #[test]
    fn a_module_without_the_abi_exports_is_refused() {
        let err = load_wat("(module (memory (export \"memory\") 1))").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad input: invalid module: required export `tg_abi_version` is missing"
        );
    }

    #[test]
    fn an_endless_start_function_is_stopped_by_the_limits() {
        let err = load_wat(
            r#"(module (memory (export "memory") 1)
                (func $spin (loop (br 0))) (start $spin)
                (func (export "tg_abi_version") (result i32) i32.const 1)
                (func (export "tg_manifest") (result i32) i32.const 0)
                (func (export "tg_alloc") (param i32) (result i32) i32.const 0)
                (func (export "tg_scalar") (param i32 i32) (result i32) i32.const 0)
                (func (export "tg_error") (result i32) i32.const 0))"#,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
    }

    /// A valid module with one scalar `f{n}(int64) -> int64`.
    fn numbered(n: usize) -> Vec<u8> {
        let manifest = format!("scalar f{n}(int64) -> int64");
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
                (data (i32.const 16) "\20\00\00\00\{len:02x}\00\00\00")
                (data (i32.const 32) "{manifest}")
                (func (export "tg_abi_version") (result i32) i32.const 1)
                (func (export "tg_manifest") (result i32) i32.const 16)
                (func (export "tg_alloc") (param i32) (result i32) i32.const 0)
                (func (export "tg_scalar") (param i32 i32) (result i32) i32.const 0)
                (func (export "tg_error") (result i32) i32.const 16))"#,
            len = manifest.len()
        ))
        .unwrap()
    }

    #[test]
    fn the_module_cache_serves_a_module_again_and_forgets_the_oldest_past_its_size() {
        let sandbox = Sandbox::new().unwrap();
        let first = sandbox.load(&numbered(0)).unwrap();
        assert_eq!(first.functions[0].name, "f0");
        assert!(Arc::ptr_eq(&first, &sandbox.load(&numbered(0)).unwrap()));
        for n in 1..=CACHED_MODULES {
            sandbox.load(&numbered(n)).unwrap();
        }
        let last = sandbox.load(&numbered(CACHED_MODULES)).unwrap();
        assert!(Arc::ptr_eq(
            &last,
            &sandbox.load(&numbered(CACHED_MODULES)).unwrap()
        ));
        let again = sandbox.load(&numbered(0)).unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "the oldest was compiled anew");
        assert_eq!(first.hash, again.hash);
    }
}
