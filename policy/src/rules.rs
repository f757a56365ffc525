//! Authorization decisions: roles, training, scenario approvals and terms, separation of duties.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use time::Date;

use crate::model::{
    Decision, ExportRules, ExportState, Level, OrgKind, Principal, QuotaUse, Role, ScenarioState,
};

/// A decision to refuse, with a reason the user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Refusal {
    pub fn new(reason: impl Into<String>) -> Self {
        Refusal {
            reason: reason.into(),
        }
    }
}

fn refuse<T>(reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::new(reason))
}

pub fn require_role(p: &Principal, role: Role) -> Result<(), Refusal> {
    require_not_frozen(p)?;
    if p.has_role(role) {
        Ok(())
    } else {
        refuse(format!(
            "principal {} lacks the {role} role this action needs",
            p.id
        ))
    }
}

/// R-MONITOR: a frozen org acts on nothing (no application, approval, import, job, export
/// or review) until the authority lifts the freeze. Every role check and every training check
/// asks this first.
pub fn require_not_frozen(p: &Principal) -> Result<(), Refusal> {
    if p.frozen {
        refuse(format!(
            "the org {} is frozen by the authority; nothing of it acts until the freeze is lifted",
            p.org
        ))
    } else {
        Ok(())
    }
}

/// A scenario becomes active only while its applicant's org is not frozen: an approval
/// given during a freeze is recorded, but activates nothing.
pub fn can_activate_scenario(applicant_org_frozen: bool) -> Result<(), Refusal> {
    if applicant_org_frozen {
        refuse("the applicant's org is frozen by the authority: the scenario cannot become active")
    } else {
        Ok(())
    }
}

/// An org of the authority itself is never frozen: its admins lift freezes.
pub fn can_freeze_org(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    require_role(p, Role::Admin)?;
    require_training(p)?;
    if kind == OrgKind::Authority {
        return refuse(
            "an org of the authority is not frozen (its admins are the ones who lift freezes)",
        );
    }
    Ok(())
}

/// The most rows of a dataset version's sample for inspection.
pub const MAX_SAMPLE_ROWS: u64 = 100;

/// R-QUALITY: a sample of a dataset version, for inspecting its quality inside the domain: for
/// the providing org's providers and the authority's admins (who hold custody of it), never for
/// a unit's scientists, whatever they are granted.
pub fn can_sample_dataset(p: &Principal, dataset_org: &str, rows: u64) -> Result<(), Refusal> {
    require_training(p)?;
    let provider = p.has_role(Role::Provider) && p.org == dataset_org;
    if !(provider || p.has_role(Role::Admin)) {
        return refuse(
            "a dataset's sample is for its provider and the authority's admins, for inspection",
        );
    }
    if !(1..=MAX_SAMPLE_ROWS).contains(&rows) {
        return refuse(format!("a sample has from 1 to {MAX_SAMPLE_ROWS} rows"));
    }
    Ok(())
}

/// R-CUSTODY: the authority's admins seal a dataset version (no job may read it; it is kept for
/// inspection), unseal it, or destroy it (its key and file), each with a reason.
pub fn can_keep_custody(p: &Principal, reason: &str) -> Result<(), Refusal> {
    require_role(p, Role::Admin)?;
    require_training(p)?;
    if reason.trim().is_empty() || reason.len() > 2_000 {
        return refuse("a seal, an unsealing or a destruction gives its reason (1 to 2,000 bytes)");
    }
    Ok(())
}

/// What kind of org a principal may belong to, given its roles (R-SOD): admins only in the
/// authority; scientists only in operating units; providers only in providing orgs; a
/// reviewer or an auditor in any.
pub fn can_hold_roles(kind: OrgKind, roles: &[Role]) -> Result<(), Refusal> {
    if roles.is_empty() {
        return refuse("a principal needs at least one role");
    }
    for role in roles {
        let allowed = match role {
            Role::Admin => kind == OrgKind::Authority,
            Role::Scientist => kind == OrgKind::Operator,
            Role::Provider => kind == OrgKind::Provider,
            Role::Reviewer | Role::Auditor => true,
        };
        if !allowed {
            return refuse(format!(
                "a principal of a {} org cannot hold the {role} role (admins belong to the authority, scientists to operating units, providers to providing orgs)",
                kind.as_str()
            ));
        }
    }
    for (a, b) in [
        (Role::Scientist, Role::Reviewer),
        (Role::Scientist, Role::Admin),
        (Role::Scientist, Role::Auditor),
        (Role::Admin, Role::Auditor),
        (Role::Admin, Role::Reviewer),
    ] {
        if roles.contains(&a) && roles.contains(&b) {
            return refuse(format!(
                "separation of duties: a principal cannot be both {a} and {b}"
            ));
        }
    }
    Ok(())
}

/// Whether a principal sees across orgs as an overseer: an auditor or reviewer of the
/// authority's own offices. A reviewer of any other org sees only what it is asked to review.
pub fn oversees_all_orgs(p: &Principal, kind: OrgKind) -> bool {
    kind == OrgKind::Authority
        && (p.has_role(Role::Auditor) || p.has_role(Role::Reviewer) || p.has_role(Role::Admin))
}

/// Who may revoke a module's approval: the authority's reviewers and admins (a module of
/// their own org too: revoking only takes a right away).
pub fn can_revoke_module(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    require_training(p)?;
    if kind == OrgKind::Authority && (p.has_role(Role::Reviewer) || p.has_role(Role::Admin)) {
        return Ok(());
    }
    refuse("only the authority's reviewers and admins revoke a module's approval")
}

/// Who may read the directory of orgs and principals: the authority's admins and auditors.
pub fn can_read_directory(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    if kind == OrgKind::Authority && (p.has_role(Role::Admin) || p.has_role(Role::Auditor)) {
        return Ok(());
    }
    refuse("only the authority's admins and auditors read the directory of orgs and principals")
}

/// Who reads the platform's metrics: the authority's admins and auditors (counts by state and
/// by check; never an identifier or a value).
pub fn can_read_metrics(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    if kind == OrgKind::Authority && (p.has_role(Role::Admin) || p.has_role(Role::Auditor)) {
        return Ok(());
    }
    refuse("only the authority's admins and auditors read the platform's metrics")
}

/// S2: without a training record that holds today a principal may do nothing, on any route,
/// reads too, but read their own training state.
pub fn can_act_untrained(p: &Principal, reads_own_training: bool) -> Result<(), Refusal> {
    if p.trained || reads_own_training {
        Ok(())
    } else {
        refuse(format!(
            "principal {} has no training record that holds today; an admin must record passed training first (GET /v1/me shows yours)",
            p.id
        ))
    }
}

/// S18: who sees where a dataset is used: its provider org's trained providers, and the
/// authority's admins and auditors.
pub fn can_see_dataset_usage(
    p: &Principal,
    dataset_org: &str,
    kind: OrgKind,
) -> Result<(), Refusal> {
    require_training(p)?;
    if (p.org == dataset_org && p.has_role(Role::Provider)) || oversees_all_orgs(p, kind) {
        return Ok(());
    }
    refuse("only the dataset's provider and the authority see where it is used")
}

/// Who downloads an export's bundle, and as whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downloader {
    /// A scientist of the org that requested it.
    Requester,
    /// S11: a provider whose org's data the product was computed from, once released, free.
    Provider,
}

