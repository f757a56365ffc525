//! R-METER: what each org owes for a period, from a ledger of metered events. The platform
//! builds the ledger from its metadata; an auditor builds the same ledger from the audit log
//! alone (`ledger_from_audit`), so every total can be reproduced from the log.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::{Action, AuditEntry};
use crate::audited::{self, Detail};
use crate::error::{Error, Result};
use tidegate_policy::JobState;

/// The price table: item, the DOMAIN.md category it belongs to, its unit, and the default
/// price in fen (0.01 yuan) per unit. The item is the key of the admin's price table.
pub const PRICE_ITEMS: [(&str, &str, &str, i64); 6] = [
    (
        "resource_consumption",
        "resource_consumption",
        "billion fuel units",
        50,
    ),
    ("storage", "resource_consumption", "GB-day stored", 2),
    ("data_governance", "data_governance", "GB scanned", 200),
    (
        "model_publishing",
        "model_publishing",
        "module approved",
        10_000,
    ),
    ("result_export", "result_export", "export released", 5_000),
    (
        "security_services",
        "security_services",
        "job gated and audited",
        100,
    ),
];

/// What the statement needs to know of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioTerms {
    pub org: String,
    pub name: String,
    pub public_interest: bool,
    /// Every dataset it reads belongs to its own org (a provider using its own data).
    pub own_data: bool,
}

/// One metered event. Times are RFC 3339, UTC, exactly as the audit log records them.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A job ended (succeeded or failed): it was gated, audited and used resources.
    Job {
        scenario: String,
        at: String,
        fuel: u64,
        bytes_scanned: u64,
    },
    ModuleApproved {
        scenario: String,
        at: String,
    },
    /// The first download of an approved export.
    Released {
        scenario: String,
        at: String,
    },
    /// S11: a provider downloaded a released product of `scenario` (another org's) computed
    /// from its data: free, shown at zero on the provider's statement.
    ProviderDownload {
        org: String,
        scenario: String,
        at: String,
    },
    /// Bytes an org keeps in the domain from `from` until `until` (still kept when `None`):
    /// a job's result or an export file (with its scenario), or the org's own social data.
    Stored {
        org: String,
        scenario: Option<String>,
        bytes: u64,
        from: String,
        until: Option<String>,
    },
}

/// Everything a statement is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub scenarios: BTreeMap<String, ScenarioTerms>,
    /// Fen per unit by price item; items not set use their default.
    pub prices: BTreeMap<String, i64>,
    pub events: Vec<Event>,
}

fn parse_time(at: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(at, &Rfc3339)
        .map_err(|_| Error::Integrity(format!("`{at}` is not an RFC 3339 time")))
}

/// The first instant of a `YYYY-MM` period and of the month after it.
pub(crate) fn period_bounds(period: &str) -> Result<(OffsetDateTime, OffsetDateTime)> {
    let bad = || Error::BadInput("a period is a month, YYYY-MM".into());
    let (y, m) = period.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let year: i32 = y.parse().map_err(|_| bad())?;
    let month: u8 = m.parse().map_err(|_| bad())?;
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    let start = time::Date::from_calendar_date(year, month, 1).map_err(|_| bad())?;
    let next = if month == time::Month::December {
        time::Date::from_calendar_date(year + 1, time::Month::January, 1)
    } else {
        time::Date::from_calendar_date(year, month.next(), 1)
    }
    .map_err(|_| bad())?;
    Ok((start.midnight().assume_utc(), next.midnight().assume_utc()))
}

/// The statement of `org` for `period`, counting storage up to `as_of` (so that a statement
/// of the running month can be reproduced exactly later).
/// An org's statement for a month (R-METER): a line per scenario and price item, and the total.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Statement {
    pub org: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Storage is counted to this time (RFC 3339).
    pub as_of: String,
    pub lines: Vec<StatementLine>,
    pub total_fen: i64,
}

