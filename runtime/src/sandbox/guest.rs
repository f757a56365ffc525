//! One live guest instance and its calls (input written into guest memory, every returned
//! buffer validated), and the instances of one job.

use super::*;

/// One live instance, owned by one job.
pub(crate) struct Guest {
    store: Store<GuestState>,
    instance: Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    scalar: TypedFunc<(i32, i32), i32>,
    /// The per-batch exports of aggregates (update, merge) and table functions (push, pull),
    /// looked up on first use.
    aggregate: Option<[AggregateFn; 2]>,
    table: Option<(TablePushFn, TablePullFn)>,
    meter: Arc<JobMeter>,
    interruptible: bool,
}

/// `tg_agg_update` and `tg_agg_merge`: (fn_id, batch, groups, total_groups) -> status.
type AggregateFn = TypedFunc<(i32, i32, i32, i32), i32>;
/// `tg_table_push`: (fn_id, batch) -> status.
type TablePushFn = TypedFunc<(i32, i32), i32>;
/// `tg_table_pull`: fn_id -> batch descriptor.
type TablePullFn = TypedFunc<i32, i32>;

/// A guest's own error report: never quoted, it is the scientist's code talking about data.
fn reported(sig: &FunctionSig) -> Error {
    Error::BadInput(format!("function `{}` reported an error", sig.name))
}