/// R-RELEASE and S11: a trained scientist of the requesting org downloads its bundle; a trained
/// provider of an org whose dataset the job read downloads it once it was released (it pays
/// nothing for it). Anyone else is told nothing of it.
pub fn can_download_bundle(
    p: &Principal,
    export_org: &str,
    input_orgs: &[String],
    released: bool,
) -> Result<Downloader, Refusal> {
    require_training(p)?;
    if p.org == export_org {
        require_role(p, Role::Scientist)?;
        return Ok(Downloader::Requester);
    }
    if released && p.has_role(Role::Provider) && input_orgs.iter().any(|o| o == &p.org) {
        return Ok(Downloader::Provider);
    }
    refuse("not found")
}

/// S15: the authority's auditors and admins search the audit log.
pub fn can_search_audit(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    require_training(p)?;
    if kind == OrgKind::Authority && (p.has_role(Role::Admin) || p.has_role(Role::Auditor)) {
        return Ok(());
    }
    refuse("only the authority's auditors and admins search the audit log")
}

/// R-MONITOR: the authority's admins and auditors read alerts; only its admins acknowledge
/// them and set where they are sent.
pub fn can_read_alerts(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    require_training(p)?;
    if kind == OrgKind::Authority && (p.has_role(Role::Admin) || p.has_role(Role::Auditor)) {
        return Ok(());
    }
    refuse("only the authority's admins and auditors read alerts")
}

/// R-MONITOR: see [`can_read_alerts`].
pub fn can_handle_alerts(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    require_training(p)?;
    if kind == OrgKind::Authority && p.has_role(Role::Admin) {
        return Ok(());
    }
    refuse("only the authority's admins acknowledge alerts and set where they go")
}

/// S13: the authority's trained admins write an org's annual evaluation.
pub fn can_evaluate_org(p: &Principal, kind: OrgKind) -> Result<(), Refusal> {
    require_training(p)?;
    if kind == OrgKind::Authority && p.has_role(Role::Admin) {
        return Ok(());
    }
    refuse("only the authority's admins evaluate an org")
}

/// R-MONITOR: alert thresholds are usable as asked.
pub fn validate_alert_thresholds(t: &crate::model::AlertThresholds) -> Result<(), Refusal> {
    if t.suppressed_in_a_row == 0 || t.breaches == 0 {
        return refuse("alert thresholds count at least 1");
    }
    if !(1..=100).contains(&t.budget_percent) {
        return refuse("budget_percent is from 1 to 100");
    }
    Ok(())
}

/// R-MONITOR: whether the latest exports of a scenario (newest first, each its count of
/// suppressed groups) are suppressed enough times in a row to raise an alert.
pub fn suppressed_in_a_row(latest: &[u64], t: &crate::model::AlertThresholds) -> bool {
    latest.len() as u64 >= t.suppressed_in_a_row
        && latest
            .iter()
            .take(t.suppressed_in_a_row as usize)
            .all(|n| *n > 0)
}

/// R-MONITOR: whether `spent` of a privacy budget `total` crosses the alert's share.
pub fn budget_nearly_spent(spent: f64, total: f64, t: &crate::model::AlertThresholds) -> bool {
    total > 0.0 && spent * 100.0 >= total * t.budget_percent as f64
}

/// S2: the last day a training recorded `today` holds: the admin's `until`, or a year. A day
/// before today is refused (record a current training).
pub fn training_valid_until(until: Option<Date>, today: Date) -> Result<Date, Refusal> {
    let longest = today + time::Duration::days(crate::model::TRAINING_VALID_DAYS);
    match until {
        Some(u) if u < today => refuse(format!(
            "the training would have ended on {u}, before today ({today})"
        )),
        Some(u) if u > longest => refuse(format!(
            "a training holds at most {} days: until {longest} at the latest",
            crate::model::TRAINING_VALID_DAYS
        )),
        Some(u) => Ok(u),
        None => Ok(today + time::Duration::days(crate::model::TRAINING_VALID_DAYS)),
    }
}

/// S2: a course's name is plain text, and `bootstrap` is the first admin's alone (a record of
/// it never ends).
pub fn check_course(course: &str) -> Result<(), Refusal> {
    check_name("the course", course)?;
    if course.trim().eq_ignore_ascii_case("bootstrap") {
        return refuse("`bootstrap` names the first admin's record; name the course taken");
    }
    Ok(())
}

/// S2: whether a training record holds on `today` (a record without an end, the bootstrap
/// admin's, always does).
pub fn training_holds(trained: bool, until: Option<Date>, today: Date) -> bool {
    trained && until.is_none_or(|u| today <= u)
}

/// Jobs an org may have waiting in the queue at once: one unit cannot fill the queue (its
/// jobs are taken in turn with other units' anyway), and a flood is refused, not stored.
pub const MAX_QUEUED_JOBS_PER_ORG: u64 = 32;

/// Whether an org with `waiting` jobs in the queue may queue another.
pub fn can_queue_job(waiting: u64) -> Result<(), Refusal> {
    if waiting >= MAX_QUEUED_JOBS_PER_ORG {
        refuse(format!(
            "your unit has {waiting} jobs waiting, the most the queue holds for one unit; \
             submit more when some have run"
        ))
    } else {
        Ok(())
    }
}

/// Whether the public record shows the figures of a released product (S19): only when the
/// export was requested under rules that publish them (its reviewers approved a public
/// release), the scenario's rules still publish them (an admin may withdraw that), and the
/// scenario is neither revoked nor suspended (a risk stop withholds what it published until a
/// resumption; a revocation, for good; the titles stay) and its org has not left the domain
/// (its results were destroyed), and nothing flagged the export since (a module of it lost
/// its approval). Fail closed: any other state publishes nothing.
pub fn publishes_figures(
    requested_public: bool,
    flagged: bool,
    rules: &ExportRules,
    stored_state: ScenarioState,
) -> bool {
    requested_public
        && !flagged
        && rules.public_figures
        && matches!(stored_state, ScenarioState::Active | ScenarioState::Expired)
}

