//! The WebAssembly host: one hardened engine, module validation at upload, and scalar UDFs
//! that run guest functions batch at a time under fuel, epoch, memory and output limits.
//!
//! Every byte a guest returns is untrusted: pointers and lengths are bounds-checked with
//! checked arithmetic and arrays are built with arrow-rs's validating constructors.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayData, ArrayRef, AsArray, make_array};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type, Int64Type};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use wasmtime::{
    Config, Engine, ExternType, Instance, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    Module, PoolConcurrencyLimitError, PoolingAllocationConfig, ResourceLimiter, Store, Strategy,
    Trap, TypedFunc, UpdateDeadline, ValType,
};

use crate::crypto::sha256_hex;
use crate::error::{Error, Result};
use crate::text::{MAX_QUOTED_BYTES, defuse};

mod aggregate;
mod guest;
mod scalar;
mod table;
mod validate;
pub use validate::{ModuleFacts, module_facts};

pub(crate) use guest::{Guest, JobInstances};
use scalar::scalars_of;
pub(crate) use scalar::{GuestFn, guest_scalar_module, is_guest_scalar};
pub(crate) use validate::{SQL_FORMS, is_reserved_name};
use validate::{check_export, parse_manifest, precheck};

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
/// Instances one job may hold alive at once: its share of the process's pool, so that one job
/// cannot take the pool from the others.
pub(crate) const JOB_POOL_SHARE: u32 = POOL_INSTANCES / 4;
/// Fuel charged for creating an instance: the host's work of instantiation (a pooled slot,
/// its memory image, the start function's setup), about 50 microseconds of one core.
pub const INSTANCE_FUEL: u64 = 50_000;
/// Fuel charged for every guest call besides what the guest burns: the host's work around it
/// (fuel and deadline set-up, the call's entry and exit, descriptor reads), about 5 microseconds.
pub const CALL_FUEL: u64 = 5_000;
/// Fuel charged for every 64 KiB page of linear memory an instance is given (at instantiation
/// or by `memory.grow`): the kernel's work of mapping and zeroing it, and of giving it back when
/// the instance is dropped, about 10 microseconds.
pub const PAGE_FUEL: u64 = 10_000;
/// Bytes the host copies into or out of a guest per unit of fuel charged.
pub(crate) const BYTES_PER_FUEL: u64 = 4;
/// Fuel a guest burns per millisecond on this class of machine (a plain loop, measured by
/// `tidegate-bench`); a call stopped by its time limit is charged at least this rate for the
/// time it ran, whatever fuel it reported.
pub const FUEL_PER_MS: u64 = 1_000_000;
/// With at most twice this much fuel left, a call is handed all of it; with more, half of what
/// is left.
pub const FUEL_FLOOR: u64 = 1_000_000;
/// The most bytes one guest call may hand back (all columns together), checked before any of
/// them is copied out of guest memory.
pub(crate) const MAX_CALL_OUTPUT_BYTES: u64 = 64 << 20;
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

/// Limits applied to every store of a job, before instantiation, and to the job's guests
/// together.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GuestLimits {
    /// Total fuel the job's guests may burn (deterministic work), including what the host
    /// charges for instantiations, calls and copies.
    pub fuel: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one guest call, enforced by epoch interruption.
    pub call_timeout_ms: u64,
    /// Total bytes the job's guests may return.
    pub output_bytes: u64,
    /// Linear memory of all the job's live instances together, in bytes.
    pub job_memory_bytes: usize,
    /// Instances the job may create over its whole run.
    pub max_instances: u32,
    /// Instances of the job alive at once (at most its share of the process's pool).
    pub live_instances: u32,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            fuel: 50_000_000_000,
            memory_bytes: 64 << 20,
            call_timeout_ms: 10_000,
            output_bytes: 1 << 30,
            job_memory_bytes: 512 << 20,
            max_instances: 4_096,
            live_instances: JOB_POOL_SHARE,
        }
    }
}

