//! The providers' side (S11, S18): where a provider's dataset is used (the scenarios granting
//! it, the jobs that read it, the products released from it; never a result of another org),
//! the released products computed from a provider's data, which the provider downloads free
//! (`download_bundle`), and each provider's contribution report.

use super::*;

/// A scenario that grants the dataset, as its provider sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScenarioUse {
    pub id: String,
    pub name: String,
    pub org: String,
    pub state: ScenarioState,
    pub term: [String; 2],
    /// Jobs of the scenario that read the dataset, and the rows they scanned in all (every
    /// table a job read counts in its rows).
    pub jobs: u64,
    pub rows_scanned: u64,
}

/// A released product computed from the dataset: its provider downloads the bundle free.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProductUse {
    pub export: String,
    pub scenario: String,
    pub released_at: Option<String>,
}

/// Where a dataset is used.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetUsage {
    pub dataset: String,
    pub name: String,
    pub scenarios: Vec<ScenarioUse>,
    pub products: Vec<ProductUse>,
    pub jobs: u64,
    pub rows_scanned: u64,
}

/// S18: one dataset's contribution in a year.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetContribution {
    pub dataset: String,
    pub name: String,
    pub level: Level,
    /// Its newest version, the share of its provider's quality rules that version keeps, and
    /// its rows failing them (summed over the rules); none when no rule was declared.
    pub version: i64,
    pub quality_score: Option<f64>,
    pub rule_failures: Option<u64>,
    /// Scenarios granting it; the jobs that read it and ended in the year, the rows they
    /// scanned (every table a job read counts in its rows) and the rows failing quality rules
    /// in the versions they read; products released from those jobs in the year.
    pub scenarios: u64,
    pub jobs: u64,
    pub rows_scanned: u64,
    pub rule_failures_read: u64,
    pub products: u64,
    /// The fees its data earned in the year, in fen, by the price table's categories (see
    /// [`ContributionReport::attribution`]).
    pub fees_fen: BTreeMap<String, i64>,
    pub fees_total_fen: i64,
}

/// S18: a provider's contribution report for a year.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContributionReport {
    pub org: String,
    pub year: i32,
    /// How fees are attributed to datasets.
    pub attribution: String,
    pub datasets: Vec<DatasetContribution>,
    pub fees_total_fen: i64,
}

/// A job that read a dataset: its input of that dataset, its resources and its end.
struct JobRead {
    id: String,
    input: StoredInput,
    resources: Option<ResourceUse>,
    finished_at: Option<String>,
}

/// S17: the rows failing a version's quality rules, summed over the rules, from its import
/// report; none when the version was checked against no rule.
pub(super) fn rule_failures_in(quality: &Value) -> Option<u64> {
    quality["rules"].as_array().map(|rules| {
        rules
            .iter()
            .filter_map(|r| r["failing_rows"].as_u64())
            .fold(0u64, u64::saturating_add)
    })
}

/// How a scenario's fees are shared among the datasets it grants.
const FEE_ATTRIBUTION: &str = "each scenario's charges in the year (its org's statements, month by month, \
     by category) are shared equally among the datasets it grants, rounded down to the fen; \
     public-interest scenarios and a provider's use of its own data are free, so earn nothing";