/// R-EXIT: whether a scenario may submit (or start) another job within the quotas approved
/// with it: jobs, CPU seconds and fuel in any 24 hours, and the results it keeps stored.
/// `used` is what it used (see [`QuotaUse`]).
pub fn can_submit_within_quota(used: &QuotaUse, rules: &ExportRules) -> Result<(), Refusal> {
    const LATER: &str = "submit more later or ask the authority for a larger quota";
    if let Some(quota) = rules.jobs_per_day
        && used.jobs >= quota
    {
        return refuse(format!(
            "the scenario submitted {} jobs in the last 24 hours, its quota of {quota} a day; {LATER}",
            used.jobs
        ));
    }
    if let Some(quota) = rules.cpu_seconds_per_day
        && used.cpu_ms >= quota.saturating_mul(1000)
    {
        return refuse(format!(
            "the scenario's jobs used {} CPU seconds in the last 24 hours, its quota of {quota} a day; {LATER}",
            used.cpu_ms.div_ceil(1000)
        ));
    }
    if let Some(quota) = rules.gigafuel_per_day
        && used.fuel >= quota.saturating_mul(GIGA)
    {
        return refuse(format!(
            "the scenario's guests burned {} x 10^9 fuel in the last 24 hours, its quota of {quota} x 10^9 a day; {LATER}",
            used.fuel.div_ceil(GIGA)
        ));
    }
    if let Some(quota) = rules.storage_mib
        && used.stored_bytes >= quota.saturating_mul(1 << 20)
    {
        return refuse(format!(
            "the scenario keeps {} MiB of job results, its storage quota of {quota} MiB; \
             discard results it no longer needs (`tidegate job discard ID`) or ask the \
             authority for a larger quota",
            used.stored_bytes.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

const GIGA: u64 = 1_000_000_000;

/// R-EXIT: the budgets a job of the scenario starts with, given the platform's own per-job
/// `fuel` and `wall` (milliseconds) and what the scenario used of its daily quotas: each at
/// most what is left of its quota (CPU seconds bound the job's run time, so a job using
/// several cores at once may pass what was left by at most that many times its run).
pub fn job_budgets_within_quota(
    used: &QuotaUse,
    rules: &ExportRules,
    fuel: u64,
    wall_ms: u64,
) -> (u64, u64) {
    let fuel = match rules.gigafuel_per_day {
        Some(q) => fuel.min(q.saturating_mul(GIGA).saturating_sub(used.fuel)),
        None => fuel,
    };
    let wall_ms = match rules.cpu_seconds_per_day {
        Some(q) => wall_ms.min(q.saturating_mul(1000).saturating_sub(used.cpu_ms)),
        None => wall_ms,
    };
    (fuel, wall_ms)
}

/// R-EXIT: whether a job's result of `bytes` may be kept beside the `stored` bytes of results
/// its scenario keeps, under the scenario's storage quota.
pub fn can_store_result(stored: u64, bytes: u64, rules: &ExportRules) -> Result<(), Refusal> {
    match rules.storage_mib {
        Some(quota) if stored.saturating_add(bytes) > quota.saturating_mul(1 << 20) => {
            refuse(format!(
                "the result would pass the scenario's storage quota of {quota} MiB and was not kept; \
             discard results it no longer needs (`tidegate job discard ID`) or ask the authority \
             for a larger quota"
            ))
        }
        _ => Ok(()),
    }
}

/// R-EXIT: who may discard a job's stored result (to free room under the scenario's storage
/// quota): its own unit's scientists; never a frozen principal.
pub fn can_discard_result(p: &Principal, job_org: &str) -> Result<(), Refusal> {
    require_not_frozen(p)?;
    if p.org == job_org && p.has_role(Role::Scientist) {
        Ok(())
    } else {
        refuse("only the job's own unit's scientists discard its result")
    }
}

/// Who may cancel a job of `job_org`: its own unit's scientists, or the authority's admins
/// (a risk stop); never a frozen principal.
pub fn can_cancel_job(p: &Principal, job_org: &str, kind: OrgKind) -> Result<(), Refusal> {
    require_not_frozen(p)?;
    let own = p.org == job_org && p.has_role(Role::Scientist);
    let authority = kind == OrgKind::Authority && p.has_role(Role::Admin);
    if own || authority {
        Ok(())
    } else {
        refuse("only the job's own unit's scientists or the authority's admins cancel a job")
    }
}

/// Whether a dataset appears in a principal's listing: to the authority's overseers, every
/// dataset; to others, their own org's datasets, those they are named to approve, and public
/// data (which any unit may apply for) once it is approved; never another org's social data.
pub fn can_list_dataset(
    p: &Principal,
    oversees: bool,
    dataset_org: &str,
    origin: crate::model::Origin,
    pending: bool,
    approvers: &[String],
) -> bool {
    oversees
        || dataset_org == p.org
        || approvers.iter().any(|a| a == &p.org)
        || (origin == crate::model::Origin::Public && !pending)
}

/// A character that changes how text around it reads without being seen: control characters
/// (C0, DEL, C1), bidirectional controls, zero-width and other invisible format characters.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// A name someone gives (an org, a principal, a scenario, a column): something to read, with
/// no hidden character, so that what a reviewer reads is what is stored.
pub fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    if name.trim().is_empty() {
        return refuse(format!("{what} is empty or only whitespace"));
    }
    if name.len() > 200 {
        return refuse(format!("{what} is over 200 bytes"));
    }
    if name.chars().any(is_hidden_char) {
        return refuse(format!(
            "{what} holds a control, bidirectional or invisible character; names are plain text"
        ));
    }
    Ok(())
}

/// A dataset's name is its SQL table name: `[a-z][a-z0-9_]*`, at most 64 characters.
pub fn check_dataset_name(name: &str) -> Result<(), Refusal> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            "a dataset name is its SQL table name: [a-z][a-z0-9_]*, at most 64 characters",
        ))
    }
}

/// The columns of a file: named plainly, and no two alike, also after case folding (SQL folds
/// unquoted names, so `Spend` and `spend` would be one column to a query).
pub fn check_column_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), Refusal> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for name in names {
        check_name(&format!("column name `{}`", name.escape_default()), name)?;
        // A header read whole because the file is not comma-separated.
        if let Some(c) = name.chars().find(|c| matches!(c, ';' | '\t' | '|')) {
            return refuse(format!(
                "the column name `{}` holds `{}`: is the file separated by it? A CSV file \
                 is comma-separated",
                name.escape_default(),
                c.escape_default()
            ));
        }
        if let Some(first) = seen.insert(name.to_lowercase(), name) {
            return refuse(format!(
                "the file has two columns named alike: `{first}` and `{name}` (names differ by more than case)"
            ));
        }
    }
    Ok(())
}