/// The column types of the ABI.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum WasmType {
    Int32,
    Int64,
    Float64,
    Utf8,
    Date32,
    Boolean,
    /// Microseconds since 1970-01-01T00:00:00 UTC, as i64.
    Timestamp,
    /// An exact decimal in millionths (scale 6, precision 38), as i128.
    Decimal,
}

impl WasmType {
    /// Places after the point of the ABI's `decimal`.
    pub const DECIMAL_SCALE: i8 = 6;
    /// The time zone the ABI's `timestamp` is read in.
    pub const TIMESTAMP_ZONE: &'static str = "UTC";

    fn id(self) -> u32 {
        match self {
            WasmType::Int32 => 1,
            WasmType::Int64 => 2,
            WasmType::Float64 => 3,
            WasmType::Utf8 => 4,
            WasmType::Date32 => 5,
            WasmType::Boolean => 6,
            WasmType::Timestamp => 7,
            WasmType::Decimal => 8,
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
            WasmType::Timestamp => "timestamp",
            WasmType::Decimal => "decimal",
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
            "timestamp" => WasmType::Timestamp,
            "decimal" => WasmType::Decimal,
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
            WasmType::Timestamp => DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some(Self::TIMESTAMP_ZONE.into()),
            ),
            WasmType::Decimal => DataType::Decimal128(38, Self::DECIMAL_SCALE),
        }
    }

    fn width(self) -> usize {
        match self {
            WasmType::Int32 | WasmType::Date32 => 4,
            WasmType::Int64 | WasmType::Float64 | WasmType::Timestamp => 8,
            WasmType::Decimal => 16,
            WasmType::Utf8 | WasmType::Boolean => 0,
        }
    }
}

/// One function a module exports, as its manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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
    meter: Arc<JobMeter>,
    /// Epoch ticks the current call may still run.
    ticks_left: u64,
    /// Bytes of linear memory this instance holds, counted in its job's total.
    memory: usize,
    /// Bytes reserved for the growth being made, given back if it fails.
    pending: usize,
    /// The cap that refused a growth of this instance's memory, if one did.
    denied: Option<MemoryCap>,
    /// Fuel handed to the current call from the job's budget (charged when handed; what is
    /// left when the call ends goes back).
    granted: u64,
}

/// Which memory cap refused a guest's `memory.grow` (or its initial memory).
#[derive(Debug, Clone, Copy)]
enum MemoryCap {
    Instance(usize),
    Job(usize),
}

impl MemoryCap {
    fn error(self, during: &str) -> Error {
        match self {
            MemoryCap::Instance(cap) => Error::Limit(format!(
                "a guest reached its memory cap of {} MiB during {during}",
                cap >> 20
            )),
            MemoryCap::Job(cap) => Error::Limit(format!(
                "the job's guests reached their memory budget of {} MiB together during {during}",
                cap >> 20
            )),
        }
    }
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // The module's own declared maximum: its growth fails as the module asked.
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        let limits = self.meter.limits;
        if desired > limits.memory_bytes {
            self.denied = Some(MemoryCap::Instance(limits.memory_bytes));
            return Ok(false);
        }
        let more = desired.saturating_sub(current);
        if !self.meter.reserve_memory(more) {
            self.denied = Some(MemoryCap::Job(limits.job_memory_bytes));
            return Ok(false);
        }
        self.memory += more;
        self.pending = more;
        self.meter
            .charge((more as u64).div_ceil(65_536) * PAGE_FUEL);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.meter.release_memory(self.pending);
        self.memory -= self.pending;
        self.pending = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS as usize && maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        2
    }

    fn memories(&self) -> usize {
        1
    }
}

impl Drop for GuestState {
    /// The instance is gone: its memory and its place leave the job's totals.
    fn drop(&mut self) {
        self.meter.release_memory(self.memory);
        self.meter.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The trap a guest gets when its job is stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The platform cancelled the job (its scenario suspended or revoked, its org frozen).
    Cancelled,
    /// The job's wall-clock limit passed.
    Expired,
    /// The job's guests burnt its fuel between the cluster's executors.
    FuelSpent,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Cancelled => "the job was cancelled",
            Stopped::Expired => "the job exceeded its wall-clock limit",
            Stopped::FuelSpent => FUEL_SPENT,
        })
    }
}

