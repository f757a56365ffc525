//! Pure policy decisions for Tidegate: who may do what, to which data, in which state.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of wasmtime, DataFusion,
//! SQLite or tokio. Every decision is a function of its arguments and returns a [`Refusal`]
//! whose reason a user can act on.

mod detect;
mod gate;
pub mod hidden;
mod inference;
mod mock;
mod model;
mod privacy;
mod quality;
mod release;
mod rules;

pub use detect::{
    ColumnProposal, Detection, SensitiveType, TagProposal, mask, propose_column_tags, propose_tag,
    propose_tag_for, resident_id_check_char, scan_value,
};
pub use gate::{
    ALLOWED_AGGREGATES, CheckOutcome, GateCheck, GateReport, MAX_WITHHELD_FAILURES, QueryShape,
    check_shape, default_threshold, is_allowed_aggregate, scenario_threshold,
};
pub use inference::{
    DatasetRows, Disclosure, Element, Ledger, SubjectSet, decode_by_dataset, decode_rows,
    decode_sets, differs_by_fewer_than, encode_by_dataset, encode_rows, encode_sets,
    kept_by_dataset, write_by_dataset,
};
pub use mock::{MAX_MOCK_ROWS, MockSpec, MockValue, check_mock_spec, mock_column};
pub use model::{
    AlertKind, AlertThresholds, AuditAction, ColumnSpec, ColumnTag, DEFAULT_JOB_MEMORY_MIB,
    DataType, Decision, ExportRules, ExportState, JOB_MEMORY_MIB_RANGE, JobState, Level,
    MAX_CPU_SECONDS_PER_DAY, MAX_GIGAFUEL_PER_DAY, MAX_JOBS_PER_DAY, MAX_STORAGE_MIB, Masking,
    OrgKind, Origin, Principal, QuotaUse, Role, ScenarioState, TRAINING_VALID_DAYS, TimeUnit,
    parse_tags,
};
pub use privacy::{
    BoundedAggregate, ColumnNoise, ContributionBounds, DatasetBudget, GroupSelection, NoisePlan,
    PrivacyShape, RandomWords, SELECTION_DELTA, discrete_laplace, noise_grid, noised, plan_noise,
};
pub use quality::{
    MAX_CATEGORIES, MAX_QUALITY_RULES, OnFail, QualityCheck, QualityRule, check_digit_type,
    check_quality_rules, quality_verdict, value_keeps,
};
pub use release::{
    DominanceRule, Lineage, OPERATORS_ABOVE_AGGREGATE, OPERATORS_BELOW_AGGREGATE,
    RELEASABLE_AGGREGATES, Released, releasable_aggregate, releasable_condition,
    releasable_group_key,
};
pub use rules::{
    Downloader, ExportEvent, MAX_QUEUED_JOBS_PER_ORG, MAX_SAMPLE_ROWS, Refusal, ScenarioApprovals,
    authorization_ended, budget_nearly_spent, can_act_untrained, can_activate_scenario,
    can_apply_for_scenario, can_approve_module, can_approve_scenario, can_cancel_job,
    can_change_scenario, can_discard_result, can_download_bundle, can_evaluate_org, can_freeze_org,
    can_handle_alerts, can_hold_roles, can_import, can_import_social, can_keep_custody,
    can_list_dataset, can_queue_job, can_read_alerts, can_read_directory, can_read_metrics,
    can_record_training, can_repin_grant, can_request_export, can_review_export, can_revoke_module,
    can_run_job, can_sample_dataset, can_search_audit, can_see_dataset_usage, can_store_result,
    can_submit_scenario, can_submit_within_quota, can_upload_module, check_column_names,
    check_course, check_dataset_name, check_epsilon, check_name, check_new_term, check_new_version,
    check_source_rebuild, is_hidden_char, job_budgets_within_quota, next_export_state,
    oversees_all_orgs, publishes_figures, require_not_frozen, require_role, require_training,
    required_export_approvals, scenario_closes, scenario_state, suppressed_in_a_row,
    training_holds, training_valid_until, validate_alert_thresholds, validate_export_rules,
};

#[cfg(test)]
mod purity {
    /// The crates the policy may build on: none of them does I/O for it. Adding one is a
    /// decision to make here, in the open (clippy.toml refuses the standard library's I/O).
    /// `rand_chacha` and `rand_core` are a seeded generator for mock datasets, without their
    /// `os_rng` feature: they never reach the operating system's randomness.
    const ALLOWED: &[&str] = &[
        "utoipa",
        "serde",
        "thiserror",
        "time",
        "rand_chacha",
        "rand_core",
    ];

    #[test]
    fn the_policy_depends_on_no_crate_that_does_io() {
        let manifest = include_str!("../Cargo.toml");
        let dependencies = manifest
            .split("[dependencies]")
            .nth(1)
            .expect("a [dependencies] table")
            .split("\n[")
            .next()
            .unwrap_or_default();
        let names: Vec<&str> = dependencies
            .lines()
            .filter_map(|l| l.split(['=', '.']).next())
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
            .collect();
        assert!(!names.is_empty());
        for name in names {
            assert!(ALLOWED.contains(&name), "policy depends on `{name}`");
        }
    }
}