impl Platform {
    /// S18: a provider's contribution report for `year`: per dataset its use, its quality and
    /// the fees it earned; for the provider's own members and the authority's admins and
    /// auditors.
    pub fn contribution_report(
        &self,
        actor: &Principal,
        org: &str,
        year: i32,
    ) -> Result<ContributionReport> {
        let db = self.lock_db();
        let org = Self::org_id(&db, org)?;
        tidegate_policy::can_see_dataset_usage(actor, &org, Self::org_kind(&db, &actor.org)?)
            .map_err(|_| Error::NotFound(format!("org {org}")))?;
        let now = crate::clock::now();
        if !(2000..=now.year()).contains(&year) {
            return Err(Error::BadInput(format!(
                "{year} is not a year of the platform"
            )));
        }
        let in_year = |at: &Option<String>| {
            at.as_deref()
                .is_some_and(|t| t.starts_with(&format!("{year:04}-")))
        };
        let datasets: Vec<String> = db
            .prepare("SELECT id FROM datasets WHERE org_id = ?1 ORDER BY name")?
            .query_map(params![org], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let scenarios: Vec<String> = db
            .prepare("SELECT id FROM scenarios ORDER BY created_at, id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // Each scenario with the ids of the datasets it grants.
        let scenarios = scenarios
            .iter()
            .map(|id| {
                let s = Self::scenario_row(&db, id)?;
                let granted: BTreeSet<String> = s
                    .grants
                    .iter()
                    .map(|g| Self::dataset_row(&db, &g.dataset).map(|d| d.id))
                    .collect::<Result<_>>()?;
                Ok((s, granted))
            })
            .collect::<Result<Vec<_>>>()?;
        // Each scenario's charges in the year by category, from its org's statements.
        let ledger = Self::ledger(&db)?;
        let months: Vec<String> = (1..=12u8)
            .filter(|m| year < now.year() || *m <= u8::from(now.month()))
            .map(|m| format!("{year:04}-{m:02}"))
            .collect();
        let mut charges: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
        let mut billed: BTreeSet<String> = BTreeSet::new();
        for (s, _) in &scenarios {
            if !billed.insert(s.org.clone()) {
                continue;
            }
            for month in &months {
                let st = crate::metering::statement(&ledger, &s.org, month, now)?;
                for line in &st.lines {
                    let (Some(sid), category, fen) = (
                        line.scenario.as_deref(),
                        line.category.as_str(),
                        line.amount_fen,
                    ) else {
                        continue;
                    };
                    // Only the scenario's own org's lines (a provider's free downloads of
                    // another org's products are on the provider's statement at zero).
                    if ledger.scenarios.get(sid).is_some_and(|t| t.org == s.org) {
                        *charges
                            .entry(sid.to_string())
                            .or_default()
                            .entry(category.to_string())
                            .or_default() += fen;
                    }
                }
            }
        }
        let mut report = ContributionReport {
            org: org.clone(),
            year,
            attribution: FEE_ATTRIBUTION.into(),
            datasets: Vec::new(),
            fees_total_fen: 0,
        };
        for id in datasets {
            let d = Self::dataset_row(&db, &id)?;
            let (version, quality): (i64, String) = db.query_row(
                "SELECT version, quality FROM dataset_versions WHERE dataset_id = ?1
                 ORDER BY version DESC LIMIT 1",
                params![d.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let quality: Value = from_json(&quality)?;
            let mut c = DatasetContribution {
                dataset: d.id.clone(),
                name: d.name.clone(),
                level: d.level,
                version,
                quality_score: quality["score"].as_f64(),
                rule_failures: rule_failures_in(&quality),
                scenarios: 0,
                jobs: 0,
                rows_scanned: 0,
                rule_failures_read: 0,
                products: 0,
                fees_fen: BTreeMap::new(),
                fees_total_fen: 0,
            };
            for (s, granted) in &scenarios {
                if !granted.contains(&d.id) {
                    continue;
                }
                c.scenarios += 1;
                let mut read = BTreeSet::new();
                for job in Self::jobs_reading(&db, &s.id, &d.id)? {
                    read.insert(job.id);
                    if !in_year(&job.finished_at) {
                        continue;
                    }
                    c.jobs += 1;
                    c.rule_failures_read += job.input.rule_failures.unwrap_or(0);
                    c.rows_scanned += job.resources.map_or(0, |r| r.rows_scanned);
                }
                c.products += Self::released_exports(&db, &s.id)?
                    .iter()
                    .filter(|(_, job, at)| read.contains(job) && in_year(at))
                    .count() as u64;
                for (category, fen) in charges.get(&s.id).into_iter().flatten() {
                    let share = fen / granted.len().max(1) as i64;
                    *c.fees_fen.entry(category.clone()).or_default() += share;
                    c.fees_total_fen += share;
                }
            }
            report.fees_total_fen += c.fees_total_fen;
            report.datasets.push(c);
        }
        Ok(report)
    }

    /// S18: where a dataset is used, for its provider's org and the authority's admins and
    /// auditors.
    pub fn dataset_usage(&self, actor: &Principal, dataset: &str) -> Result<DatasetUsage> {
        let db = self.lock_db();
        let d = Self::dataset_row(&db, dataset)?;
        tidegate_policy::can_see_dataset_usage(actor, &d.org, Self::org_kind(&db, &actor.org)?)
            .map_err(|_| Error::NotFound(format!("dataset {dataset}")))?;
        let ids: Vec<String> = db
            .prepare("SELECT id FROM scenarios ORDER BY created_at, id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut usage = DatasetUsage {
            dataset: d.id.clone(),
            name: d.name.clone(),
            scenarios: Vec::new(),
            products: Vec::new(),
            jobs: 0,
            rows_scanned: 0,
        };
        for id in ids {
            let s = Self::scenario_row(&db, &id)?;
            if !s
                .grants
                .iter()
                .any(|g| g.dataset == d.id || g.dataset == d.name)
            {
                continue;
            }
            let (mut read, mut rows) = (0u64, 0u64);
            let mut read_ids = BTreeSet::new();
            for job in Self::jobs_reading(&db, &id, &d.id)? {
                read += 1;
                rows += job.resources.map_or(0, |r| r.rows_scanned);
                read_ids.insert(job.id);
            }
            let released = Self::released_exports(&db, &id)?;
            for (export, job, released_at) in released {
                if read_ids.contains(&job) {
                    usage.products.push(ProductUse {
                        export,
                        scenario: id.clone(),
                        released_at,
                    });
                }
            }
            usage.jobs += read;
            usage.rows_scanned += rows;
            usage.scenarios.push(ScenarioUse {
                id: s.id.clone(),
                name: s.name.clone(),
                org: s.org.clone(),
                state: s.view.state,
                term: [s.view.term_start.clone(), s.view.term_end.clone()],
                jobs: read,
                rows_scanned: rows,
            });
        }
        Ok(usage)
    }

    /// The jobs of scenario `sid` that read `dataset`, with what they read of it.
    fn jobs_reading(db: &Connection, sid: &str, dataset: &str) -> Result<Vec<JobRead>> {
        let jobs: Vec<(String, String, Option<String>, Option<String>)> = db
            .prepare("SELECT id, inputs, resources, finished_at FROM jobs WHERE scenario_id = ?1")?
            .query_map(params![sid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut read = Vec::new();
        for (id, inputs, resources, finished_at) in jobs {
            let inputs: Vec<StoredInput> = from_json(&inputs).unwrap_or_default();
            let Some(input) = inputs.into_iter().find(|i| i.dataset == dataset) else {
                continue;
            };
            read.push(JobRead {
                id,
                input,
                resources: resources.map(|r| from_json(&r)).transpose()?,
                finished_at,
            });
        }
        Ok(read)
    }

    /// The released exports of scenario `sid`: (export, job, released at), oldest first.
    fn released_exports(
        db: &Connection,
        sid: &str,
    ) -> Result<Vec<(String, String, Option<String>)>> {
        Ok(db
            .prepare(
                "SELECT e.id, e.job_id, e.released_at FROM exports e JOIN jobs j ON e.job_id = j.id
                 WHERE j.scenario_id = ?1 AND e.state = 'released' ORDER BY e.released_at, e.id",
            )?
            .query_map(params![sid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The orgs that provided the datasets a job read.
    pub(super) fn input_orgs(db: &Connection, inputs: &[StoredInput]) -> Result<Vec<String>> {
        inputs
            .iter()
            .map(|i| Ok(Self::dataset_row(db, &i.dataset)?.org))
            .collect()
    }
}