impl std::error::Error for Stopped {}

impl Stopped {
    fn error(self) -> Error {
        match self {
            Stopped::Cancelled => cancelled_error(),
            Stopped::Expired => Error::Limit("the job exceeded its wall-clock limit".into()),
            Stopped::FuelSpent => Error::Limit(FUEL_SPENT.into()),
        }
    }
}

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
        if let Some(m) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(m);
        }
        let validated = Arc::new(self.validate(bytes, hash)?);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&validated));
        Ok(validated)
    }

    fn validate(&self, bytes: &[u8], hash: String) -> Result<ValidatedModule> {
        // Everything quoted from the module (its names, its manifest, the compiler's view of
        // it) is defused and cut short before it reaches a terminal, a page or the log.
        let invalid = |why: String| {
            Error::BadInput(format!(
                "invalid module: {}",
                defuse(&why, MAX_QUOTED_BYTES)
            ))
        };
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
        if let Some(f) = validated
            .functions
            .iter()
            .find(|f| is_reserved_name(&f.name))
        {
            return Err(invalid(format!(
                "function name `{}` is taken by a built-in or platform function (a module's functions never replace one)",
                f.name
            )));
        }
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

    /// An instance that keeps state across calls (an aggregate's groups, a table function's
    /// run, the manifest read at upload): counted against the job's instance budget.
    fn instantiate(&self, module: &ValidatedModule, meter: &Arc<JobMeter>) -> Result<Guest> {
        self.instantiate_counted(module, meter, true)
    }

    /// An instance for one scalar call: charged, and held within the job's share of the pool,
    /// but not counted against the number of instances it may create (a job makes one per
    /// batch).
    fn instantiate_for_call(
        &self,
        module: &ValidatedModule,
        meter: &Arc<JobMeter>,
    ) -> Result<Guest> {
        self.instantiate_counted(module, meter, false)
    }

    fn instantiate_counted(
        &self,
        module: &ValidatedModule,
        meter: &Arc<JobMeter>,
        counted: bool,
    ) -> Result<Guest> {
        let limits = meter.limits;
        meter.check()?;
        meter.admit_instance(self.interruptible, counted)?;
        // From here the state's drop gives the instance's place and memory back to the job.
        let mut store = Store::new(
            &self.engine,
            GuestState {
                meter: Arc::clone(meter),
                ticks_left: call_ticks(&limits),
                memory: 0,
                pending: 0,
                denied: None,
                granted: 0,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        // Limits are in place before instantiation, so a start function is covered too.
        if self.interruptible {
            let slice = meter.reserve_share();
            store.data_mut().granted = slice;
            store
                .set_fuel(slice)
                .map_err(|e| Error::Internal(format!("fuel: {e}")))?;
            // Every tick the guest is checked: a cancelled job stops within one tick, and a
            // call that used up its ticks is interrupted.
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|mut ctx| {
                let state = ctx.data_mut();
                if let Some(stopped) = state.meter.stopped() {
                    return Err(wasmtime::Error::new(stopped));
                }
                if state.ticks_left == 0 {
                    return Ok(UpdateDeadline::Interrupt);
                }
                state.ticks_left -= 1;
                Ok(UpdateDeadline::Continue(1))
            });
        }
        let started = Instant::now();
        let instance = module.pre.instantiate(&mut store);
        if self.interruptible {
            // What the start function did not burn goes back to the job.
            let granted = std::mem::take(&mut store.data_mut().granted);
            let refunded = store.get_fuel().unwrap_or(0).min(granted);
            meter.refund(refunded);
            meter.release(granted, refunded);
        }
        let instance = instance.map_err(|e| {
            let error = match store.data_mut().denied.take() {
                Some(cap) => cap.error("instantiation"),
                None => classify_trap(&e, "instantiation"),
            };
            if !matches!(
                e.downcast_ref::<Trap>(),
                Some(Trap::OutOfFuel | Trap::UnreachableCodeReached)
            ) {
                meter.charge(fuel_for(started.elapsed()));
            }
            meter.fail(error)
        })?;
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
                idle: Mutex::new(Vec::new()),
                sandbox: Arc::clone(self),
                module: Arc::clone(module),
                meter: Arc::clone(meter),
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
            aggregates: aggregate::aggregate_udfs(&pool),
            tables: table::table_functions(&pool),
            meters: vec![Arc::clone(meter)],
        }
    }

    /// The scalar UDFs alone of `module` for one job; instances are created per job and
    /// never shared with another job.
    pub fn scalar_udfs(
        self: &Arc<Self>,
        module: &Arc<ValidatedModule>,
        meter: &Arc<JobMeter>,
    ) -> Functions {
        Functions {
            scalars: scalars_of(&self.session(module, meter).pool),
            meters: vec![Arc::clone(meter)],
            ..Functions::default()
        }
    }
}

