//! The guest's side of the ABI (`ABI.md`): the state the host reads between calls, the
//! descriptors, the entry points the exports of [`export_udfs!`](crate::export_udfs) call, and
//! all the code that reads host-written memory through raw pointers.
//!
//! The host is the trusted side of this boundary: the addresses it passes are taken to be what
//! the ABI says they are. The `__*` entry points are therefore safe functions, called only by
//! the generated exports with the host's arguments; the `unsafe fn`s below are where that trust
//! is used, each with the contract it relies on. A host that broke the ABI could make the guest
//! read its own memory wrongly or trap on wasm's bounds checks, never reach outside the module.

use std::cell::RefCell;

use crate::aggregate::{AggArgs, Aggregate, StateValues};
use crate::column::{Batch, Column, Type};
use crate::output::{Output, Ret};
use crate::table::{Rows, TableFunction};

/// Guest-side state that must outlive a call: the host reads it after the call returns.
struct State {
    input: Vec<u64>,
    output: Option<Output>,
    out_desc: [u32; 7],
    /// The state columns of an aggregate and their batch descriptor.
    state_outputs: Vec<Output>,
    state_desc: Vec<u32>,
    /// Per aggregate function id: its groups (a `Vec<T>` of its [`Aggregate`] type).
    groups: Vec<Option<Box<dyn std::any::Any>>>,
    /// Per table function id: the open function and the rows it produced, not yet pulled.
    tables: Vec<Option<Box<dyn std::any::Any>>>,
    pending: Option<Rows>,
    error: String,
    error_desc: [u32; 2],
    manifest: String,
    manifest_desc: [u32; 2],
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State {
        input: Vec::new(),
        output: None,
        out_desc: [0; 7],
        state_outputs: Vec::new(),
        state_desc: Vec::new(),
        groups: Vec::new(),
        tables: Vec::new(),
        pending: None,
        error: String::new(),
        error_desc: [0; 2],
        manifest: String::new(),
        manifest_desc: [0; 2],
    }) };
}

/// The address of `p` as the ABI's 32-bit offset into the module's memory (exact on wasm32).
fn ptr<T>(p: *const T) -> u32 {
    p as usize as u32
}

/// The u32 at `addr`, which need not be aligned.
///
/// # Safety
///
/// The 4 bytes at `addr` must be initialized memory of this module: in practice a field of a
/// descriptor the host wrote into the buffer from `tg_alloc`.
unsafe fn read_u32(addr: usize) -> u32 {
    // SAFETY: the caller guarantees that the 4 bytes at `addr` are readable and initialized;
    // `read_unaligned` asks nothing of their alignment.
    unsafe { (addr as *const u32).read_unaligned() }
}

/// The `len` bytes at `addr`; no bytes for a zero address or length.
///
/// # Safety
///
/// Unless `addr` or `len` is 0, the `len` bytes at `addr` must be initialized memory of one
/// allocation of this module that nothing writes while the returned slice lives (`'a`, which
/// the caller chooses): in practice a buffer the host wrote into the one from `tg_alloc`, which
/// stays as it is until the next `tg_alloc`, after the call that reads it.
unsafe fn slice<'a>(addr: u32, len: usize) -> &'a [u8] {
    if addr == 0 || len == 0 {
        return &[];
    }
    // SAFETY: `addr` is not null and, by the caller's guarantee, the `len` bytes there are
    // initialized, in one allocation and unchanged for `'a`; a `u8` needs no alignment.
    unsafe { std::slice::from_raw_parts(addr as usize as *const u8, len) }
}

