//! The providers' side (S11, S18): where a provider's dataset is used (the scenarios granting
//! it, the jobs that read it, the products released from it; never a result of another org),
//! and the released products computed from a provider's data, which the provider downloads
//! free (`download_bundle`).

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

impl Platform {
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
            let jobs: Vec<(String, String, Option<String>)> = db
                .prepare("SELECT id, inputs, resources FROM jobs WHERE scenario_id = ?1")?
                .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let (mut read, mut rows) = (0u64, 0u64);
            let mut read_ids = BTreeSet::new();
            for (job, inputs, resources) in jobs {
                let inputs: Vec<StoredInput> = from_json(&inputs).unwrap_or_default();
                if !inputs.iter().any(|i| i.dataset == d.id) {
                    continue;
                }
                read += 1;
                if let Some(r) = resources {
                    rows += from_json::<ResourceUse>(&r)?.rows_scanned;
                }
                read_ids.insert(job);
            }
            let released: Vec<(String, String, Option<String>)> = db
                .prepare(
                    "SELECT e.id, e.job_id, e.released_at FROM exports e JOIN jobs j ON e.job_id = j.id
                     WHERE j.scenario_id = ?1 AND e.state = 'released' ORDER BY e.released_at, e.id",
                )?
                .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
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

    /// The orgs that provided the datasets a job read.
    pub(super) fn input_orgs(db: &Connection, inputs: &[StoredInput]) -> Result<Vec<String>> {
        inputs
            .iter()
            .map(|i| Ok(Self::dataset_row(db, &i.dataset)?.org))
            .collect()
    }
}
