//! The `tidegate` binary's library: the HTTP API, its client, the CLI and the demo.
//!
//! Architecture invariant: this crate is the edge. It turns HTTP requests and command lines
//! into calls on `tidegate_runtime::Platform` and prints or serves their answers; it holds no
//! policy of its own.

mod api;
mod cli;
mod client;
mod console;
mod demo;
mod metrics;
pub mod otel;
mod package_files;
pub mod rebuild;
mod report;
mod webhook;
mod wire;

pub use api::{router, router_with, serve, spawn_server};
pub use cli::{main_with_args, scan_report};
pub use client::Client;
pub use demo::{DemoOptions, DemoOutcome, World, run_demo, visitor_csv};
pub use report::{annual_report_html, export_html};

/// The example UDF module (examples/visitor-udf), built for wasm32 by this crate's build script.
pub const VISITOR_UDF_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/visitor_udf.wasm"));

/// Aggregate UDFs (examples/aggregate-udf), built for wasm32 by this crate's build script.
pub const AGGREGATE_UDF_WASM: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/aggregate_udf.wasm"));

/// A table function, a whole-model job (examples/model-udf), built for wasm32 by this crate's
/// build script.
pub const MODEL_UDF_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model_udf.wasm"));

/// The benchmark workloads (examples/bench-udf), built for wasm32 by this crate's build script.
pub const BENCH_UDF_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench_udf.wasm"));