/// The batch whose descriptor (`ABI.md`, "Descriptors") is at `desc`, its columns borrowing the
/// buffers the descriptor points at.
///
/// # Safety
///
/// `desc` must point at a batch descriptor whose every non-zero buffer address points at as
/// many bytes as the ABI gives that buffer (`ceil(len / 8)` for a validity bitmap, `len + 1`
/// i32 for the offsets of a `utf8` column, `data_len` for the data), all of it as [`slice`]
/// requires for `'a`: in practice what the host wrote into the buffer from `tg_alloc` before
/// the call.
unsafe fn parse_batch<'a>(desc: u32) -> Result<Batch<'a>, String> {
    let base = desc as usize;
    // SAFETY: by the caller's guarantee a batch descriptor, which starts with these two u32,
    // is at `base`.
    let (n_rows, n_cols) = unsafe { (read_u32(base) as usize, read_u32(base + 4) as usize) };
    let mut columns = Vec::with_capacity(n_cols);
    for c in 0..n_cols {
        let at = base + 8 + c * 28;
        // SAFETY: the descriptor at `base` holds `n_cols` column descriptors of seven u32 after
        // its two, so column `c`'s is at `at`; `f` is called with field numbers 0 to 6 only.
        let f = |i: usize| unsafe { read_u32(at + 4 * i) };
        let (type_id, len, _null_count) = (f(0), f(1) as usize, f(2));
        let (validity, offsets, data, data_len) = (f(3), f(4), f(5), f(6) as usize);
        let offsets_len = if type_id == Type::Utf8 as u32 {
            (len + 1) * 4
        } else {
            0
        };
        // SAFETY: the caller guarantees that each non-zero buffer address of the descriptor
        // points at as many bytes as the ABI gives that buffer, which are the lengths asked
        // for here, valid for `'a`; a zero address is read as no buffer.
        let (validity, offsets, data) = unsafe {
            (
                (validity != 0).then(|| slice(validity, len.div_ceil(8))),
                slice(offsets, offsets_len),
                slice(data, data_len),
            )
        };
        columns.push(Column {
            type_id,
            len,
            validity,
            offsets,
            data,
        });
    }
    Ok(Batch { n_rows, columns })
}