/// One line of a statement: a scenario's use of one price item (none: the org's own data).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatementLine {
    pub scenario: Option<String>,
    pub scenario_name: Option<String>,
    pub category: String,
    pub item: String,
    pub quantity: f64,
    pub unit: String,
    pub fen_per_unit: i64,
    pub amount_fen: i64,
    /// Why the line costs nothing, when it does not.
    pub note: Option<String>,
}

pub fn statement(
    ledger: &Ledger,
    org: &str,
    period: &str,
    as_of: OffsetDateTime,
) -> Result<Statement> {
    let (start, end) = period_bounds(period)?;
    let in_period = |at: &str| -> Result<bool> {
        let t = parse_time(at)?;
        Ok(start <= t && t < end)
    };
    // Per scenario (None: the org's own stored data): the quantity of each item.
    let mut usage: BTreeMap<Option<String>, BTreeMap<&str, f64>> = BTreeMap::new();
    for (id, s) in &ledger.scenarios {
        if s.org == org {
            usage.insert(Some(id.clone()), BTreeMap::new());
        }
    }
    let ours = |scenario: &str| ledger.scenarios.get(scenario).is_some_and(|s| s.org == org);
    // Products of the org's data it downloaded from other orgs' scenarios, by scenario.
    let mut downloads: BTreeMap<String, f64> = BTreeMap::new();
    for event in &ledger.events {
        let (key, item, quantity) = match event {
            Event::Job {
                scenario,
                at,
                fuel,
                bytes_scanned,
            } => {
                if !ours(scenario) || !in_period(at)? {
                    continue;
                }
                let u = usage.entry(Some(scenario.clone())).or_default();
                *u.entry("resource_consumption").or_default() += *fuel as f64 / 1e9;
                *u.entry("data_governance").or_default() += *bytes_scanned as f64 / 1e9;
                (Some(scenario.clone()), "security_services", 1.0)
            }
            Event::ModuleApproved { scenario, at } => {
                if !ours(scenario) || !in_period(at)? {
                    continue;
                }
                (Some(scenario.clone()), "model_publishing", 1.0)
            }
            Event::Released { scenario, at } => {
                if !ours(scenario) || !in_period(at)? {
                    continue;
                }
                (Some(scenario.clone()), "result_export", 1.0)
            }
            Event::ProviderDownload {
                org: provider,
                scenario,
                at,
            } => {
                if provider == org && in_period(at)? {
                    *downloads.entry(scenario.clone()).or_default() += 1.0;
                }
                continue;
            }
            Event::Stored {
                org: owner,
                scenario,
                bytes,
                from,
                until,
            } => {
                if owner != org {
                    continue;
                }
                let from = parse_time(from)?.max(start);
                let until = match until {
                    Some(u) => parse_time(u)?,
                    None => as_of,
                }
                .min(end)
                .min(as_of);
                if until <= from {
                    continue;
                }
                let days = (until - from).as_seconds_f64() / 86_400.0;
                (scenario.clone(), "storage", *bytes as f64 * days / 1e9)
            }
        };
        *usage.entry(key).or_default().entry(item).or_default() += quantity;
    }
    let mut lines = Vec::new();
    let mut total = 0i64;
    for (scenario, quantities) in &usage {
        let terms = scenario.as_ref().and_then(|s| ledger.scenarios.get(s));
        let free = match terms {
            Some(t) if t.public_interest => Some("public-interest scenario: free"),
            Some(t) if t.own_data => Some("a provider's use of products of its own data: free"),
            _ => None,
        };
        for (item, category, unit, default) in PRICE_ITEMS {
            // The org's own data is billed for storage only.
            if scenario.is_none() && item != "storage" {
                continue;
            }
            let quantity = quantities.get(item).copied().unwrap_or(0.0);
            let fen = ledger.prices.get(item).copied().unwrap_or(default);
            let amount = if free.is_some() {
                0
            } else {
                (quantity * fen as f64).round() as i64
            };
            total += amount;
            lines.push(StatementLine {
                scenario: scenario.clone(),
                scenario_name: terms.map(|t| t.name.clone()),
                category: category.to_string(),
                item: item.to_string(),
                quantity: (quantity * 1e6).round() / 1e6,
                unit: unit.to_string(),
                fen_per_unit: fen,
                amount_fen: amount,
                note: free.map(str::to_string),
            });
        }
    }
    for (scenario, quantity) in downloads {
        let (item, category, _, default) = PRICE_ITEMS
            .iter()
            .find(|(item, ..)| *item == "result_export")
            .copied()
            .ok_or_else(|| Error::Internal("the price table lost result_export".into()))?;
        let unit = "product of its data downloaded";
        lines.push(StatementLine {
            scenario_name: ledger.scenarios.get(&scenario).map(|t| t.name.clone()),
            scenario: Some(scenario),
            category: category.to_string(),
            item: item.to_string(),
            quantity,
            unit: unit.to_string(),
            fen_per_unit: ledger.prices.get(item).copied().unwrap_or(default),
            amount_fen: 0,
            note: Some("a provider's use of products of its own data: free".to_string()),
        });
    }
    Ok(Statement {
        org: org.to_string(),
        period: period.to_string(),
        as_of: as_of
            .format(&Rfc3339)
            .map_err(|e| Error::Internal(e.to_string()))?,
        lines,
        total_fen: total,
    })
}

