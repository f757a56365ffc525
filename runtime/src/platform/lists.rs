//! Lists and queues: what waits for a caller, and what they may browse, page by page. Every
//! list is scoped by the same policy as the action on its items: a reviewer's queue holds the
//! export requests `can_review_export` would let them decide, an admin's scenario queue those
//! `can_approve_scenario` would let them approve, and nobody lists what they could not open.

use super::*;

/// At most this many items a page; 50 when the caller names none.
const MAX_PAGE: usize = 200;
const DEFAULT_PAGE: usize = 50;

/// A page of a list and the cursor of the next one (`None` on the last page).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// What a list is filtered by and which page is asked for. Lists run newest first; a queue
/// (`queue = true`: only what waits for the caller's decision) oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub scenario: Option<String>,
    #[serde(default)]
    pub queue: bool,
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next` cursor of the page before.
    #[serde(default)]
    pub after: Option<String>,
}

impl ListQuery {
    fn limit(&self) -> Result<usize> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(_) => Err(Error::BadInput(format!(
                "a page holds from 1 to {MAX_PAGE} items"
            ))),
        }
    }

    /// The cursor as (created_at, id): it names the last item of the page before.
    fn cursor(&self) -> Result<Option<(String, String)>> {
        let Some(after) = &self.after else {
            return Ok(None);
        };
        let bad = || Error::BadInput("the cursor is not one a list gave".into());
        let (at, id) = after.split_once('~').ok_or_else(bad)?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_:.+".contains(c))
        };
        if !(ok(at) && ok(id)) {
            return Err(bad());
        }
        Ok(Some((at.to_string(), id.to_string())))
    }
}

/// An export request as a list shows it: enough to find it, not its report or preview.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportSummary {
    pub id: String,
    pub job: String,
    pub scenario: String,
    pub org: String,
    pub state: tidegate_policy::ExportState,
    pub requested_by: String,
    pub requested_at: String,
    pub required_approvals: u64,
    pub approvals: u64,
    pub result_sha256: Option<String>,
    /// Its rows go to the public record once released (its approval says `publish`).
    #[serde(default)]
    pub public_figures: bool,
}

/// A job as a list shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSummary {
    pub id: String,
    pub scenario: String,
    pub submitted_by: String,
    pub state: tidegate_policy::JobState,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// A module as a list shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleSummary {
    pub hash: String,
    pub scenario: String,
    pub org: String,
    pub uploaded_by: String,
    pub functions: usize,
    pub approved_by: Option<String>,
    pub uploaded_at: String,
}

/// What a list selects: `sql` (its `created_at` and `id` first, then its `WHERE` conditions,
/// to which the cursor's are added), its arguments, and whether the caller may see every row
/// it selects.
struct Select {
    sql: String,
    args: Vec<rusqlite::types::Value>,
    every_row_visible: bool,
}

impl Select {
    /// `sql` ends in a `WHERE` clause that conditions are added to; every row it selects is
    /// visible to the caller unless told otherwise.
    fn new(sql: &str) -> Select {
        Select {
            sql: sql.to_string(),
            args: Vec::new(),
            every_row_visible: true,
        }
    }

    /// Only the rows whose `column` is `value`.
    fn and(&mut self, column: &str, value: &str) {
        self.args.push(value.to_string().into());
        self.sql
            .push_str(&format!(" AND {column} = ?{}", self.args.len()));
    }
}

/// The rows `select` gives, kept by `keep`, a page of them.
fn page<T>(
    db: &Connection,
    select: Select,
    q: &ListQuery,
    mut read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    mut keep: impl FnMut(&T) -> Result<bool>,
    cursor_of: impl Fn(&T) -> (String, String),
) -> Result<Listing<T>> {
    let Select {
        sql,
        mut args,
        every_row_visible,
    } = select;
    let limit = q.limit()?;
    let (cmp, order) = if q.queue { (">", "ASC") } else { ("<", "DESC") };
    let (at, id) = q
        .cursor()?
        .unwrap_or_else(|| (if q.queue { "" } else { "~" }.to_string(), String::new()));
    args.push(at.into());
    args.push(id.into());
    let n = args.len();
    let sql = format!(
        "{sql} AND (t.created_at, t.id) {cmp} (?{}, ?{n}) ORDER BY t.created_at {order}, t.id {order}",
        n - 1
    );
    let mut stmt = db.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut items = Vec::new();
    // A page examines a bounded number of rows under the metadata lock: past it, the page
    // ends early with a cursor at the last row examined (a caller who may see few rows of a
    // large table pages through it instead of holding the lock for the whole scan). Only
    // where the caller may see every row the query selects: a cursor names its row.
    let most = if every_row_visible {
        limit * 4 + 500
    } else {
        usize::MAX
    };
    let (mut examined, mut last) = (0usize, None);
    let mut next = None;
    while let Some(row) = rows.next()? {
        let item = read(row)?;
        examined += 1;
        let here = cursor_of(&item);
        if keep(&item)? {
            if items.len() == limit {
                next = last.take();
                break;
            }
            items.push(item);
        }
        last = Some(here);
        if examined >= most {
            next = last.take();
            break;
        }
    }
    let next = next.map(|(at, id)| format!("{at}~{id}"));
    Ok(Listing { items, next })
}

impl Platform {
    /// The metadata connection (a panic elsewhere does not poison it for every request).
    pub(super) fn lock_db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Export requests the caller may open: their org's, or every org's for the authority's
    /// offices. With `queue`: the requests in review that the caller may decide now.
    pub fn list_exports(&self, actor: &Principal, q: &ListQuery) -> Result<Listing<ExportSummary>> {
        let db = self.lock_db();
        let kind = Self::org_kind(&db, &actor.org)?;
        let oversees = tidegate_policy::oversees_all_orgs(actor, kind);
        let mut select = Select::new(
            "SELECT t.created_at, t.id, t.job_id, j.scenario_id, t.org_id, t.state, t.requested_by,
                    t.required_approvals, t.result_hash,
                    (SELECT COUNT(*) FROM export_reviews r
                      WHERE r.export_id = t.id AND r.decision = 'approve'),
                    t.public_figures
             FROM exports t JOIN jobs j ON t.job_id = j.id WHERE 1 = 1",
        );
        if !oversees {
            select.and("t.org_id", &actor.org);
        }
        let state = if q.queue {
            Some("in_review")
        } else {
            q.state.as_deref()
        };
        if let Some(s) = state {
            select.and("t.state", s);
        }
        if let Some(s) = &q.scenario {
            select.and("j.scenario_id", s);
        }
        let approvers = |id: &str| -> Result<Vec<String>> {
            Ok(db
                .prepare(
                    "SELECT reviewer_id FROM export_reviews WHERE export_id = ?1 AND decision = 'approve'",
                )?
                .query_map(params![id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?)
        };
        page(
            &db,
            select,
            q,
            |r| {
                Ok(ExportSummary {
                    requested_at: r.get(0)?,
                    id: r.get(1)?,
                    job: r.get(2)?,
                    scenario: r.get(3)?,
                    org: r.get(4)?,
                    state: super::stored_state_at(r, 5)?,
                    requested_by: r.get(6)?,
                    required_approvals: r.get::<_, i64>(7)? as u64,
                    result_sha256: r.get(8)?,
                    approvals: r.get::<_, i64>(9)? as u64,
                    public_figures: r.get(10)?,
                })
            },
            |e| {
                Ok(!q.queue
                    || tidegate_policy::can_review_export(
                        actor,
                        kind,
                        &e.requested_by,
                        &e.org,
                        &approvers(&e.id)?,
                    )
                    .is_ok())
            },
            |e| (e.requested_at.clone(), e.id.clone()),
        )
    }

    /// Jobs the caller may open: their org's, or every org's for the authority's offices.
    pub fn list_jobs(&self, actor: &Principal, q: &ListQuery) -> Result<Listing<JobSummary>> {
        if q.queue {
            return Err(Error::BadInput(
                "jobs wait for no one's decision: list them without --queue".into(),
            ));
        }
        let db = self.lock_db();
        let oversees = tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?);
        let mut select = Select::new(
            "SELECT t.created_at, t.id, t.scenario_id, t.submitted_by, t.state, t.finished_at
             FROM jobs t JOIN scenarios s ON t.scenario_id = s.id WHERE 1 = 1",
        );
        if !oversees {
            select.and("s.org_id", &actor.org);
        }
        if let Some(s) = &q.state {
            select.and("t.state", s);
        }
        if let Some(s) = &q.scenario {
            select.and("t.scenario_id", s);
        }
        page(
            &db,
            select,
            q,
            |r| {
                Ok(JobSummary {
                    created_at: r.get(0)?,
                    id: r.get(1)?,
                    scenario: r.get(2)?,
                    submitted_by: r.get(3)?,
                    state: super::stored_state_at(r, 4)?,
                    finished_at: r.get(5)?,
                })
            },
            |_| Ok(true),
            |j| (j.created_at.clone(), j.id.clone()),
        )
    }

    /// Modules the caller may open: their org's, or every org's for the authority's offices.
    /// With `queue`: those awaiting an algorithm review that the caller may give. `state` is
    /// `awaiting` or `approved`.
    pub fn list_modules(&self, actor: &Principal, q: &ListQuery) -> Result<Listing<ModuleSummary>> {
        let db = self.lock_db();
        let kind = Self::org_kind(&db, &actor.org)?;
        let oversees = tidegate_policy::oversees_all_orgs(actor, kind);
        // A module is uploaded per scenario: (hash, scenario) is its key, the list's id.
        let mut select = Select::new(
            "SELECT t.created_at, t.id, t.hash, t.scenario_id, t.org_id, t.uploaded_by,
                    t.functions, t.approved_by
             FROM (SELECT *, hash || '.' || scenario_id AS id FROM modules) t WHERE 1 = 1",
        );
        if !oversees {
            select.and("t.org_id", &actor.org);
        }
        let state = if q.queue {
            Some("awaiting")
        } else {
            q.state.as_deref()
        };
        match state {
            None => {}
            Some("awaiting") => {
                select
                    .sql
                    .push_str(" AND t.approved_by IS NULL AND t.revoked_by IS NULL");
            }
            Some("approved") => select.sql.push_str(" AND t.approved_by IS NOT NULL"),
            Some("revoked") => select.sql.push_str(" AND t.revoked_by IS NOT NULL"),
            Some(_) => {
                return Err(Error::BadInput(
                    "a module's state is awaiting, approved or revoked".into(),
                ));
            }
        }
        if let Some(s) = &q.scenario {
            select.and("t.scenario_id", s);
        }
        page(
            &db,
            select,
            q,
            |r| {
                let functions: String = r.get(6)?;
                Ok(ModuleSummary {
                    uploaded_at: r.get(0)?,
                    hash: r.get(2)?,
                    scenario: r.get(3)?,
                    org: r.get(4)?,
                    uploaded_by: r.get(5)?,
                    functions: from_json::<Vec<crate::sandbox::FunctionSig>>(&functions)
                        .map(|f| f.len())
                        .unwrap_or(0),
                    approved_by: r.get(7)?,
                })
            },
            |m| Ok(!q.queue || tidegate_policy::can_approve_module(actor, kind, &m.org).is_ok()),
            |m| (m.uploaded_at.clone(), format!("{}.{}", m.hash, m.scenario)),
        )
    }

    /// Scenarios the caller may open (their org's; those over their data for a provider;
    /// every one for the authority's offices). With `queue`: those pending approvals that the
    /// caller may approve now.
    pub fn list_scenarios(
        &self,
        actor: &Principal,
        q: &ListQuery,
    ) -> Result<Listing<ScenarioView>> {
        let db = self.lock_db();
        let scenarios_all_visible =
            tidegate_policy::oversees_all_orgs(actor, Self::org_kind(&db, &actor.org)?);
        let mut select = Select::new("SELECT t.created_at, t.id FROM scenarios t WHERE 1 = 1");
        select.every_row_visible = scenarios_all_visible;
        if let Some(s) = &q.state {
            select.and("t.state", s);
        }
        let listing = page(
            &db,
            select,
            q,
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            |(_, id)| {
                let s = Self::scenario_row(&db, id)?;
                if !Self::can_see_scenario(&db, actor, &s)? {
                    return Ok(false);
                }
                if !q.queue {
                    return Ok(true);
                }
                let approvals = Self::approvals_state(&db, id, &s.grants)?;
                Ok(
                    tidegate_policy::can_approve_scenario(actor, &approvals, s.stored_state)
                        .is_ok(),
                )
            },
            |(at, id)| (at.clone(), id.clone()),
        )?;
        let items = listing
            .items
            .iter()
            .map(|(_, id)| Ok(Self::scenario_row(&db, id)?.view))
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing {
            items,
            next: listing.next,
        })
    }

    /// Every org (the authority's admins and auditors).
    pub fn list_orgs(&self, actor: &Principal, q: &ListQuery) -> Result<Listing<OrgView>> {
        let db = self.lock_db();
        tidegate_policy::can_read_directory(actor, Self::org_kind(&db, &actor.org)?)?;
        let listing = page(
            &db,
            Select::new("SELECT t.created_at, t.id, t.name, t.kind FROM orgs t WHERE 1 = 1"),
            q,
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    OrgView {
                        id: r.get(1)?,
                        name: r.get(2)?,
                        kind: r.get(3)?,
                    },
                ))
            },
            |_| Ok(true),
            |(created, o)| (created.clone(), o.id.clone()),
        )?;
        Ok(Listing {
            items: listing.items.into_iter().map(|(_, o)| o).collect(),
            next: listing.next,
        })
    }

    /// Every principal, without secrets (the authority's admins and auditors).
    pub fn list_principals(
        &self,
        actor: &Principal,
        q: &ListQuery,
    ) -> Result<Listing<PrincipalView>> {
        let db = self.lock_db();
        tidegate_policy::can_read_directory(actor, Self::org_kind(&db, &actor.org)?)?;
        let listing = page(
            &db,
            Select::new("SELECT t.created_at, t.id, t.name FROM principals t WHERE 1 = 1"),
            q,
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
            |_| Ok(true),
            |(at, id, _)| (at.clone(), id.clone()),
        )?;
        let items = listing
            .items
            .into_iter()
            .map(|(_, id, name)| {
                let p = Self::principal_where(&db, "id", &id)?
                    .ok_or_else(|| Error::Internal(format!("principal {id} vanished")))?;
                Ok(PrincipalView {
                    id: p.id,
                    name,
                    org: p.org,
                    roles: p.roles.into_iter().collect(),
                    trained: p.trained,
                    token: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing {
            items,
            next: listing.next,
        })
    }
}
