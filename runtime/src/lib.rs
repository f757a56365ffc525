//! Tidegate's runtime: the wasmtime host, DataFusion jobs, the export gate, encrypted storage,
//! the audit log and the platform workflows that tie them to the policy.
//!
//! Architecture invariant: decisions come from `tidegate-policy`; this crate executes and
//! stores. It knows nothing of HTTP or the command line.

mod audit;
mod audited;
mod behind;
mod bundle;
pub mod clock;
mod cluster;
mod crypto;
mod documents;
mod error;
mod gate;
mod hidden;
mod job;
mod local;
mod masking;
mod metering;
mod platform;
mod records;
mod release;
mod sandbox;
pub mod source;
mod spill;
mod storage;
mod tables;
mod tee;
mod text;
mod threads;
pub use threads::without_huge_pages;

pub use audit::{
    Anchor as AuditAnchor, AuditEntry, AuditLog, AuditSlice, AuditVerdict, CHECKPOINT_EVERY,
    Checkpoint, CheckpointSigner, RETENTION_DAYS, SEGMENT_ENTRIES, checkpoints_path,
    export_slice as export_audit_slice, read_verified as read_audit_log,
    verify_file as verify_audit_file, verify_slice as verify_audit_slice,
};
pub use bundle::{Signer, Verified, verify as verify_bundle, write as write_bundle};
pub use cluster::{
    Cluster, DEFAULT_EXECUTOR_MEMORY_MIB, ExecutorOptions, JobSource, ResolvedJob, run_executor,
    run_scheduler,
};
pub use crypto::{
    DataKey, MasterKey, PseudonymKey, SealedReader, SubjectKey, random_token, sha256_hex,
};
pub use documents::{
    AnnualIncidents, AnnualReport, AnnualScenario, AnnualTotals, Change, ClosingReceipt,
    ClosingReceiptBody, CustodyRecord, CustodyRecordBody, Destroyed, DestroyedKind, Evaluation,
    ExitCertificate, ExitCertificateBody, Incidents, PolicyApplied, PolicyChange, PolicyDocument,
    PolicyScenario, Pruned, ScenarioChange, SignedEvaluation, verify_certificate, verify_document,
};
pub use error::{Error, Result};
pub use gate::{
    GateInput, GateOutcome, Groups as GateGroups, evaluate as evaluate_gate, scan_columns,
};
pub use job::{EngineLimits, JobCost, JobOutput, run_query, run_query_isolated, run_query_until};
pub use local::{LocalRun, LocalScenario, gated_table, run_as_scenario};
pub use masking::{desensitization_udfs, pseudonym_udf};
pub use metering::{
    Event as MeteredEvent, Ledger, PRICE_ITEMS, ScenarioTerms, Statement, StatementLine,
    ledger_from_audit, statement as statement_from_ledger,
};
pub use platform::{
    ALERT_SIGNING_CONTEXT, AUDIT_FILE, AlertSettings, AlertView, ApprovalView, AuditQuery,
    AuditSearch, ColumnInput, ContributionReport, DatasetContribution, DatasetUsage, DatasetView,
    EarlierExport, EvaluationRequest, ExecutorJobs, ExportSummary, ExportView, GrantRequest,
    ImportRequest, JobRequest, JobSummary, JobView, ListQuery, Listing, MOCK_MARKER, MockFile,
    ModuleDetail, ModuleSummary, ModuleView, OrgView, PUBLIC_KEY_FILE, Platform, PlatformCounts,
    PrincipalView, ProductUse, PublicRecord, ResourceUse, SESSION_SECONDS, SWEEP_ACTOR, SampleView,
    ScenarioRequest, ScenarioUse, ScenarioView, Session, StagedUpload, SweepReport, TrainingState,
    local_table, verify_alert,
};
pub use sandbox::{
    CALL_FUEL, FUEL_FLOOR, FUEL_PER_MS, FunctionSig, Functions, GuestLimits, GuestSession,
    INSTANCE_FUEL, JobMeter, ModuleFacts, PAGE_FUEL, Sandbox, ValidatedModule, WasmType,
    module_facts,
};
pub use storage::{SealedSource, SealedStore, read_parquet};
pub use tables::{TableData, TableInput};
pub use text::{MAX_QUOTED_BYTES, defuse};

/// The current time as RFC 3339, UTC (the platform's [`clock`]).
pub(crate) fn now_rfc3339() -> String {
    clock::now_rfc3339()
}
