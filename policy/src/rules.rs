//! Authorization decisions: roles, training, scenario approvals and terms, separation of duties.

use std::collections::BTreeSet;
use std::fmt;

use time::Date;

use crate::model::{Level, Principal, Role, ScenarioState};

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
    if p.has_role(role) {
        Ok(())
    } else {
        refuse(format!(
            "principal {} lacks the {role} role this action needs",
            p.id
        ))
    }
}

/// R-ONBOARD: no access to any data before an admin records passed training.
pub fn require_training(p: &Principal) -> Result<(), Refusal> {
    if p.trained {
        Ok(())
    } else {
        refuse(format!(
            "principal {} has no training record; an admin must record passed training first",
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

/// Who has approved a scenario so far, against who must.
#[derive(Debug, Clone, Default)]
pub struct ScenarioApprovals {
    /// Orgs of the providers whose datasets the scenario requests.
    pub required_provider_orgs: BTreeSet<String>,
    pub admin_approved: bool,
    pub provider_orgs_approved: BTreeSet<String>,
}

impl ScenarioApprovals {
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.admin_approved {
            missing.push("an admin".to_string());
        }
        for org in self
            .required_provider_orgs
            .difference(&self.provider_orgs_approved)
        {
            missing.push(format!("the provider org {org}"));
        }
        missing
    }

    pub fn complete(&self) -> bool {
        self.missing().is_empty()
    }
}

/// What an approval by `p` counts as: `Ok(true)` for the admin's approval, `Ok(false)` for a
/// provider's approval on behalf of their org.
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
    if p.has_role(Role::Admin) && !approvals.admin_approved {
        return Ok(true);
    }
    if p.has_role(Role::Provider) && approvals.required_provider_orgs.contains(&p.org) {
        if approvals.provider_orgs_approved.contains(&p.org) {
            return refuse(format!("the provider org {} has already approved", p.org));
        }
        return Ok(false);
    }
    refuse(
        "only an admin or a provider of a requested dataset can approve this scenario, once each",
    )
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
        ("revoke", ScenarioState::Revoked | ScenarioState::Expired) => {
            refuse(format!("the scenario is already {}", current.as_str()))
        }
        ("revoke", _) => Ok(ScenarioState::Revoked),
        ("suspend" | "resume", _) => refuse(format!(
            "a scenario that is {} cannot be {action}d",
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
pub fn can_approve_module(p: &Principal, module_org: &str) -> Result<(), Refusal> {
    require_role(p, Role::Reviewer)?;
    require_training(p)?;
    if p.org == module_org {
        return refuse("a reviewer cannot review a module uploaded by their own org");
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
    if already_approved_by.iter().any(|r| r == &p.id) {
        return refuse(
            "this reviewer has already approved this request; L3 needs a second, different reviewer",
        );
    }
    Ok(())
}

/// How many distinct reviewers must approve an export of a result at `level`.
pub fn required_export_approvals(level: Level) -> usize {
    if level >= Level::L3 { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, org: &str, roles: &[Role], trained: bool) -> Principal {
        Principal {
            id: id.into(),
            org: org.into(),
            roles: roles.to_vec(),
            trained,
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
                "refuse: principal s2 has no training record; an admin must record passed training first",
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
                can_review_export(&reviewer, "s1", "unit", &[]),
                "allow",
            ),
            (
                "reviewer of the same org",
                can_review_export(&insider_reviewer, "s1", "unit", &[]),
                "refuse: a reviewer cannot review an export request of their own org",
            ),
            (
                "second approval by the same reviewer",
                can_review_export(&reviewer, "s1", "unit", &["r1".into()]),
                "refuse: this reviewer has already approved this request; L3 needs a second, different reviewer",
            ),
            (
                "module review by own org",
                can_approve_module(&insider_reviewer, "unit"),
                "refuse: a reviewer cannot review a module uploaded by their own org",
            ),
        ];
        for (what, got, expected) in cases {
            assert_eq!(verdict(got), expected, "{what}");
        }
    }

    #[test]
    fn a_scenario_activates_after_the_admin_and_every_provider() {
        let mut a = ScenarioApprovals {
            required_provider_orgs: ["bureau".to_string(), "health".to_string()].into(),
            ..Default::default()
        };
        assert_eq!(
            a.missing(),
            vec![
                "an admin",
                "the provider org bureau",
                "the provider org health"
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
        a.provider_orgs_approved.insert("bureau".into());
        assert!(can_approve_scenario(&bureau, &a, ScenarioState::PendingApprovals).is_err());
        a.provider_orgs_approved.insert("health".into());
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
    fn l3_needs_two_reviewers() {
        assert_eq!(required_export_approvals(Level::L2), 1);
        assert_eq!(required_export_approvals(Level::L3), 2);
    }
}