impl Guest {
    pub(super) fn new(
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
            aggregate: None,
            table: None,
            meter,
            interruptible,
        })
    }

    fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> Result<TypedFunc<P, R>> {
        self.instance
            .get_typed_func(&mut self.store, name)
            .map_err(|_| Error::BadInput(format!("invalid module: `{name}` missing")))
    }

    /// Runs `f` with fresh fuel and deadline, and charges the job what it burned and the
    /// host's work around it. A call stopped by its time limit is charged at least the fuel a
    /// guest burns in the time it ran. Any error ends the job: it is recorded in the meter, so
    /// every later call fails with it and the job fails even where the engine swallowed it.
    pub(super) fn metered<R>(
        &mut self,
        during: &str,
        f: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        self.meter.check()?;
        if !self.interruptible {
            let result = f(&mut self.store);
            self.meter.calls.fetch_add(1, Ordering::Relaxed);
            return result.map_err(|e| self.meter.fail(classify_trap(&e, during)));
        }
        let slice = self.meter.reserve_share();
        if slice == 0 {
            return Err(self.meter.fail(Error::Limit(format!(
                "the job's fuel budget ran out during {during}"
            ))));
        }
        self.store.data_mut().granted = slice;
        self.store
            .set_fuel(slice)
            .map_err(|e| Error::Internal(format!("fuel: {e}")))?;
        self.store.data_mut().ticks_left = call_ticks(&self.meter.limits);
        self.store.data_mut().denied = None;
        self.store.set_epoch_deadline(1);
        let started = Instant::now();
        let result = f(&mut self.store);
        // Everything handed to the call was charged; what it did not burn goes back.
        let left = self.store.get_fuel().unwrap_or(0);
        let granted = std::mem::take(&mut self.store.data_mut().granted);
        self.meter.refund(left.min(granted));
        self.meter.release(granted, left.min(granted));
        let burned = granted.saturating_sub(left);
        let mut extra = CALL_FUEL;
        self.meter.calls.fetch_add(1, Ordering::Relaxed);
        let result = result.map_err(|e| {
            // A trap other than running out of fuel or `unreachable` leaves the fuel the guest
            // kept in a register unsaved (an epoch interrupt, a memory fault): such a call is
            // charged at least its time.
            if !matches!(
                e.downcast_ref::<Trap>(),
                Some(Trap::OutOfFuel | Trap::UnreachableCodeReached)
            ) {
                extra += fuel_for(started.elapsed()).saturating_sub(burned);
            }
            match self.store.data_mut().denied.take() {
                Some(cap) => cap.error(during),
                None => classify_trap(&e, during),
            }
        });
        self.meter.charge(extra);
        let result = result.map_err(|e| self.meter.fail(e));
        if result.is_ok() && self.meter.fuel_used() > self.meter.fuel_budget() {
            return Err(self.meter.fail(Error::Limit(format!(
                "the job's fuel budget ran out during {during}"
            ))));
        }
        result
    }

    pub(super) fn call_i32<P: wasmtime::WasmParams>(
        &mut self,
        name: &str,
        params: P,
    ) -> Result<i32> {
        let f: TypedFunc<P, i32> = self.typed(name)?;
        self.metered(name, |s| f.call(s, params))
    }

    /// Bounds-checked view of guest memory.
    pub(super) fn bytes(&self, ptr: u32, len: usize) -> Result<&[u8]> {
        let start = ptr as usize;
        let end = start.checked_add(len).ok_or_else(|| {
            Error::BadInput("the guest returned a wrapping pointer and length".into())
        })?;
        self.memory
            .data(&self.store)
            .get(start..end)
            .ok_or_else(|| Error::BadInput("the guest returned a buffer outside its memory".into()))
    }

    pub(super) fn u32_at(&self, ptr: u32, index: usize) -> Result<u32> {
        let at = ptr
            .checked_add(4 * index as u32)
            .ok_or_else(|| Error::BadInput("the guest returned a wrapping pointer".into()))?;
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Reads a `[ptr, len]` pair at `desc` and the bytes it names, capped at `max`.
    pub(super) fn read_pair(&self, desc: i32, max: usize) -> Result<Vec<u8>> {
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
    pub(super) fn write_input(
        &mut self,
        args: &[ArrayRef],
        n_rows: usize,
        groups: Option<&[usize]>,
    ) -> Result<(u32, u32)> {
        let input = encode_batch(args, n_rows)?;
        let groups_len = groups.map_or(0, |g| align8(g.len() * 4));
        self.meter.charge_bytes((input.len + groups_len) as u64);
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

    pub(super) fn call_scalar(
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
            return Err(reported(sig));
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
        let [update, merged] = match &self.aggregate {
            Some(fns) => fns.clone(),
            None => {
                let fns = [self.typed("tg_agg_update")?, self.typed("tg_agg_merge")?];
                self.aggregate = Some(fns.clone());
                fns
            }
        };
        let f = if merge { merged } else { update };
        let ok = self.metered(&sig.name, |s| {
            f.call(s, (fn_id, base as i32, groups_at as i32, total))
        })?;
        if ok != 1 {
            return Err(reported(sig));
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
    pub(super) fn batch_header(&self, desc: i32, sig: &FunctionSig) -> Result<(u32, usize, usize)> {
        if desc == 0 {
            return Err(reported(sig));
        }
        let desc = desc as u32;
        Ok((
            desc,
            self.u32_at(desc, 0)? as usize,
            self.u32_at(desc, 1)? as usize,
        ))
    }

    /// The columns of a batch descriptor at `desc`, of the given types, validated.
    pub(super) fn decode_columns(
        &self,
        desc: u32,
        types: &[WasmType],
        fname: &str,
        rows: usize,
    ) -> Result<Vec<ArrayRef>> {
        let headers = types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let at = desc
                    .checked_add((8 + COLUMN_DESC * i) as u32)
                    .ok_or_else(|| {
                        Error::BadInput("the guest returned a wrapping pointer".into())
                    })?;
                self.column_header(at, *ty, fname, rows)
            })
            .collect::<Result<Vec<_>>>()?;
        self.copy_out(&headers, fname)
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
            return Err(reported(sig));
        }
        self.decode_column(desc as u32, sig.ret, &sig.name, n_groups)
    }

    /// Forgets every group of an aggregate.
    pub(crate) fn aggregate_reset(&mut self, fn_id: i32, sig: &FunctionSig) -> Result<()> {
        if self.call_i32("tg_agg_reset", fn_id)? != 1 {
            return Err(reported(sig));
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

    pub(super) fn status(&mut self, export: &str, fn_id: i32, sig: &FunctionSig) -> Result<()> {
        if self.call_i32(export, fn_id)? != 1 {
            return Err(reported(sig));
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
        let (push, _) = self.table_fns()?;
        if self.metered(&sig.name, |s| push.call(s, (fn_id, base as i32)))? != 1 {
            return Err(reported(sig));
        }
        Ok(())
    }

    fn table_fns(&mut self) -> Result<(TablePushFn, TablePullFn)> {
        if self.table.is_none() {
            self.table = Some((self.typed("tg_table_push")?, self.typed("tg_table_pull")?));
        }
        Ok(self.table.clone().expect("just looked up"))
    }

    /// The rows table function `fn_id` produced since the last pull, validated.
    pub(crate) fn table_pull(&mut self, fn_id: i32, sig: &FunctionSig) -> Result<Vec<ArrayRef>> {
        let (_, pull) = self.table_fns()?;
        let desc = self.metered("tg_table_pull", |s| pull.call(s, fn_id))?;
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
    pub(super) fn decode_column(
        &self,
        desc: u32,
        ty: WasmType,
        fname: &str,
        n_rows: usize,
    ) -> Result<ArrayRef> {
        let header = self.column_header(desc, ty, fname, n_rows)?;
        let mut out = self.copy_out(&[header], fname)?;
        Ok(out.pop().expect("one column"))
    }

    /// One column descriptor, checked against its declared type and row count; nothing is
    /// copied yet.
    fn column_header(
        &self,
        desc: u32,
        ty: WasmType,
        fname: &str,
        n_rows: usize,
    ) -> Result<ColumnHeader> {
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
        let bytes = data_len as u64
            + if ty == WasmType::Utf8 {
                (n_rows as u64 + 1) * 4
            } else {
                0
            }
            + if validity == 0 {
                0
            } else {
                n_rows.div_ceil(8) as u64
            };
        Ok(ColumnHeader {
            ty,
            n_rows,
            validity,
            offsets,
            data,
            data_len,
            bytes,
        })
    }

    /// Copies validated columns out of guest memory, after checking what they add up to
    /// against the call's and the job's output budgets: nothing is copied over a budget.
    /// Every float leaves with its NaNs canonical, so no payload bit rides out in one.
    fn copy_out(&self, headers: &[ColumnHeader], fname: &str) -> Result<Vec<ArrayRef>> {
        let total: u64 = headers.iter().map(|h| h.bytes).sum();
        if total > MAX_CALL_OUTPUT_BYTES {
            return Err(Error::Limit(format!(
                "function `{fname}` returned {} MiB at once; at most {} MiB are read per call",
                total >> 20,
                MAX_CALL_OUTPUT_BYTES >> 20
            )));
        }
        let used = self.meter.output_bytes.fetch_add(total, Ordering::Relaxed) + total;
        if used > self.meter.limits.output_bytes {
            return Err(Error::Limit(
                "the job's guests returned more than the output byte limit".into(),
            ));
        }
        self.meter.charge_bytes(total);
        let bad = || Error::BadInput(format!("function `{fname}` returned malformed Arrow data"));
        headers
            .iter()
            .map(|h| {
                let nulls = if h.validity == 0 {
                    None
                } else {
                    Some(Buffer::from(self.bytes(h.validity, h.n_rows.div_ceil(8))?))
                };
                let mut buffers = Vec::with_capacity(2);
                if h.ty == WasmType::Utf8 {
                    buffers.push(Buffer::from(self.bytes(h.offsets, (h.n_rows + 1) * 4)?));
                }
                buffers.push(Buffer::from(self.bytes(h.data, h.data_len)?));
                // `try_new` validates everything: lengths, offsets, UTF-8 and the null bitmap.
                let array = ArrayData::try_new(h.ty.arrow(), h.n_rows, nulls, 0, buffers, vec![])
                    .map_err(|_| bad())?;
                let array = make_array(array);
                if h.ty == WasmType::Decimal && !decimals_fit(&array) {
                    return Err(Error::BadInput(format!(
                        "function `{fname}` returned a decimal of more than 38 digits"
                    )));
                }
                Ok(if h.ty == WasmType::Float64 {
                    canonical_nans(array)
                } else {
                    array
                })
            })
            .collect()
    }
}

/// Whether every value of a decimal column a guest returned has at most 38 digits (an i128
/// holds 39): the column's declared precision, which readers of the result rely on.
fn decimals_fit(array: &ArrayRef) -> bool {
    const LIMIT: u128 = 10u128.pow(38);
    array
        .as_primitive::<arrow::datatypes::Decimal128Type>()
        .iter()
        .flatten()
        .all(|v| v.unsigned_abs() < LIMIT)
}

/// One column a guest returned, its descriptor read and checked.
pub(super) struct ColumnHeader {
    ty: WasmType,
    n_rows: usize,
    validity: u32,
    offsets: u32,
    data: u32,
    data_len: usize,
    /// Bytes the column takes once copied out.
    bytes: u64,
}

/// `array` (of f64) with every NaN, whatever its sign and payload, as the one canonical NaN.
pub(super) fn canonical_nans(array: ArrayRef) -> ArrayRef {
    let values = array.as_primitive::<Float64Type>();
    let canonical = f64::NAN.to_bits();
    if !values
        .values()
        .iter()
        .any(|v| v.is_nan() && v.to_bits() != canonical)
    {
        return array;
    }
    let fixed: arrow::array::Float64Array =
        arrow::compute::kernels::arity::unary(values, |v| if v.is_nan() { f64::NAN } else { v });
    Arc::new(fixed)
}

/// The input of one call, laid out as the ABI's batch descriptor plus buffers. The buffers are
/// borrowed from the Arrow arrays where their bytes are already what the ABI wants, so that
/// the only copy is the one into guest memory.
pub(super) struct EncodedBatch<'a> {
    len: usize,
    n_rows: usize,
    cols: Vec<EncodedColumn<'a>>,
}

/// One argument column's buffers, rebased to offset 0.
pub(super) struct EncodedColumn<'a> {
    ty: WasmType,
    null_count: usize,
    validity: Option<Cow<'a, [u8]>>,
    offsets: Option<Cow<'a, [u8]>>,
    data: Cow<'a, [u8]>,
}

pub(super) fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// The bytes of a primitive array's values (its slice, not the whole buffer).
pub(super) fn value_bytes<T: arrow::datatypes::ArrowPrimitiveType>(a: &ArrayRef) -> &[u8] {
    let values = a.as_primitive::<T>().values();
    let bytes: &[u8] = values.inner().as_slice();
    &bytes[..values.len() * std::mem::size_of::<T::Native>()]
}

pub(super) fn encode_batch(args: &[ArrayRef], n_rows: usize) -> Result<EncodedBatch<'_>> {
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
        // Fixed-width values go as they are in the array.
        let fixed = |ty, bytes| (ty, None, Cow::Borrowed(bytes));
        let (ty, offsets, data) = match a.data_type() {
            DataType::Int32 => fixed(WasmType::Int32, value_bytes::<Int32Type>(a)),
            DataType::Int64 => fixed(WasmType::Int64, value_bytes::<Int64Type>(a)),
            DataType::Float64 => fixed(WasmType::Float64, value_bytes::<Float64Type>(a)),
            DataType::Date32 => fixed(WasmType::Date32, value_bytes::<Date32Type>(a)),
            DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => fixed(
                WasmType::Timestamp,
                value_bytes::<arrow::datatypes::TimestampMicrosecondType>(a),
            ),
            DataType::Decimal128(_, WasmType::DECIMAL_SCALE) => fixed(
                WasmType::Decimal,
                value_bytes::<arrow::datatypes::Decimal128Type>(a),
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
    pub(super) fn write_into(&self, base: u32, dst: &mut [u8]) -> Result<()> {
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
    pub(super) idle: Mutex<Vec<Guest>>,
    pub(super) sandbox: Arc<Sandbox>,
    pub(crate) module: Arc<ValidatedModule>,
    pub(super) meter: Arc<JobMeter>,
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

    /// Records `error` as the job's failure (see [`JobMeter::check`]) and gives it back.
    pub(crate) fn fail(&self, error: Error) -> Error {
        self.meter.fail(error)
    }

    /// Calls a scalar. Instances are reused across the job's batches, except in a gated job:
    /// there every call runs in an instance made for it and dropped after it, so a scalar's
    /// output is a function of its batch alone (no value of a row the query filtered out, or
    /// of another call, reaches another cell through a guest's memory). The gate reads the
    /// very values the query computed in any case (one evaluation, `crate::tee`).
    pub(super) fn call(
        &self,
        fn_id: i32,
        sig: &FunctionSig,
        args: &[ArrayRef],
        n_rows: usize,
    ) -> Result<ArrayRef> {
        self.meter.check()?;
        if self.meter.stateless_scalars() {
            let mut guest = self
                .sandbox
                .instantiate_for_call(&self.module, &self.meter)?;
            return guest
                .call_scalar(fn_id, sig, args, n_rows)
                .map_err(|e| self.meter.fail(e));
        }
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut guest = match idle {
            Some(g) => g,
            None => self
                .sandbox
                .instantiate_for_call(&self.module, &self.meter)?,
        };
        let out = guest
            .call_scalar(fn_id, sig, args, n_rows)
            .map_err(|e| self.meter.fail(e))?;
        // Only a guest whose call succeeded goes back; a trapped one is dropped above by `?`.
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(guest);
        Ok(out)
    }
}