/// R-IMPORT: a new version of a dataset keeps its protection: the level and the tags a
/// dataset carries apply to every version the scenarios read, older pinned ones included, so a
/// new version may raise them, never lower them (no lower level, no protective tag dropped from
/// a column that stays). Data meant to be less protected is a new dataset.
pub fn check_new_version(
    old_level: Level,
    new_level: Level,
    old_columns: &[crate::model::ColumnSpec],
    new_columns: &[crate::model::ColumnSpec],
) -> Result<(), Refusal> {
    if new_level < old_level {
        return refuse(format!(
            "a new version cannot lower the dataset's level from {old_level} to {new_level}; import less protected data as a new dataset"
        ));
    }
    for old in old_columns {
        let protected = old
            .tags
            .iter()
            .any(|t| !matches!(t, crate::model::ColumnTag::Dimension));
        let Some(new) = new_columns.iter().find(|c| c.name == old.name) else {
            // The dataset's one record of columns and tags serves every version: a protected
            // column that left would leave the older versions' values unprotected.
            if protected {
                return refuse(format!(
                    "a new version cannot leave out the protected column `{}` ({}); import the \
                     changed data as a new dataset",
                    old.name,
                    old.tags
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            continue;
        };
        for tag in &old.tags {
            let protective = !matches!(tag, crate::model::ColumnTag::Dimension);
            if protective && !new.tags.contains(tag) {
                return refuse(format!(
                    "a new version cannot drop the tag {tag} from column `{}`; import less protected data as a new dataset",
                    old.name
                ));
            }
        }
    }
    Ok(())
}

/// R-SCENARIO: an application's term must not have ended already.
pub fn check_new_term(start: Date, end: Date, today: Date) -> Result<(), Refusal> {
    if end < start {
        return refuse("the term ends before it starts");
    }
    if end < today {
        return refuse(format!(
            "the term ended on {end}, before today ({today}): apply for a term that has not ended"
        ));
    }
    Ok(())
}

/// R-GATE 7: epsilon is spent only by a scenario that has a privacy budget.
pub fn check_epsilon(epsilon: Option<f64>, has_budget: bool) -> Result<(), Refusal> {
    match epsilon {
        Some(_) if !has_budget => refuse(
            "this scenario has no privacy budget: its exports spend no epsilon (leave --epsilon out)",
        ),
        Some(e) if !(e.is_finite() && e > 0.0) => refuse("epsilon is a positive number"),
        _ => Ok(()),
    }
}

/// R-ONBOARD: an admin records another principal's training, never their own.
pub fn can_record_training(p: &Principal, trainee: &str) -> Result<(), Refusal> {
    require_role(p, Role::Admin)?;
    if p.id == trainee {
        return refuse("an admin cannot record their own training; another admin records it");
    }
    Ok(())
}

/// R-ONBOARD: no access to any data before an admin records passed training.
pub fn require_training(p: &Principal) -> Result<(), Refusal> {
    require_not_frozen(p)?;
    if p.trained {
        Ok(())
    } else {
        refuse(format!(
            "principal {} has no training record that holds today; an admin must record passed training first",
            p.id
        ))
    }
}

/// R-IMPORT: a trained provider imports public data; L4 is never imported.
pub fn can_import(p: &Principal, level: Level) -> Result<(), Refusal> {
    require_role(p, Role::Provider)?;
    require_training(p)?;
    if level == Level::L4 {
        return refuse("L4 (prohibited) data can never be imported into the domain");
    }
    Ok(())
}

/// R-IMPORT: a trained scientist of an operating unit imports the unit's own enterprise data;
/// L4 is never imported.
pub fn can_import_social(p: &Principal, level: Level) -> Result<(), Refusal> {
    require_role(p, Role::Scientist)?;
    require_training(p)?;
    if level == Level::L4 {
        return refuse("L4 (prohibited) data can never be imported into the domain");
    }
    Ok(())
}

/// R-SCENARIO: a trained scientist applies for a scenario on behalf of their own org.
pub fn can_apply_for_scenario(p: &Principal) -> Result<(), Refusal> {
    require_role(p, Role::Scientist)?;
    require_training(p)
}

/// R-SCENARIO: a trained scientist of the scenario's org submits its draft for approval.
pub fn can_submit_scenario(
    p: &Principal,
    scenario_org: &str,
    state: ScenarioState,
) -> Result<(), Refusal> {
    require_role(p, Role::Scientist)?;
    require_training(p)?;
    require_member(p, scenario_org)?;
    if state != ScenarioState::Draft {
        return refuse(format!(
            "the scenario is {}; only a draft is submitted",
            state.as_str()
        ));
    }
    Ok(())
}

/// Who has approved a scenario so far, against who must.
#[derive(Debug, Clone, Default)]
pub struct ScenarioApprovals {
    /// The orgs whose approval the scenario needs besides the admin's, each with why: the
    /// provider of a requested dataset, or an approver a dataset names (data returned from
    /// the province, say).
    pub required_orgs: BTreeMap<String, BTreeSet<String>>,
    pub admin_approved: bool,
    pub orgs_approved: BTreeSet<String>,
    /// The principal who applied for the scenario: never one of its approvers.
    pub applied_by: String,
}

impl ScenarioApprovals {
    pub fn require(&mut self, org: &str, why: String) {
        self.required_orgs
            .entry(org.to_string())
            .or_default()
            .insert(why);
    }

    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.admin_approved {
            missing.push("an admin".to_string());
        }
        for (org, why) in &self.required_orgs {
            if !self.orgs_approved.contains(org) {
                let why: Vec<&str> = why.iter().map(String::as_str).collect();
                missing.push(format!("the org {org} ({})", why.join("; ")));
            }
        }
        missing
    }

    pub fn complete(&self) -> bool {
        self.missing().is_empty()
    }
}

/// R-SCENARIO: an admin, or a provider of an org whose approval is required, approves a
/// pending scenario once. Returns whether the approval is the admin's.
pub fn can_approve_scenario(
    p: &Principal,
    approvals: &ScenarioApprovals,
    state: ScenarioState,
) -> Result<bool, Refusal> {
    if state != ScenarioState::PendingApprovals {
        return refuse(format!(
            "the scenario is {}, not pending approvals",
            state.as_str()
        ));
    }
    require_training(p)?;
    if approvals.applied_by == p.id {
        return refuse("separation of duties: nobody approves a scenario they applied for");
    }
    if p.has_role(Role::Admin) && !approvals.admin_approved {
        return Ok(true);
    }
    if p.has_role(Role::Provider) && approvals.required_orgs.contains_key(&p.org) {
        if approvals.orgs_approved.contains(&p.org) {
            return refuse(format!("the org {} has already approved", p.org));
        }
        return Ok(false);
    }
    refuse(
        "only an admin, or a provider of an org the scenario's datasets require, approves this scenario, once each",
    )
}

/// A scenario's grant is pinned to the dataset version current when it was approved. The
/// provider of the dataset moves it to a newer version: a new import reaches a running
/// authorization only by the provider's decision.
pub fn can_repin_grant(
    p: &Principal,
    dataset_org: &str,
    state: ScenarioState,
) -> Result<(), Refusal> {
    require_role(p, Role::Provider)?;
    require_training(p)?;
    if p.org != dataset_org {
        return refuse("only the dataset's provider org moves a grant to a newer version");
    }
    match state {
        ScenarioState::Active | ScenarioState::Suspended => Ok(()),
        other => refuse(format!(
            "the scenario is {}; only an active or suspended scenario's grants move",
            other.as_str()
        )),
    }
}

/// R-SCENARIO: export rules are usable as asked. `platform_max_rows` and `platform_max_bytes`
/// are the platform's own caps; a scenario may only tighten them.
pub fn validate_export_rules(
    rules: &ExportRules,
    platform_max_rows: u64,
    platform_max_bytes: u64,
) -> Result<(), Refusal> {
    if let Some(eps) = rules.privacy_budget
        && !(eps.is_finite() && eps > 0.0)
    {
        return refuse("the privacy budget (epsilon) must be a positive, finite number");
    }
    if rules.privacy_budget.is_none()
        && (rules.contribution_bound.is_some()
            || rules.count_bound.is_some()
            || rules.max_groups_per_subject.is_some())
    {
        return refuse("contribution bounds apply only with a privacy budget");
    }
    if let Some(d) = &rules.dominance {
        d.validate().map_err(|reason| Refusal { reason })?;
    }
    // One pseudonym key serves a scenario: published rows would let anyone link its subjects
    // across products.
    if rules.public_figures
        && rules
            .masking
            .values()
            .any(|m| matches!(m, crate::model::Masking::Pseudonymize))
    {
        return refuse(
            "a scenario that publishes its figures cannot pseudonymize a column: anyone could link its pseudonyms across products",
        );
    }
    if let Some(b) = rules.contribution_bound
        && !(b.is_finite() && b > 0.0)
    {
        return refuse("the contribution bound must be a positive, finite number");
    }
    for (name, value) in [
        ("count_bound", rules.count_bound),
        ("max_groups_per_subject", rules.max_groups_per_subject),
    ] {
        if value == Some(0) {
            return refuse(format!("{name} must be at least 1"));
        }
    }
    for (name, value, limit) in [
        ("max_rows", rules.max_rows, platform_max_rows),
        ("max_bytes", rules.max_bytes, platform_max_bytes),
    ] {
        match value {
            Some(0) => return refuse(format!("{name} must be at least 1")),
            Some(n) if n > limit => {
                return refuse(format!(
                    "{name} {n} is above the platform's limit of {limit}"
                ));
            }
            _ => {}
        }
    }
    if let Some(m) = rules.job_memory_mib
        && !crate::model::JOB_MEMORY_MIB_RANGE.contains(&m)
    {
        return refuse(format!(
            "job_memory_mib must be from {} to {}",
            crate::model::JOB_MEMORY_MIB_RANGE.start(),
            crate::model::JOB_MEMORY_MIB_RANGE.end()
        ));
    }
    for (name, value, most) in [
        (
            "jobs_per_day",
            rules.jobs_per_day,
            crate::model::MAX_JOBS_PER_DAY,
        ),
        (
            "cpu_seconds_per_day",
            rules.cpu_seconds_per_day,
            crate::model::MAX_CPU_SECONDS_PER_DAY,
        ),
        (
            "gigafuel_per_day",
            rules.gigafuel_per_day,
            crate::model::MAX_GIGAFUEL_PER_DAY,
        ),
        (
            "storage_mib",
            rules.storage_mib,
            crate::model::MAX_STORAGE_MIB,
        ),
    ] {
        if let Some(n) = value
            && !(1..=most).contains(&n)
        {
            return refuse(format!("{name} must be from 1 to {most}"));
        }
    }
    if let Some(column) = rules
        .masking
        .keys()
        .find(|c| c.is_empty() || crate::hidden::is_reserved(c))
    {
        return refuse(format!(
            "`{column}` is not an output column that can be masked"
        ));
    }
    Ok(())
}

/// R-SCENARIO: an admin suspends (risk stop), resumes or revokes a scenario. Returns the new
/// stored state.
pub fn can_change_scenario(
    p: &Principal,
    current: ScenarioState,
    action: &str,
) -> Result<ScenarioState, Refusal> {
    require_role(p, Role::Admin)?;
    require_training(p)?;
    match (action, current) {
        ("suspend", ScenarioState::Active) => Ok(ScenarioState::Suspended),
        ("resume", ScenarioState::Suspended) => Ok(ScenarioState::Active),
        ("revoke", ScenarioState::Revoked | ScenarioState::Expired | ScenarioState::Exited) => {
            refuse(format!("the scenario is already {}", current.as_str()))
        }
        ("revoke", _) => Ok(ScenarioState::Revoked),
        ("suspend", _) => refuse(format!(
            "a scenario that is {} cannot be suspended",
            current.as_str()
        )),
        ("resume", _) => refuse(format!(
            "a scenario that is {} cannot be resumed",
            current.as_str()
        )),
        _ => refuse("the action is suspend, resume or revoke"),
    }
}

/// The state a scenario is in on `today`, given its stored state and term.
pub fn scenario_state(
    stored: ScenarioState,
    term_start: Date,
    term_end: Date,
    today: Date,
) -> ScenarioState {
    if stored == ScenarioState::Active && today > term_end {
        return ScenarioState::Expired;
    }
    if stored == ScenarioState::Active && today < term_start {
        // Approved but its term has not begun: it runs nothing yet.
        return ScenarioState::PendingApprovals;
    }
    stored
}

/// R-EXIT: whether a scenario is over and its results are to be destroyed: revoked, or
/// approved once and past its term (active or suspended then). An exited scenario was closed
/// with its org; a draft or pending one never ran a job.
pub fn scenario_closes(stored: ScenarioState, term_end: Date, today: Date) -> bool {
    match stored {
        ScenarioState::Revoked => true,
        ScenarioState::Active | ScenarioState::Suspended => today > term_end,
        _ => false,
    }
}

/// R-EXIT: whether an org's authorization has run out on `today` (the last day it holds is
/// `until`).
pub fn authorization_ended(until: Option<Date>, today: Date) -> bool {
    until.is_some_and(|u| today > u)
}

fn require_active(state: ScenarioState) -> Result<(), Refusal> {
    if state == ScenarioState::Active {
        Ok(())
    } else {
        refuse(format!(
            "the scenario is {}; only an active scenario within its term runs jobs and exports",
            state.as_str()
        ))
    }
}

fn require_member(p: &Principal, scenario_org: &str) -> Result<(), Refusal> {
    if p.org == scenario_org {
        Ok(())
    } else {
        refuse("the scenario belongs to another org")
    }
}

/// R-MODULE: a trained scientist of the scenario's org uploads modules to it.
pub fn can_upload_module(
    p: &Principal,
    scenario_org: &str,
    state: ScenarioState,
) -> Result<(), Refusal> {
    require_role(p, Role::Scientist)?;
    require_training(p)?;
    require_member(p, scenario_org)?;
    require_active(state)
}

/// R-MODULE and R-SOD: a trained reviewer of another org approves a module's hash.
pub fn can_approve_module(
    p: &Principal,
    reviewer_kind: OrgKind,
    module_org: &str,
) -> Result<(), Refusal> {
    require_role(p, Role::Reviewer)?;
    require_training(p)?;
    if p.org == module_org {
        return refuse("a reviewer cannot review a module uploaded by their own org");
    }
    require_review_office(reviewer_kind, "modules")
}

/// A module whose source was rebuilt by a reviewer to other bytes is not approved: its source
/// does not describe it. One without a source, or not rebuilt yet, may be (the review page
/// says which it is).
pub fn check_source_rebuild(rebuilt_matches: Option<bool>) -> Result<(), Refusal> {
    if rebuilt_matches == Some(false) {
        return refuse(
            "the recorded rebuild of this module's source gave other bytes: the source does not describe this module (approve it after a rebuild that matches)",
        );
    }
    Ok(())
}

/// Another org's work (its modules, its export requests) is reviewed by the authority's review
/// office only: a reviewer of another operating unit or provider sees only what it is asked to
/// review, and none is assigned.
fn require_review_office(reviewer_kind: OrgKind, what: &str) -> Result<(), Refusal> {
    if reviewer_kind != OrgKind::Authority {
        return refuse(format!(
            "only reviewers of the authority's review office review other orgs' {what} (a reviewer of another org sees only what it is asked to review, and none is assigned)"
        ));
    }
    Ok(())
}

/// R-JOB: a trained scientist of the scenario's org runs jobs in an active scenario, with
/// modules whose exact hashes were approved for it.
pub fn can_run_job(
    p: &Principal,
    scenario_org: &str,
    state: ScenarioState,
    unapproved_modules: &[String],
) -> Result<(), Refusal> {
    require_role(p, Role::Scientist)?;
    require_training(p)?;
    require_member(p, scenario_org)?;
    require_active(state)?;
    if let Some(m) = unapproved_modules.first() {
        return refuse(format!(
            "module {m} has no algorithm review approval for this scenario; it runs on mock data only"
        ));
    }
    Ok(())
}

/// R-GATE: the requester of an export is a trained scientist of the scenario's org.
pub fn can_request_export(
    p: &Principal,
    scenario_org: &str,
    state: ScenarioState,
) -> Result<(), Refusal> {
    require_role(p, Role::Scientist)?;
    require_training(p)?;
    require_member(p, scenario_org)?;
    require_active(state)
}

/// R-REVIEW and R-SOD: a trained reviewer of another org, not the requester, who has not
/// already approved this request.
pub fn can_review_export(
    p: &Principal,
    reviewer_kind: OrgKind,
    requester_id: &str,
    requester_org: &str,
    already_approved_by: &[String],
) -> Result<(), Refusal> {
    require_role(p, Role::Reviewer)?;
    require_training(p)?;
    if p.id == requester_id {
        return refuse("a reviewer cannot review their own export request");
    }
    if p.org == requester_org {
        return refuse("a reviewer cannot review an export request of their own org");
    }
    require_review_office(reviewer_kind, "export requests")?;
    if already_approved_by.iter().any(|r| r == &p.id) {
        return refuse(
            "this reviewer has already approved this request; L3 needs a second, different reviewer",
        );
    }
    Ok(())
}

/// What happens to an export request (R-REVIEW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportEvent {
    /// The gate ran over the result.
    Checked { passed: bool },
    /// A checked request goes to the reviewers.
    SentToReview,
    /// A reviewer decided; `approvals` counts this one.
    Reviewed {
        decision: Decision,
        approvals: u64,
        required: u64,
    },
    /// The requester downloaded the signed bundle.
    Released,
}

/// R-REVIEW: `submitted -> checked -> in_review -> approved | returned | rejected -> released`;
/// a request the gate refuses is rejected at once. Returns the next state, or why the event
/// does not apply.
pub fn next_export_state(current: ExportState, event: ExportEvent) -> Result<ExportState, Refusal> {
    use ExportState::*;
    match (current, event) {
        (Submitted, ExportEvent::Checked { passed: true }) => Ok(Checked),
        (Submitted, ExportEvent::Checked { passed: false }) => Ok(Rejected),
        (Checked, ExportEvent::SentToReview) => Ok(InReview),
        (
            InReview,
            ExportEvent::Reviewed {
                decision,
                approvals,
                required,
            },
        ) => Ok(match decision {
            Decision::Approve if approvals >= required => Approved,
            Decision::Approve => InReview,
            Decision::Return => Returned,
            Decision::Reject => Rejected,
        }),
        (_, ExportEvent::Reviewed { .. }) => {
            refuse(format!("the export is {current}, not in review"))
        }
        (Approved | Released, ExportEvent::Released) => Ok(Released),
        (_, ExportEvent::Released) => refuse(format!(
            "the export is {current}; only an approved export is released"
        )),
        _ => refuse(format!(
            "an export that is {current} does not move on that way"
        )),
    }
}

/// How many distinct reviewers must approve an export of a result at `level`.
pub fn required_export_approvals(level: Level, flagged: bool) -> usize {
    let base = if level >= Level::L3 { 2 } else { 1 };
    // A gate check that passed with a flag is weighed by one more reviewer.
    base + usize::from(flagged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_approves_a_scenario_they_applied_for() {
        let admin = p("a1", "authority", &[Role::Admin], true);
        let approvals = ScenarioApprovals {
            applied_by: "a1".into(),
            ..ScenarioApprovals::default()
        };
        let refused =
            can_approve_scenario(&admin, &approvals, ScenarioState::PendingApprovals).unwrap_err();
        assert_eq!(
            refused.reason,
            "separation of duties: nobody approves a scenario they applied for"
        );
    }

    #[test]
    fn a_frozen_principal_passes_no_role_or_training_check() {
        let mut scientist = p("s1", "unit", &[Role::Scientist], true);
        scientist.frozen = true;
        assert!(require_role(&scientist, Role::Scientist).is_err());
        assert!(require_training(&scientist).is_err());
    }

    fn p(id: &str, org: &str, roles: &[Role], trained: bool) -> Principal {
        Principal {
            id: id.into(),
            org: org.into(),
            roles: roles.to_vec(),
            trained,
            frozen: false,
        }
    }

    fn verdict(r: Result<(), Refusal>) -> String {
        match r {
            Ok(()) => "allow".into(),
            Err(e) => format!("refuse: {e}"),
        }
    }

    #[test]
    fn who_may_do_what_in_which_state() {
        let scientist = p("s1", "unit", &[Role::Scientist], true);
        let untrained = p("s2", "unit", &[Role::Scientist], false);
        let outsider = p("s3", "other", &[Role::Scientist], true);
        let reviewer = p("r1", "office", &[Role::Reviewer], true);
        let insider_reviewer = p("r2", "unit", &[Role::Reviewer], true);
        let provider = p("pr", "bureau", &[Role::Provider], true);
        let active = ScenarioState::Active;
        let cases: Vec<(&str, Result<(), Refusal>, &str)> = vec![
            (
                "trained provider imports L2",
                can_import(&provider, Level::L2),
                "allow",
            ),
            (
                "nobody imports L4",
                can_import(&provider, Level::L4),
                "refuse: L4 (prohibited) data can never be imported into the domain",
            ),
            (
                "a scientist is not a provider",
                can_import(&scientist, Level::L1),
                "refuse: principal s1 lacks the provider role this action needs",
            ),
            (
                "member runs a job",
                can_run_job(&scientist, "unit", active, &[]),
                "allow",
            ),
            (
                "untrained member",
                can_run_job(&untrained, "unit", active, &[]),
                "refuse: principal s2 has no training record that holds today; an admin must record passed training first",
            ),
            (
                "another org",
                can_run_job(&outsider, "unit", active, &[]),
                "refuse: the scenario belongs to another org",
            ),
            (
                "suspended scenario",
                can_run_job(&scientist, "unit", ScenarioState::Suspended, &[]),
                "refuse: the scenario is suspended; only an active scenario within its term runs jobs and exports",
            ),
            (
                "unapproved module",
                can_run_job(&scientist, "unit", active, &["abc".into()]),
                "refuse: module abc has no algorithm review approval for this scenario; it runs on mock data only",
            ),
            (
                "reviewer of another org",
                can_review_export(&reviewer, OrgKind::Authority, "s1", "unit", &[]),
                "allow",
            ),
            (
                "reviewer of the same org",
                can_review_export(&insider_reviewer, OrgKind::Operator, "s1", "unit", &[]),
                "refuse: a reviewer cannot review an export request of their own org",
            ),
            (
                "second approval by the same reviewer",
                can_review_export(&reviewer, OrgKind::Authority, "s1", "unit", &["r1".into()]),
                "refuse: this reviewer has already approved this request; L3 needs a second, different reviewer",
            ),
            (
                "module review by own org",
                can_approve_module(&insider_reviewer, OrgKind::Operator, "unit"),
                "refuse: a reviewer cannot review a module uploaded by their own org",
            ),
            (
                "member submits a draft",
                can_submit_scenario(&scientist, "unit", ScenarioState::Draft),
                "allow",
            ),
            (
                "another org submits a draft",
                can_submit_scenario(&outsider, "unit", ScenarioState::Draft),
                "refuse: the scenario belongs to another org",
            ),
            (
                "a submitted scenario is submitted again",
                can_submit_scenario(&scientist, "unit", ScenarioState::PendingApprovals),
                "refuse: the scenario is pending_approvals; only a draft is submitted",
            ),
            (
                "a draft runs nothing",
                can_run_job(&scientist, "unit", ScenarioState::Draft, &[]),
                "refuse: the scenario is draft; only an active scenario within its term runs jobs and exports",
            ),
            (
                "an exited org's scenario exports nothing",
                can_request_export(&scientist, "unit", ScenarioState::Exited),
                "refuse: the scenario is exited; only an active scenario within its term runs jobs and exports",
            ),
            (
                "the provider moves its grant to a new version",
                can_repin_grant(&provider, "bureau", active),
                "allow",
            ),
            (
                "another provider moves the grant",
                can_repin_grant(&p("q", "health", &[Role::Provider], true), "bureau", active),
                "refuse: only the dataset's provider org moves a grant to a newer version",
            ),
            (
                "a grant of a revoked scenario moves",
                can_repin_grant(&provider, "bureau", ScenarioState::Revoked),
                "refuse: the scenario is revoked; only an active or suspended scenario's grants move",
            ),
        ];
        for (what, got, expected) in cases {
            assert_eq!(verdict(got), expected, "{what}");
        }
    }

    #[test]
    fn a_scenario_activates_after_the_admin_and_every_provider() {
        let mut a = ScenarioApprovals::default();
        a.require("bureau", "provider of visits".into());
        a.require("health", "provider of clinics".into());
        a.require("health", "named approver of visits".into());
        assert_eq!(
            a.missing(),
            vec![
                "an admin",
                "the org bureau (provider of visits)",
                "the org health (named approver of visits; provider of clinics)"
            ]
        );
        let admin = p("a", "authority", &[Role::Admin], true);
        assert_eq!(
            can_approve_scenario(&admin, &a, ScenarioState::PendingApprovals),
            Ok(true)
        );
        a.admin_approved = true;
        let bureau = p("b", "bureau", &[Role::Provider], true);
        assert_eq!(
            can_approve_scenario(&bureau, &a, ScenarioState::PendingApprovals),
            Ok(false)
        );
        a.orgs_approved.insert("bureau".into());
        assert!(can_approve_scenario(&bureau, &a, ScenarioState::PendingApprovals).is_err());
        let stranger = p("x", "elsewhere", &[Role::Provider], true);
        assert!(can_approve_scenario(&stranger, &a, ScenarioState::PendingApprovals).is_err());
        a.orgs_approved.insert("health".into());
        assert!(a.complete());
    }

    #[test]
    fn a_scenario_expires_by_itself_at_the_end_of_its_term() {
        use time::macros::date;
        let s = |today| {
            scenario_state(
                ScenarioState::Active,
                date!(2026 - 01 - 01),
                date!(2026 - 12 - 31),
                today,
            )
        };
        assert_eq!(s(date!(2026 - 06 - 01)), ScenarioState::Active);
        assert_eq!(s(date!(2027 - 01 - 01)), ScenarioState::Expired);
        assert_eq!(s(date!(2025 - 12 - 31)), ScenarioState::PendingApprovals);
    }

    #[test]
    fn a_scenario_closes_when_revoked_or_past_its_term_and_never_before() {
        use ScenarioState::*;
        use time::macros::date;
        let end = date!(2026 - 12 - 31);
        let (last_day, after) = (date!(2026 - 12 - 31), date!(2027 - 01 - 01));
        for (stored, today, closes) in [
            (Active, last_day, false),
            (Active, after, true),
            (Suspended, last_day, false),
            (Suspended, after, true),
            (Revoked, last_day, true),
            (Draft, after, false),
            (PendingApprovals, after, false),
            (Exited, after, false),
        ] {
            assert_eq!(
                scenario_closes(stored, end, today),
                closes,
                "{stored:?} on {today}"
            );
        }
        assert!(!authorization_ended(None, after));
        assert!(!authorization_ended(Some(end), last_day));
        assert!(authorization_ended(Some(end), after));
    }

    #[test]
    fn a_provider_downloads_a_released_product_of_its_data_and_nothing_else() {
        let provider = p("pv", "bureau", &[Role::Provider], true);
        let inputs = vec!["bureau".to_string()];
        assert_eq!(
            can_download_bundle(&provider, "unit", &inputs, true),
            Ok(Downloader::Provider)
        );
        assert!(can_download_bundle(&provider, "unit", &inputs, false).is_err());
        assert!(can_download_bundle(&provider, "unit", &["health".to_string()], true).is_err());
        let scientist = p("s", "unit", &[Role::Scientist], true);
        assert_eq!(
            can_download_bundle(&scientist, "unit", &inputs, false),
            Ok(Downloader::Requester)
        );
        let other = p("s2", "other", &[Role::Scientist], true);
        assert!(can_download_bundle(&other, "unit", &inputs, true).is_err());
    }

    #[test]
    fn a_training_holds_to_its_last_day_and_a_year_when_no_end_is_named() {
        use time::macros::date;
        let today = date!(2026 - 12 - 01);
        assert_eq!(training_valid_until(None, today), Ok(date!(2027 - 12 - 01)));
        assert!(training_valid_until(Some(date!(2026 - 11 - 30)), today).is_err());
        assert!(training_valid_until(Some(date!(9999 - 12 - 31)), today).is_err());
        assert!(check_course("Bootstrap").is_err() && check_course("data handling").is_ok());
        let end = date!(2026 - 12 - 31);
        assert!(training_holds(true, Some(end), end));
        assert!(!training_holds(true, Some(end), date!(2027 - 01 - 01)));
        assert!(!training_holds(false, None, today));
        assert!(training_holds(true, None, today));
    }

    #[test]
    fn alerts_are_raised_at_the_policys_thresholds() {
        let t = crate::model::AlertThresholds::default();
        assert!(!suppressed_in_a_row(&[4, 1], &t));
        assert!(suppressed_in_a_row(&[4, 1, 2], &t));
        assert!(!suppressed_in_a_row(&[4, 0, 2, 5], &t));
        assert!(!budget_nearly_spent(0.79, 1.0, &t));
        assert!(budget_nearly_spent(0.8, 1.0, &t));
        assert!(validate_alert_thresholds(&t).is_ok());
        let off = crate::model::AlertThresholds {
            budget_percent: 0,
            ..t
        };
        assert!(validate_alert_thresholds(&off).is_err());
    }

    #[test]
    fn figures_are_public_only_when_the_request_and_the_scenario_both_say_so_while_it_stands() {
        let public = ExportRules {
            public_figures: true,
            ..ExportRules::default()
        };
        let private = ExportRules::default();
        let shown = |requested, flagged, rules: &ExportRules, state| {
            publishes_figures(requested, flagged, rules, state)
        };
        assert!(shown(true, false, &public, ScenarioState::Active));
        // Closed by its term: what was published stays published (an admin may withdraw it).
        assert!(shown(true, false, &public, ScenarioState::Expired));
        // Its org left (its results were destroyed); a risk stop withholds them meanwhile.
        assert!(!shown(true, false, &public, ScenarioState::Exited));
        assert!(!shown(true, false, &public, ScenarioState::Suspended));
        // Requested before the scenario published: its reviewers approved a private release.
        assert!(!shown(false, false, &public, ScenarioState::Active));
        // An admin withdrew the publication; a revocation; a module of it lost its approval.
        assert!(!shown(true, false, &private, ScenarioState::Active));
        assert!(!shown(true, false, &public, ScenarioState::Revoked));
        assert!(!shown(true, true, &public, ScenarioState::Active));
        // The rule round-trips, and a scenario that says nothing publishes nothing.
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(json, r#"{"public_figures":true}"#);
        assert_eq!(serde_json::to_string(&private).unwrap(), "{}");
        let read: ExportRules = serde_json::from_str("{}").unwrap();
        assert!(!read.public_figures);
        // Pseudonyms under one scenario key are never published.
        let mut linked = public.clone();
        linked
            .masking
            .insert("resident_id".into(), crate::model::Masking::Pseudonymize);
        assert!(validate_export_rules(&linked, 1_000, 1_000).is_err());
        assert!(validate_export_rules(&public, 1_000, 1_000).is_ok());
    }

    #[test]
    fn a_scenario_submits_no_more_jobs_a_day_than_its_quota() {
        let jobs = |n| QuotaUse {
            jobs: n,
            ..QuotaUse::default()
        };
        let none = ExportRules::default();
        assert!(can_submit_within_quota(&jobs(1_000_000), &none).is_ok());
        let three = ExportRules {
            jobs_per_day: Some(3),
            ..ExportRules::default()
        };
        assert!(can_submit_within_quota(&jobs(2), &three).is_ok());
        let refused = can_submit_within_quota(&jobs(3), &three).unwrap_err();
        assert!(
            refused.reason.contains("quota of 3 a day"),
            "{}",
            refused.reason
        );
        let mut rules = ExportRules {
            jobs_per_day: Some(0),
            ..ExportRules::default()
        };
        assert!(validate_export_rules(&rules, 1_000, 1_000).is_err());
        rules.jobs_per_day = Some(50);
        assert!(validate_export_rules(&rules, 1_000, 1_000).is_ok());
    }

    #[test]
    fn a_scenario_uses_no_more_cpu_fuel_or_storage_than_its_quotas() {
        let rules = ExportRules {
            cpu_seconds_per_day: Some(60),
            gigafuel_per_day: Some(10),
            storage_mib: Some(1),
            ..ExportRules::default()
        };
        let used = QuotaUse {
            cpu_ms: 59_000,
            fuel: 9 * GIGA,
            stored_bytes: 1000,
            ..QuotaUse::default()
        };
        assert!(can_submit_within_quota(&used, &rules).is_ok());
        // A job starts with what is left, never more than the platform's own budgets.
        assert_eq!(
            job_budgets_within_quota(&used, &rules, 50 * GIGA, 300_000),
            (GIGA, 1_000)
        );
        assert_eq!(
            job_budgets_within_quota(&used, &ExportRules::default(), 50 * GIGA, 300_000),
            (50 * GIGA, 300_000)
        );
        let cases = [
            (
                QuotaUse {
                    cpu_ms: 60_000,
                    ..used
                },
                "60 CPU seconds",
            ),
            (
                QuotaUse {
                    fuel: 10 * GIGA,
                    ..used
                },
                "quota of 10 x 10^9",
            ),
            (
                QuotaUse {
                    stored_bytes: 1 << 20,
                    ..used
                },
                "storage quota of 1 MiB",
            ),
        ];
        for (over, says) in cases {
            let refused = can_submit_within_quota(&over, &rules).unwrap_err();
            assert!(refused.reason.contains(says), "{}", refused.reason);
        }
        // A result is kept only within the storage quota.
        assert!(can_store_result(1000, (1 << 20) - 1000, &rules).is_ok());
        assert!(can_store_result(1000, (1 << 20) - 999, &rules).is_err());
        for bad in [
            ExportRules {
                cpu_seconds_per_day: Some(0),
                ..ExportRules::default()
            },
            ExportRules {
                gigafuel_per_day: Some(u64::MAX),
                ..ExportRules::default()
            },
            ExportRules {
                storage_mib: Some(0),
                ..ExportRules::default()
            },
        ] {
            assert!(
                validate_export_rules(&bad, 1_000, 1_000).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn how_an_admin_moves_a_scenario_through_its_lifecycle() {
        let admin = p("a", "authority", &[Role::Admin], true);
        let scientist = p("s1", "unit", &[Role::Scientist], true);
        use ScenarioState::*;
        let cases = [
            (Active, "suspend", Ok(Suspended)),
            (Suspended, "resume", Ok(Active)),
            (Draft, "revoke", Ok(Revoked)),
            (PendingApprovals, "revoke", Ok(Revoked)),
            (Suspended, "revoke", Ok(Revoked)),
            (Exited, "revoke", Err("the scenario is already exited")),
            (Expired, "revoke", Err("the scenario is already expired")),
            (
                Draft,
                "suspend",
                Err("a scenario that is draft cannot be suspended"),
            ),
            (
                Exited,
                "resume",
                Err("a scenario that is exited cannot be resumed"),
            ),
            (
                Active,
                "approve",
                Err("the action is suspend, resume or revoke"),
            ),
        ];
        for (from, action, expected) in cases {
            let got = can_change_scenario(&admin, from, action).map_err(|r| r.reason);
            assert_eq!(
                got,
                expected.map_err(String::from),
                "{action} from {from:?}"
            );
        }
        assert!(can_change_scenario(&scientist, Active, "suspend").is_err());
    }

    #[test]
    fn export_rules_only_tighten_what_the_platform_allows() {
        let rules = |json: &str| -> ExportRules { serde_json::from_str(json).unwrap() };
        let check = |r: &ExportRules| validate_export_rules(r, 1000, 1 << 20).map_err(|e| e.reason);
        assert_eq!(
            check(&rules(r#"{"privacy_budget": 1.5, "max_rows": 100}"#)),
            Ok(())
        );
        assert_eq!(
            check(&rules(r#"{"privacy_budget": 0}"#)),
            Err("the privacy budget (epsilon) must be a positive, finite number".into())
        );
        assert_eq!(
            check(&rules(r#"{"privacy_budget": -1}"#)),
            Err("the privacy budget (epsilon) must be a positive, finite number".into())
        );
        assert_eq!(
            check(&rules(r#"{"max_rows": 5000}"#)),
            Err("max_rows 5000 is above the platform's limit of 1000".into())
        );
        assert_eq!(
            check(&rules(r#"{"max_bytes": 0}"#)),
            Err("max_bytes must be at least 1".into())
        );
        assert_eq!(
            check(&rules(r#"{"masking": {"__tg_entity": "redact"}}"#)),
            Err("`__tg_entity` is not an output column that can be masked".into())
        );
        assert_eq!(
            check(&rules(
                r#"{"privacy_budget": 1, "contribution_bound": 50, "count_bound": 3, "max_groups_per_subject": 2}"#
            )),
            Ok(())
        );
        assert_eq!(
            check(&rules(r#"{"contribution_bound": 50}"#)),
            Err("contribution bounds apply only with a privacy budget".into())
        );
        assert_eq!(
            check(&rules(r#"{"privacy_budget": 1, "contribution_bound": -2}"#)),
            Err("the contribution bound must be a positive, finite number".into())
        );
        assert_eq!(
            check(&rules(
                r#"{"privacy_budget": 1, "max_groups_per_subject": 0}"#
            )),
            Err("max_groups_per_subject must be at least 1".into())
        );
        assert!(serde_json::from_str::<ExportRules>(r#"{"masking": {"m": "hash"}}"#).is_err());
        assert!(serde_json::from_str::<ExportRules>(r#"{"k_anonymity": 5}"#).is_err());
    }

    #[test]
    fn an_export_request_moves_through_the_review_states_in_order() {
        use Decision::*;
        use ExportEvent::*;
        use ExportState::*;
        let review = |decision, approvals| Reviewed {
            decision,
            approvals,
            required: 2,
        };
        let cases: [(ExportState, ExportEvent, Result<ExportState, &str>); 11] = [
            (
                Submitted,
                ExportEvent::Checked { passed: true },
                Ok(ExportState::Checked),
            ),
            (
                Submitted,
                ExportEvent::Checked { passed: false },
                Ok(Rejected),
            ),
            (ExportState::Checked, SentToReview, Ok(InReview)),
            (InReview, review(Approve, 1), Ok(InReview)),
            (InReview, review(Approve, 2), Ok(Approved)),
            (InReview, review(Return, 1), Ok(Returned)),
            (InReview, review(Reject, 0), Ok(Rejected)),
            (
                Approved,
                review(Approve, 3),
                Err("the export is approved, not in review"),
            ),
            (Approved, ExportEvent::Released, Ok(ExportState::Released)),
            (
                ExportState::Released,
                ExportEvent::Released,
                Ok(ExportState::Released),
            ),
            (
                Returned,
                ExportEvent::Released,
                Err("the export is returned; only an approved export is released"),
            ),
        ];
        for (from, event, expected) in cases {
            let got = next_export_state(from, event).map_err(|r| r.reason);
            assert_eq!(got, expected.map_err(String::from), "{from} {event:?}");
        }
        assert!(next_export_state(Rejected, SentToReview).is_err());
        assert_eq!(
            "shrug".parse::<Decision>(),
            Err("unknown decision `shrug`".to_string())
        );
    }

    #[test]
    fn l3_needs_two_reviewers() {
        assert_eq!(required_export_approvals(Level::L2, false), 1);
        assert_eq!(required_export_approvals(Level::L3, false), 2);
        assert_eq!(required_export_approvals(Level::L2, true), 2);
        assert_eq!(required_export_approvals(Level::L3, true), 3);
    }
}