/// Resource use of one job's guests, and its limits: fuel, memory and instances are budgets
/// of the whole job, across all its instances and modules' calls.
#[derive(Debug)]
pub struct JobMeter {
    pub limits: GuestLimits,
    /// Why the job was stopped from outside ([`STOP_CANCELLED`], [`STOP_EXPIRED`]), or 0.
    stop: AtomicU8,
    /// The first error any of the job's guests met: once set, every later call and
    /// instantiation fails with it, and the job fails with it even where the query engine
    /// swallowed the error.
    failure: Mutex<Option<Error>>,
    fuel_used: AtomicU64,
    /// Of `fuel_used`, what was burnt (without what calls running now were handed and may
    /// give back): only grows.
    burnt: AtomicU64,
    /// Fuel the job's guests burnt on other executors of the cluster, as they recorded it:
    /// taken from the budget here, not counted as used here.
    elsewhere: AtomicU64,
    output_bytes: AtomicU64,
    /// Linear memory of the job's live instances now, and the most it ever was.
    memory: AtomicU64,
    peak_memory: AtomicU64,
    calls: AtomicU64,
    /// Instances created so far, and alive now.
    created: AtomicU32,
    live: AtomicU32,
    /// Every scalar call runs in an instance of its own (see `JobInstances::call`).
    stateless: std::sync::atomic::AtomicBool,
}

const STOP_CANCELLED: u8 = 1;
const STOP_EXPIRED: u8 = 2;
const STOP_FUEL_SPENT: u8 = 3;

/// Why a job whose guests burnt its fuel between the cluster's executors stopped.
const FUEL_SPENT: &str = "the job's fuel budget ran out on the cluster's executors";

/// Fuel charged for `elapsed` of a guest's own time.
fn fuel_for(elapsed: Duration) -> u64 {
    (elapsed.as_micros() as u64).saturating_mul(FUEL_PER_MS) / 1_000
}

