//! Tidegate's integration tests: one test binary with a module per feature, so that the
//! workspace links one binary of the whole platform instead of one per file. A test's name is
//! its module's then its own: `cargo test -p tidegate-tests --test it flow::` runs the whole
//! flow, `... --test it -- --exact sql::every_query_in_the_slt_files_gets_the_outcome_it_lists`
//! one test.
//!
//! The tests run as threads of one process: none may change what the process shares (its
//! environment, its working directory), and a test that measures the whole process or may
//! abort it runs again alone in a child process ([`common::in_a_process_of_its_own`]).

mod common;

// The whole flow through a real server, and the API's edge.
mod cli;
mod console;
mod custody;
mod dev_run;
mod edge;
mod flow;
mod lifecycle;
mod lists;
mod mock;
mod openapi;
mod oversight;
mod queue;
mod scenarios;
mod sources;

// The export gate.
mod attacks;
mod gate_property;
mod lineage;
mod memory;

// Jobs: their SQL, their data and the guests they call.
mod aggregates;
mod c_udf;
mod cluster;
mod column_types;
mod hostile;
mod spill;
mod sql;
mod tables;

// Models of the whole platform, and the review story in a real browser.
mod browser;
mod model;

// The red teams' attacks, one module per round or target.
mod redteam;
mod redteam_edge;
mod redteam_gate;
mod redteam_gate2;
mod redteam_gate3;
mod redteam_gate4;
mod redteam_gate5;
mod redteam_import;
mod redteam_queue;
