//! Guest SDK: write Tidegate scalar UDFs as plain Rust functions over row values; the
//! [`export_udfs!`] macro vectorizes them over the batches of the Tidegate ABI (see `ABI.md`).
//!
//! Architecture invariant: this crate depends on nothing but its own attribute macros (compile
//! time only) and imports nothing from the host; it builds for `wasm32-unknown-unknown` (and for
//! the host, so its logic can be unit-tested).
//!
//! Two ways to export functions: the attribute macros (`#[udfs]` on a module, `#[scalar]`,
//! `#[aggregate]`, `#[table]` on its items; see `examples/aggregate-udf`) or the declarative
//! [`export_udfs!`] list they expand to.
//!
//! ```text
//! fn double(x: i64) -> Option<i64> { x.checked_mul(2) }
//! tidegate_udf_sdk::export_udfs! {
//!     scalar fn double(x: i64) -> i64;
//! }
//! ```
//! A row whose argument is NULL yields NULL without calling the function; a function that
//! returns `None` yields NULL.

#![deny(clippy::undocumented_unsafe_blocks)]

// The value model (`column`, `output`), the traits of aggregates and table functions, civil
// dates, and the boundary: `export` holds the `export_udfs!` macro, whose exports call into
// `abi`, the one module that reads host-written memory through raw pointers.
mod abi;
mod aggregate;
mod column;
pub mod date;
mod export;
mod output;
mod table;

pub use aggregate::{AggArgs, Aggregate, StateValues};
pub use column::{Arg, Batch, Column, Date32, Decimal, Plain, Timestamp, Type};
pub use output::{Output, Ret};
pub use table::{Rows, TableFunction};
pub use tidegate_udf_macros::{aggregate, scalar, table, udfs};

// What the macros' expansions call, by `$crate::` paths; not part of the documented API.
#[doc(hidden)]
pub use abi::{
    __agg_evaluate, __agg_merge, __agg_reset, __agg_state, __agg_update, __aggregate_signature,
    __alloc, __appending_output, __error, __manifest, __new_output, __no_function, __no_nulls,
    __plain_nulls, __scalar, __signature, __table_close, __table_open, __table_pull, __table_push,
    __table_signature,
};

/// The ABI version this SDK implements; the host refuses modules of another version.
pub const ABI_VERSION: i32 = 1;

/// The SDK's name and version as a module carries them (`export_udfs!` writes them into the
/// module's `tidegate.sdk` custom section).
#[doc(hidden)]
pub const __SDK_ID: &str = concat!("tidegate-udf-sdk ", env!("CARGO_PKG_VERSION"), "\n");

/// [`__SDK_ID`]'s bytes as an array (what a custom section's static must be).
#[doc(hidden)]
pub const fn __sdk_id<const N: usize>() -> [u8; N] {
    let bytes = __SDK_ID.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N && i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}