impl JobMeter {
    pub fn new(limits: GuestLimits) -> Self {
        JobMeter {
            limits,
            stop: AtomicU8::new(0),
            failure: Mutex::new(None),
            fuel_used: AtomicU64::new(0),
            burnt: AtomicU64::new(0),
            elsewhere: AtomicU64::new(0),
            output_bytes: AtomicU64::new(0),
            memory: AtomicU64::new(0),
            peak_memory: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            created: AtomicU32::new(0),
            live: AtomicU32::new(0),
            stateless: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Cancels the job: its guests trap at the next epoch tick, and no new call starts.
    pub fn cancel(&self) {
        self.stop_with(STOP_CANCELLED);
    }

    /// Ends the job at its wall-clock limit: its guests trap at the next epoch tick, and no
    /// new call or instance starts.
    pub fn expire(&self) {
        self.stop_with(STOP_EXPIRED);
    }

    fn stop_with(&self, why: u8) {
        let _ = self
            .stop
            .compare_exchange(0, why, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether the platform cancelled the job.
    pub fn is_cancelled(&self) -> bool {
        self.stop.load(Ordering::SeqCst) == STOP_CANCELLED
    }

    fn stopped(&self) -> Option<Stopped> {
        match self.stop.load(Ordering::SeqCst) {
            STOP_CANCELLED => Some(Stopped::Cancelled),
            STOP_EXPIRED => Some(Stopped::Expired),
            STOP_FUEL_SPENT => Some(Stopped::FuelSpent),
            _ => None,
        }
    }

    /// The error that ends the job, if it has met one or was stopped.
    pub fn check(&self) -> Result<()> {
        if let Some(stopped) = self.stopped() {
            return Err(stopped.error());
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Records `error` as the job's failure (the first one stays) and gives it back.
    pub(crate) fn fail(&self, error: Error) -> Error {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.is_none() {
            *failure = Some(error.clone());
        }
        error
    }

    /// Admits one more instance of the job, or says which budget it would break; charges the
    /// host's work of creating it.
    fn admit_instance(&self, charged: bool, counted: bool) -> Result<()> {
        let created = if counted {
            self.created.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.created.load(Ordering::SeqCst)
        };
        if created > self.limits.max_instances {
            return Err(self.fail(Error::Limit(format!(
                "the job created more than {} guest instances",
                self.limits.max_instances
            ))));
        }
        let share = self.limits.live_instances.min(JOB_POOL_SHARE);
        if self.live.fetch_add(1, Ordering::SeqCst) >= share {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(self.fail(Error::Limit(format!(
                "the job holds {share} guest instances at once, its share of the sandbox's pool"
            ))));
        }
        if charged {
            self.charge(INSTANCE_FUEL);
            if self.fuel_used() >= self.fuel_budget() {
                self.live.fetch_sub(1, Ordering::SeqCst);
                return Err(self.fail(Error::Limit(
                    "the job's fuel budget ran out during instantiation".into(),
                )));
            }
        }
        Ok(())
    }

    /// Takes `bytes` of the job's guest memory budget, if it has them.
    fn reserve_memory(&self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        let cap = self.limits.job_memory_bytes as u64;
        let mut now = self.memory.load(Ordering::SeqCst);
        loop {
            let Some(next) = now.checked_add(bytes).filter(|n| *n <= cap) else {
                return false;
            };
            match self
                .memory
                .compare_exchange(now, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.peak_memory.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(seen) => now = seen,
            }
        }
    }

    fn release_memory(&self, bytes: usize) {
        self.memory.fetch_sub(bytes as u64, Ordering::SeqCst);
    }

    /// Takes the fuel one call is handed from the job's budget (charged now, what the call does
    /// not burn given back after it): half of what is left, or all of it when little is left.
    /// Calls running at once thus hold at most the whole budget between them: they can never
    /// burn more than the job's budget together. (A running call's fuel cannot be topped up:
    /// compiled code keeps its fuel in a register between calls out.)
    fn reserve_share(&self) -> u64 {
        let mut used = self.fuel_used.load(Ordering::SeqCst);
        loop {
            let avail = self.fuel_budget().saturating_sub(used);
            let take = if avail <= 2 * FUEL_FLOOR {
                avail
            } else {
                avail / 2
            };
            if take == 0 {
                return 0;
            }
            match self.fuel_used.compare_exchange(
                used,
                used + take,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return take,
                Err(seen) => used = seen,
            }
        }
    }

    /// The fuel the job's guests may burn here: the job's, less what they burnt elsewhere.
    pub(crate) fn fuel_budget(&self) -> u64 {
        self.limits
            .fuel
            .saturating_sub(self.elsewhere.load(Ordering::SeqCst))
    }

    /// Takes `fuel`, what the job's guests burnt on the cluster's other executors so far
    /// (it only grows), from what they may burn here; stops them (at their next epoch tick)
    /// when that and what they burnt here reach the job's fuel.
    pub(crate) fn spent_elsewhere(&self, fuel: u64) {
        self.elsewhere.fetch_max(fuel, Ordering::SeqCst);
        if self.fuel_burnt().saturating_add(fuel) >= self.limits.fuel {
            self.stop_with(STOP_FUEL_SPENT);
        }
    }

    /// The fuel the job's guests have burnt here, without what calls running now were handed
    /// and have not burnt yet (exact once no call runs, as [`JobMeter::fuel_used`]).
    pub(crate) fn fuel_burnt(&self) -> u64 {
        self.burnt.load(Ordering::SeqCst)
    }

    /// Ends a call that was handed `granted` fuel and gave `refunded` of it back: the rest
    /// was burnt.
    fn release(&self, granted: u64, refunded: u64) {
        self.burnt
            .fetch_add(granted.saturating_sub(refunded), Ordering::SeqCst);
    }

    /// Gives back fuel a call was handed and did not burn.
    fn refund(&self, fuel: u64) {
        self.fuel_used.fetch_sub(fuel, Ordering::SeqCst);
    }

    fn charge(&self, fuel: u64) {
        self.burnt.fetch_add(fuel, Ordering::SeqCst);
        self.fuel_used.fetch_add(fuel, Ordering::SeqCst);
    }

    /// Charges the host's copying of `bytes` into or out of a guest.
    fn charge_bytes(&self, bytes: u64) {
        self.charge(bytes / BYTES_PER_FUEL);
    }

    pub fn fuel_used(&self) -> u64 {
        self.fuel_used.load(Ordering::Relaxed)
    }

    /// The most linear memory the job's live instances held together.
    pub fn peak_memory(&self) -> u64 {
        self.peak_memory.load(Ordering::Relaxed)
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn output_bytes(&self) -> u64 {
        self.output_bytes.load(Ordering::Relaxed)
    }

    /// From now on, every scalar call of the job runs in an instance made for it alone (a
    /// gated job: see `JobInstances::call`).
    pub fn make_scalars_stateless(&self) {
        self.stateless.store(true, Ordering::SeqCst);
    }

    fn stateless_scalars(&self) -> bool {
        self.stateless.load(Ordering::SeqCst)
    }

    /// Instances the job created.
    pub fn instances_created(&self) -> u32 {
        self.created.load(Ordering::Relaxed)
    }
}

/// What a cancelled job says.
pub(crate) const CANCELLED: &str =
    "the job was cancelled: by its unit or an admin, or its scenario was suspended or revoked";

/// Maps a wasmtime error to our error class; trap descriptions name the trap, never data.
fn cancelled_error() -> Error {
    Error::Refused(CANCELLED.into())
}

fn classify_trap(e: &wasmtime::Error, during: &str) -> Error {
    if let Some(stopped) = e.downcast_ref::<Stopped>() {
        return stopped.error();
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
            defuse(&e.root_cause().to_string(), MAX_QUOTED_BYTES)
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

/// The functions a job's SQL may call besides DataFusion's own: guest scalars and aggregates,
/// and the runtime's built-ins.
#[derive(Debug, Clone, Default)]
pub struct Functions {
    pub scalars: Vec<ScalarUDF>,
    pub aggregates: Vec<datafusion::logical_expr::AggregateUDF>,
    /// Guest table functions; they read the job's granted tables by name.
    pub tables: Vec<table::GuestTable>,
    /// The meters of the guests behind these functions: the job's deadline stops them, and a
    /// failure any of them recorded fails the job.
    pub meters: Vec<Arc<JobMeter>>,
}

impl Functions {
    pub fn extend(&mut self, more: Functions) {
        self.scalars.extend(more.scalars);
        self.aggregates.extend(more.aggregates);
        self.tables.extend(more.tables);
        for m in more.meters {
            if !self.meters.iter().any(|have| Arc::ptr_eq(have, &m)) {
                self.meters.push(m);
            }
        }
    }
}

impl From<Vec<ScalarUDF>> for Functions {
    fn from(scalars: Vec<ScalarUDF>) -> Self {
        Functions {
            scalars,
            ..Functions::default()
        }
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