#[doc(hidden)]
pub fn __alloc(size: i32) -> i32 {
    if size < 0 {
        return 0;
    }
    STATE.with_borrow_mut(|s| {
        // The host writes every byte it sends; what lies between is never read.
        let words = (size as usize).div_ceil(8);
        if s.input.len() < words {
            s.input.resize(words, 0);
        }
        ptr(s.input.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __error() -> i32 {
    STATE.with_borrow_mut(|s| {
        s.error_desc = [ptr(s.error.as_ptr()), s.error.len() as u32];
        ptr(s.error_desc.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __signature(name: &str, args: &[Type], ret: Type) -> String {
    let args: Vec<&str> = args.iter().map(|t| t.name()).collect();
    format!("scalar {name}({}) -> {}", args.join(","), ret.name())
}

#[doc(hidden)]
pub fn __aggregate_signature<T: Aggregate>(name: &str) -> String {
    let state: Vec<&str> = T::State::types().iter().map(|t| t.name()).collect();
    let args: Vec<&str> = T::Arg::types().iter().map(|t| t.name()).collect();
    format!(
        "aggregate {name}({}) -> {} state({})",
        args.join(","),
        <T::Out as Ret>::TYPE.name(),
        state.join(",")
    )
}

fn descriptor(out: &Output) -> [u32; 7] {
    [
        out.ty as u32,
        out.len as u32,
        out.null_count as u32,
        if out.null_count > 0 {
            ptr(out.validity.as_ptr())
        } else {
            0
        },
        if out.ty == Type::Utf8 {
            ptr(out.offsets.as_ptr())
        } else {
            0
        },
        ptr(out.data.as_ptr()),
        out.data_len() as u32,
    ]
}

/// Runs `f` on the groups of aggregate `fn_id`, creating them on first use.
fn with_groups<T: Aggregate, R>(fn_id: i32, f: impl FnOnce(&mut Vec<T>) -> R) -> Result<R, String> {
    let slot = usize::try_from(fn_id).map_err(|_| "bad function id".to_string())?;
    // Taken out while `f` runs, so that the user's code never sees the borrowed state.
    let mut taken = STATE.with_borrow_mut(|s| {
        if s.groups.len() <= slot {
            s.groups.resize_with(slot + 1, || None);
        }
        s.groups[slot].take()
    });
    let groups = match taken.as_mut().map(|b| b.downcast_mut::<Vec<T>>()) {
        Some(Some(g)) => g,
        Some(None) => return Err("aggregate state of another type".into()),
        None => {
            taken = Some(Box::new(Vec::<T>::new()));
            taken
                .as_mut()
                .and_then(|b| b.downcast_mut::<Vec<T>>())
                .expect("just created")
        }
    };
    let r = f(groups);
    STATE.with_borrow_mut(|s| s.groups[slot] = taken);
    Ok(r)
}

fn status(result: Result<(), String>) -> i32 {
    match result {
        Ok(()) => 1,
        Err(e) => {
            STATE.with_borrow_mut(|s| s.error = e);
            0
        }
    }
}

fn group_index(groups: &[u8], row: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&groups[row * 4..row * 4 + 4]);
    u32::from_le_bytes(b) as usize
}

#[doc(hidden)]
pub fn __agg_update<T: Aggregate>(fn_id: i32, batch: i32, groups: i32, total: i32) -> i32 {
    status((|| {
        // SAFETY: `batch` is what the host passed to `tg_agg_update`: by the ABI, a batch
        // descriptor it wrote with its buffers into the buffer from `tg_alloc`, which stays as
        // it is until the next `tg_alloc`, after this call.
        let b = unsafe { parse_batch(batch as u32) }?;
        b.expect_types(&T::Arg::types())?;
        let total = usize::try_from(total).map_err(|_| "bad group count".to_string())?;
        // SAFETY: by the ABI, `groups` points at one u32 group index per row of the batch,
        // written after it into the same buffer from `tg_alloc`.
        let indices = unsafe { slice(groups as u32, b.n_rows * 4) };
        let cols: Vec<Column<'_>> = (0..b.columns.len()).map(|i| *b.column(i)).collect();
        let no_nulls = cols.iter().all(|c| c.validity.is_none());
        with_groups::<T, _>(fn_id, |states| {
            if states.len() < total {
                states.resize_with(total, T::default);
            }
            if no_nulls {
                // The values and the group indices are read in step.
                for (x, g) in T::Arg::rows(&cols, b.n_rows).zip(indices.chunks_exact(4)) {
                    let g = u32::from_le_bytes(g.try_into().unwrap_or([0xFF; 4])) as usize;
                    states
                        .get_mut(g)
                        .ok_or("group index out of range")?
                        .update(x);
                }
                return Ok(());
            }
            for row in 0..b.n_rows {
                if cols.iter().any(|c| c.is_null(row)) {
                    continue;
                }
                let g = group_index(indices, row);
                states
                    .get_mut(g)
                    .ok_or("group index out of range")?
                    .update(T::Arg::get(&cols, row));
            }
            Ok(())
        })?
    })())
}

#[doc(hidden)]
pub fn __agg_merge<T: Aggregate>(fn_id: i32, batch: i32, groups: i32, total: i32) -> i32 {
    status((|| {
        // SAFETY: `batch` is what the host passed to `tg_agg_merge`: by the ABI, a batch
        // descriptor it wrote with its buffers into the buffer from `tg_alloc`, which stays as
        // it is until the next `tg_alloc`, after this call.
        let b = unsafe { parse_batch(batch as u32) }?;
        b.expect_types(&T::State::types())?;
        let total = usize::try_from(total).map_err(|_| "bad group count".to_string())?;
        // SAFETY: by the ABI, `groups` points at one u32 group index per row of the batch,
        // written after it into the same buffer from `tg_alloc`.
        let indices = unsafe { slice(groups as u32, b.n_rows * 4) };
        let cols: Vec<Column<'_>> = (0..b.columns.len()).map(|i| *b.column(i)).collect();
        with_groups::<T, _>(fn_id, |states| {
            if states.len() < total {
                states.resize_with(total, T::default);
            }
            for row in 0..b.n_rows {
                if cols.iter().any(|c| c.is_null(row)) {
                    continue;
                }
                let g = group_index(indices, row);
                let s = states.get_mut(g).ok_or("group index out of range")?;
                s.merge(T::State::get(&cols, row));
            }
            Ok(())
        })?
    })())
}

#[doc(hidden)]
pub fn __agg_state<T: Aggregate>(fn_id: i32) -> i32 {
    let built = with_groups::<T, _>(fn_id, |states| {
        let mut outs: Vec<Output> = T::State::types()
            .into_iter()
            .map(|t| Output::new(t, states.len()))
            .collect();
        for s in states.iter() {
            s.state().push(&mut outs);
        }
        (states.len(), outs)
    });
    match built {
        Ok((n_rows, outs)) => STATE.with_borrow_mut(|s| {
            s.state_desc = vec![n_rows as u32, outs.len() as u32];
            for out in &outs {
                s.state_desc.extend_from_slice(&descriptor(out));
            }
            s.state_outputs = outs;
            ptr(s.state_desc.as_ptr()) as i32
        }),
        Err(e) => status(Err(e)),
    }
}

#[doc(hidden)]
pub fn __agg_evaluate<T: Aggregate>(fn_id: i32) -> i32 {
    let built = with_groups::<T, _>(fn_id, |states| {
        let mut out = Output::new(<T::Out as Ret>::TYPE, states.len());
        for s in states.iter() {
            match s.finish() {
                Some(v) => v.push(&mut out),
                None => out.push_null(),
            }
        }
        out
    });
    match built {
        Ok(out) => STATE.with_borrow_mut(|s| {
            s.out_desc = descriptor(&out);
            s.output = Some(out);
            ptr(s.out_desc.as_ptr()) as i32
        }),
        Err(e) => status(Err(e)),
    }
}

#[doc(hidden)]
pub fn __agg_reset<T: Aggregate>(fn_id: i32) -> i32 {
    status(with_groups::<T, _>(fn_id, |states| *states = Vec::new()))
}

#[doc(hidden)]
pub fn __table_signature<T: TableFunction>(name: &str) -> String {
    let input: Vec<&str> = T::input().iter().map(|t| t.name()).collect();
    let output: Vec<String> = T::output()
        .iter()
        .map(|(n, t)| format!("{n} {}", t.name()))
        .collect();
    format!(
        "table {name}({}) -> ({})",
        input.join(","),
        output.join(", ")
    )
}

fn output_types<T: TableFunction>() -> Vec<Type> {
    T::output().into_iter().map(|(_, t)| t).collect()
}

/// Runs `f` on the open table function `fn_id` and its pending rows.
fn with_table<T: TableFunction>(
    fn_id: i32,
    open: bool,
    f: impl FnOnce(&mut T, &mut Rows) -> Result<(), String>,
) -> Result<(), String> {
    let slot = usize::try_from(fn_id).map_err(|_| "bad function id".to_string())?;
    let (taken, pending) = STATE.with_borrow_mut(|s| {
        if s.tables.len() <= slot {
            s.tables.resize_with(slot + 1, || None);
        }
        (s.tables[slot].take(), s.pending.take())
    });
    let mut table: Box<dyn std::any::Any> = match (taken, open) {
        (_, true) => Box::new(T::default()),
        (Some(t), false) => t,
        (None, false) => return Err("the table function is not open".into()),
    };
    let mut rows = pending.unwrap_or_else(|| Rows::new(&output_types::<T>()));
    let result = match table.downcast_mut::<T>() {
        Some(t) => f(t, &mut rows),
        None => Err("table function state of another type".into()),
    };
    STATE.with_borrow_mut(|s| {
        s.tables[slot] = Some(table);
        s.pending = Some(rows);
    });
    result
}

#[doc(hidden)]
pub fn __table_open<T: TableFunction>(fn_id: i32) -> i32 {
    status(with_table::<T>(fn_id, true, |_, _| Ok(())))
}

#[doc(hidden)]
pub fn __table_push<T: TableFunction>(fn_id: i32, batch: i32) -> i32 {
    status(with_table::<T>(fn_id, false, |t, rows| {
        // SAFETY: `batch` is what the host passed to `tg_table_push`: by the ABI, a batch
        // descriptor it wrote with its buffers into the buffer from `tg_alloc`, which stays as
        // it is until the next `tg_alloc`, after this call.
        let b = unsafe { parse_batch(batch as u32) }?;
        b.expect_types(&T::input())?;
        t.push(&b, rows)
    }))
}

#[doc(hidden)]
pub fn __table_close<T: TableFunction>(fn_id: i32) -> i32 {
    status(with_table::<T>(fn_id, false, |t, rows| t.close(rows)))
}

/// Hands the rows produced so far to the host as a batch descriptor, and starts anew.
#[doc(hidden)]
pub fn __table_pull<T: TableFunction>(_fn_id: i32) -> i32 {
    STATE.with_borrow_mut(|s| {
        let rows = s
            .pending
            .take()
            .unwrap_or_else(|| Rows::new(&output_types::<T>()));
        let n = rows.columns.first().map_or(0, |c| c.len);
        s.state_desc = vec![n as u32, rows.columns.len() as u32];
        for out in &rows.columns {
            s.state_desc.extend_from_slice(&descriptor(out));
        }
        s.state_outputs = rows.columns;
        ptr(s.state_desc.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __no_function(fn_id: i32) -> i32 {
    status(Err(format!("no aggregate function with id {fn_id}")))
}

#[doc(hidden)]
pub fn __manifest(lines: &[String]) -> i32 {
    STATE.with_borrow_mut(|s| {
        s.manifest = lines.join("\n");
        s.manifest_desc = [ptr(s.manifest.as_ptr()), s.manifest.len() as u32];
        ptr(s.manifest_desc.as_ptr()) as i32
    })
}

#[doc(hidden)]
pub fn __new_output(ty: Type, n_rows: usize) -> Output {
    Output::new(ty, n_rows)
}

#[doc(hidden)]
pub fn __appending_output(ty: Type, n_rows: usize) -> Output {
    Output::appending(ty, n_rows)
}

/// Marks the rows whose function returned `None` in a plain output.
#[doc(hidden)]
pub fn __plain_nulls(out: &mut Output, nulls: &[usize]) {
    out.mark_nulls(nulls);
}

/// Whether no argument of the batch has a NULL: the fast path reads the columns straight.
#[doc(hidden)]
pub fn __no_nulls(batch: &Batch<'_>) -> bool {
    batch.columns.iter().all(|c| c.validity.is_none())
}

#[doc(hidden)]
pub fn __scalar(desc: i32, run: impl FnOnce(&Batch<'_>) -> Result<Output, String>) -> i32 {
    // SAFETY: `desc` is what the host passed to `tg_scalar`: by the ABI, a batch descriptor it
    // wrote with its buffers into the buffer from `tg_alloc`, which stays as it is until the
    // next `tg_alloc`, after this call.
    let result = unsafe { parse_batch(desc as u32) }.and_then(|batch| run(&batch));
    STATE.with_borrow_mut(|s| match result {
        Ok(out) => {
            s.out_desc = descriptor(&out);
            s.output = Some(out);
            ptr(s.out_desc.as_ptr()) as i32
        }
        Err(e) => {
            s.error = e;
            0
        }
    })
}