/// Rebuilds the ledger from the audit log alone, entry by entry.
pub fn ledger_from_audit(entries: &[AuditEntry]) -> Result<Ledger> {
    let missing = |e: &AuditEntry, what: &str| {
        Error::Integrity(format!("audit entry {} ({}) lacks {what}", e.seq, e.action))
    };
    let mut ledger = Ledger::default();
    let mut org_of_principal: BTreeMap<String, String> = BTreeMap::new();
    let mut dataset_org: BTreeMap<String, String> = BTreeMap::new();
    let mut scenario_datasets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut job_scenario: BTreeMap<String, String> = BTreeMap::new();
    // Where each ended job's event is in the ledger (a later charge changes its fuel).
    let mut job_event: BTreeMap<String, usize> = BTreeMap::new();
    let mut export_scenario: BTreeMap<String, String> = BTreeMap::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    for e in entries {
        match e.action.parse::<Action>() {
            Ok(Action::PlatformInit) => {
                let d = audited::PlatformInit::read(e)?;
                org_of_principal.insert(d.admin, e.object.clone());
            }
            Ok(Action::PrincipalCreate) => {
                let d = audited::PrincipalCreate::read(e)?;
                org_of_principal.insert(e.object.clone(), d.org);
            }
            Ok(Action::DatasetImport) => {
                let d = audited::DatasetImport::read(e)?;
                let org = org_of_principal
                    .get(&e.actor)
                    .ok_or_else(|| missing(e, "a known importer"))?
                    .clone();
                dataset_org.insert(e.object.clone(), org.clone());
                if d.social {
                    ledger.events.push(Event::Stored {
                        org,
                        scenario: None,
                        bytes: d.bytes,
                        from: e.at.clone(),
                        until: None,
                    });
                }
            }
            Ok(Action::ScenarioApply) => {
                let d = audited::ScenarioApply::read(e)?;
                let org = org_of_principal
                    .get(&e.actor)
                    .ok_or_else(|| missing(e, "a known applicant"))?
                    .clone();
                scenario_datasets.insert(
                    e.object.clone(),
                    d.grants.into_iter().map(|g| g.dataset).collect(),
                );
                ledger.scenarios.insert(
                    e.object.clone(),
                    ScenarioTerms {
                        org,
                        name: d.name,
                        public_interest: d.public_interest,
                        own_data: false,
                    },
                );
            }
            Ok(Action::JobStart) => {
                let d = audited::JobStart::read(e)?;
                job_scenario.insert(e.object.clone(), d.scenario);
            }
            Ok(Action::JobEnd) => {
                let d = audited::JobEnd::read(e)?;
                let scenario = job_scenario
                    .get(&e.object)
                    .ok_or_else(|| missing(e, "a started job"))?
                    .clone();
                job_event.insert(e.object.clone(), ledger.events.len());
                ledger.events.push(Event::Job {
                    scenario: scenario.clone(),
                    at: e.at.clone(),
                    fuel: d.resources.fuel,
                    bytes_scanned: d.resources.bytes_scanned,
                });
                if d.state == JobState::Succeeded {
                    let org = ledger
                        .scenarios
                        .get(&scenario)
                        .map(|s| s.org.clone())
                        .ok_or_else(|| missing(e, "a known scenario"))?;
                    ledger.events.push(Event::Stored {
                        org,
                        scenario: Some(scenario),
                        bytes: d.resources.output_bytes,
                        from: e.at.clone(),
                        until: None,
                    });
                }
            }
            Ok(Action::ModuleApprove) => {
                let d = audited::ModuleApprove::read(e)?;
                ledger.events.push(Event::ModuleApproved {
                    scenario: d.scenario,
                    at: e.at.clone(),
                });
            }
            Ok(Action::ExportRequest) => {
                let d = audited::ExportRequest::read(e)?;
                let scenario = job_scenario
                    .get(&d.job)
                    .ok_or_else(|| missing(e, "a known job"))?
                    .clone();
                export_scenario.insert(e.object.clone(), scenario.clone());
                if let Some(bytes) = d.bytes {
                    let org = ledger
                        .scenarios
                        .get(&scenario)
                        .map(|s| s.org.clone())
                        .ok_or_else(|| missing(e, "a known scenario"))?;
                    ledger.events.push(Event::Stored {
                        org,
                        scenario: Some(scenario),
                        bytes,
                        from: e.at.clone(),
                        until: None,
                    });
                }
            }
            Ok(Action::ExportDownload) => {
                let d = audited::ExportDownload::read(e)?;
                let scenario = export_scenario
                    .get(&e.object)
                    .ok_or_else(|| missing(e, "a known export"))?;
                if d.by_provider {
                    // S11: a provider's download of a product of its data, free (never the
                    // release).
                    let org = org_of_principal
                        .get(&e.actor)
                        .ok_or_else(|| missing(e, "a known downloader"))?;
                    ledger.events.push(Event::ProviderDownload {
                        org: org.clone(),
                        scenario: scenario.clone(),
                        at: e.at.clone(),
                    });
                } else if released.insert(e.object.clone()) {
                    // The first download of an export is its release.
                    ledger.events.push(Event::Released {
                        scenario: scenario.clone(),
                        at: e.at.clone(),
                    });
                }
            }
            Ok(Action::OrgExit) => {
                audited::OrgExit::read(e)?;
                // Everything the org kept is destroyed now; its logs stay.
                for event in &mut ledger.events {
                    if let Event::Stored { org, until, .. } = event
                        && *org == e.object
                        && until.is_none()
                    {
                        *until = Some(e.at.clone());
                    }
                }
            }
            Ok(Action::PriceSet) => {
                let d = audited::PriceSet::read(e)?;
                ledger.prices.insert(e.object.clone(), d.fen_per_unit);
            }
            // What the cluster's executors recorded after a job ended, charged to it: the
            // job's fuel is what its row now says (as the platform's own ledger reads it).
            Ok(Action::JobUsage) => {
                let d = audited::JobUsage::read(e)?;
                let at = *job_event
                    .get(&e.object)
                    .ok_or_else(|| missing(e, "an ended job"))?;
                if let Some(Event::Job { fuel, .. }) = ledger.events.get_mut(at) {
                    *fuel = d.resources.fuel;
                }
            }
            // The alert settings' entries (object `alerts`) change no price.
            Ok(Action::PolicyApply) if e.object != "alerts" => {
                let d: audited::PolicyChanges = serde_json::from_value(e.detail.clone())
                    .map_err(|_| missing(e, "its changes"))?;
                for p in d.prices()? {
                    ledger.prices.insert(p.price, p.to);
                }
            }
            _ => {}
        }
    }
    for (id, terms) in &mut ledger.scenarios {
        terms.own_data = scenario_datasets.get(id).is_some_and(|datasets| {
            datasets
                .iter()
                .all(|d| dataset_org.get(d) == Some(&terms.org))
        });
    }
    Ok(ledger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use time::macros::datetime;

    fn ledger(public_interest: bool) -> Ledger {
        let mut l = Ledger::default();
        l.scenarios.insert(
            "sc1".into(),
            ScenarioTerms {
                org: "unit".into(),
                name: "footfall".into(),
                public_interest,
                own_data: false,
            },
        );
        l.events = vec![
            Event::Job {
                scenario: "sc1".into(),
                at: "2026-11-03T10:00:00Z".into(),
                fuel: 2_000_000_000,
                bytes_scanned: 3_000_000_000,
            },
            Event::Job {
                scenario: "sc1".into(),
                at: "2026-10-31T23:59:59Z".into(),
                fuel: 9,
                bytes_scanned: 9,
            },
            Event::Released {
                scenario: "sc1".into(),
                at: "2026-11-04T00:00:00Z".into(),
            },
            Event::Stored {
                org: "unit".into(),
                scenario: Some("sc1".into()),
                bytes: 10_000_000_000,
                from: "2026-10-20T00:00:00Z".into(),
                until: Some("2026-11-11T00:00:00Z".into()),
            },
            Event::Stored {
                org: "unit".into(),
                scenario: None,
                bytes: 1_000_000_000,
                from: "2026-11-21T00:00:00Z".into(),
                until: None,
            },
        ];
        l
    }

    fn amount(s: &Statement, scenario: Value, item: &str) -> (f64, i64) {
        let s = serde_json::to_value(s).unwrap();
        let line = s["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["scenario"] == scenario && l["item"] == item)
            .unwrap();
        (
            line["quantity"].as_f64().unwrap(),
            line["amount_fen"].as_i64().unwrap(),
        )
    }

    #[test]
    fn a_month_counts_its_own_events_and_storage_by_the_day() {
        let as_of = datetime!(2026-11-26 00:00 UTC);
        let s = statement(&ledger(false), "unit", "2026-11", as_of).unwrap();
        let sc = json!("sc1");
        assert_eq!(amount(&s, sc.clone(), "resource_consumption"), (2.0, 100));
        assert_eq!(amount(&s, sc.clone(), "data_governance"), (3.0, 600));
        assert_eq!(amount(&s, sc.clone(), "security_services"), (1.0, 100));
        assert_eq!(amount(&s, sc.clone(), "result_export"), (1.0, 5_000));
        // 10 GB for the 10 days of November before it was destroyed.
        assert_eq!(amount(&s, sc, "storage"), (100.0, 200));
        // 1 GB from the 21st until the statement's as-of time, 5 days.
        assert_eq!(amount(&s, Value::Null, "storage"), (5.0, 10));
        assert_eq!(s.total_fen, 100 + 600 + 100 + 5_000 + 200 + 10);
    }

    #[test]
    fn public_interest_use_is_free_but_the_orgs_own_storage_is_not() {
        let as_of = datetime!(2026-11-26 00:00 UTC);
        let s = statement(&ledger(true), "unit", "2026-11", as_of).unwrap();
        assert_eq!(amount(&s, json!("sc1"), "result_export"), (1.0, 0));
        assert_eq!(s.total_fen, 10);
        let other = statement(&ledger(false), "somebody", "2026-11", as_of).unwrap();
        assert_eq!(other.total_fen, 0);
    }

    #[test]
    fn periods_are_months() {
        assert!(period_bounds("2026-12").is_ok());
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", ""] {
            assert!(period_bounds(bad).is_err(), "{bad}");
        }
    }
}
