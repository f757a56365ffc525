//! Training and traceability (S2, S15): a principal's own training state, the log searched by
//! the authority's auditors, and the reads and addresses the log records.

use super::*;

/// A principal's training as they may always read it, trained or not.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainingState {
    pub principal: String,
    pub org: String,
    pub roles: Vec<Role>,
    /// The course last passed, if any.
    pub course: Option<String>,
    pub trained_at: Option<String>,
    /// The last day the training holds (none: it does not expire, as the bootstrap admin's).
    pub valid_until: Option<String>,
    /// Whether it holds today: without it the principal can do nothing but read this.
    pub current: bool,
}

/// What an auditor searches the log by; every field narrows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries whose actor is a principal of this org, or whose object is the org or one of
    /// its scenarios.
    pub org: Option<String>,
    /// Entries whose actor is this principal.
    pub principal: Option<String>,
    /// Entries of this action (`job.start`, `session.refused`, ...).
    pub action: Option<String>,
    /// From this time on (RFC 3339, or a date YYYY-MM-DD: from its start).
    pub from: Option<String>,
    /// Up to this time (RFC 3339, or a date YYYY-MM-DD: to its end).
    pub to: Option<String>,
    /// At most this many entries, the newest (1-1000, 200 by default).
    pub limit: Option<usize>,
}

/// The entries a search found, oldest first, and how many matched in all.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditSearch {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<crate::audit::AuditEntry>,
    pub matched: usize,
}

/// How long a logged read covers the same principal's further reads of the same object.
const READ_LOGGED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);
/// The most reads (and addresses) remembered before the old ones are forgotten.
const MAX_READS_REMEMBERED: usize = 100_000;

/// The window of refused sign-ins from one address summed in one entry.
const REFUSALS_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// The new addresses of one principal logged in a day.
const MAX_NEW_ADDRESSES_A_DAY: i64 = 50;

/// An address as the log groups it: an IPv4 address whole, an IPv6 address by its /64 (one
/// host picks among 2^64 of those freely).
fn address_group(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Ok(v4) => v4.to_string(),
        Err(_) => "unreadable".into(),
    }
}

/// The most entries one search returns.
const MAX_SEARCH: usize = 1000;

impl Platform {
    /// A principal's own training state (the one thing an untrained principal may read).
    pub fn training_state(&self, actor: &Principal) -> Result<TrainingState> {
        let db = self.lock_db();
        let (course, trained_at, until): (Option<String>, Option<String>, Option<String>) = db
            .query_row(
                "SELECT training, trained_at, training_until FROM principals WHERE id = ?1",
                params![actor.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
        Ok(TrainingState {
            principal: actor.id.clone(),
            org: actor.org.clone(),
            roles: actor.roles.clone(),
            course,
            trained_at,
            valid_until: until,
            current: actor.trained,
        })
    }

    /// S15: the authority's auditors and admins search the verified log by org, principal,
    /// action and time. The search is itself audited.
    pub fn search_audit(&self, actor: &Principal, q: &AuditQuery) -> Result<AuditSearch> {
        // With an org: its principals (actors) and the org with its scenarios (objects).
        let members: Option<(BTreeSet<String>, BTreeSet<String>)> = {
            let db = self.lock_db();
            tidegate_policy::can_search_audit(actor, Self::org_kind(&db, &actor.org)?)?;
            match &q.org {
                Some(org) => {
                    let org = Self::org_id(&db, org)?;
                    let actors = db
                        .prepare("SELECT id FROM principals WHERE org_id = ?1")?
                        .query_map(params![org], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut objects: BTreeSet<String> = db
                        .prepare("SELECT id FROM scenarios WHERE org_id = ?1")?
                        .query_map(params![org], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    objects.insert(org);
                    Some((actors, objects))
                }
                None => None,
            }
        };
        if let Some(action) = &q.action {
            action
                .parse::<tidegate_policy::AuditAction>()
                .map_err(Error::BadInput)?;
        }
        use time::OffsetDateTime;
        use time::format_description::well_known::Rfc3339;
        // Times compared as instants, whatever offset a bound is written in.
        let bound = |t: &Option<String>, end: bool| -> Result<Option<OffsetDateTime>> {
            t.as_deref()
                .map(|t| {
                    if let Ok(date) = parse_date(t) {
                        // A date stands for its whole day (UTC, as the log's times are).
                        return Ok(if end {
                            date.with_hms_nano(23, 59, 59, 999_999_999)
                                .expect("a time of day")
                                .assume_utc()
                        } else {
                            date.midnight().assume_utc()
                        });
                    }
                    OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
                        Error::BadInput(format!(
                            "`{t}` is neither a date YYYY-MM-DD nor an RFC 3339 time"
                        ))
                    })
                })
                .transpose()
        };
        let (from, to) = (bound(&q.from, false)?, bound(&q.to, true)?);
        let limit = q.limit.unwrap_or(200);
        if !(1..=MAX_SEARCH).contains(&limit) {
            return Err(Error::BadInput(format!("limit is from 1 to {MAX_SEARCH}")));
        }
        let key = hex::decode(self.signer.public_key_hex())
            .map_err(|_| Error::Internal("public key encoding".into()))?;
        let found: Vec<crate::audit::AuditEntry> =
            crate::audit::read_verified(self.audit.path(), Some(&key))?
                .into_iter()
                .filter(|e| {
                    let at = OffsetDateTime::parse(&e.at, &Rfc3339).ok();
                    members
                        .as_ref()
                        .is_none_or(|(a, o)| a.contains(&e.actor) || o.contains(&e.object))
                        && q.principal.as_ref().is_none_or(|p| &e.actor == p)
                        && q.action.as_ref().is_none_or(|a| &e.action == a)
                        && from.is_none_or(|f| at.is_some_and(|at| at >= f))
                        && to.is_none_or(|t| at.is_some_and(|at| at <= t))
                })
                .collect();
        let matched = found.len();
        let entries = found[matched.saturating_sub(limit)..].to_vec();
        self.audit.append(
            &actor.id,
            crate::audit::Action::AuditSearch,
            "audit",
            crate::audited::AuditSearch {
                query: serde_json::to_value(q)?,
                matched,
            }
            .to_value(),
        )?;
        Ok(AuditSearch { entries, matched })
    }

    /// S15: a read of something the log must show who saw (a preview, a job, a module, a
    /// report): logged the first time a principal reads the object in an hour (a client
    /// polling a job is one read, not hundreds). A read whose entry cannot be made durable
    /// does not happen.
    pub fn record_read(
        &self,
        actor: &Principal,
        action: tidegate_policy::AuditAction,
        object: &str,
    ) -> Result<()> {
        let key = (actor.id.clone(), action.as_str(), object.to_string());
        let now = Instant::now();
        {
            let mut logged = self
                .reads_logged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if logged
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < READ_LOGGED_FOR)
            {
                return Ok(());
            }
            if logged.len() >= MAX_READS_REMEMBERED {
                logged.retain(|_, at| now.duration_since(*at) < READ_LOGGED_FOR);
                if logged.len() >= MAX_READS_REMEMBERED {
                    // Forgetting logs a read again: never fewer entries, only more.
                    logged.clear();
                }
            }
        }
        self.audit.append(
            &actor.id,
            action,
            object,
            crate::audited::value(&crate::audited::Nothing {}),
        )?;
        self.reads_logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, now);
        Ok(())
    }

    /// S15: a token used from an address its principal never used before is logged, once per
    /// address. `address` is the peer's IP address as the server saw it.
    pub fn note_address(&self, actor: &Principal, address: &str) -> Result<()> {
        let address = address_group(address);
        let key = (actor.id.clone(), address.clone());
        if self
            .addresses_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key)
        {
            return Ok(());
        }
        let db = self.lock_db();
        let tx = db.unchecked_transaction()?;
        // A principal's new addresses are logged up to a cap a day (a token spread over many
        // addresses is visible long before the cap; past it, the log is not its to fill).
        let today_count: i64 = tx.query_row(
            "SELECT count(*) FROM principal_addresses WHERE principal_id = ?1 AND first_seen >= ?2",
            params![actor.id, format!("{}T00:00:00Z", today())],
            |r| r.get(0),
        )?;
        if today_count >= MAX_NEW_ADDRESSES_A_DAY {
            return Ok(());
        }
        let new = tx.execute(
            "INSERT OR IGNORE INTO principal_addresses (principal_id, address, first_seen)
             VALUES (?1, ?2, ?3)",
            params![actor.id, address, crate::now_rfc3339()],
        )? == 1;
        if new {
            self.audit.append(
                &actor.id,
                crate::audit::Action::PrincipalNewAddress,
                &actor.id,
                crate::audited::PrincipalNewAddress {
                    address: address.to_string(),
                }
                .to_value(),
            )?;
        }
        tx.commit()?;
        let mut seen = self
            .addresses_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_READS_REMEMBERED {
            seen.clear();
        }
        seen.insert(key);
        Ok(())
    }

    /// S15: a refused sign-in (an unknown or closed token) is logged, with where it came from
    /// and nothing of the token: the first from an address at once, then at most one entry a
    /// minute per address counting the refusals since (a flood of guesses is a few entries,
    /// not one each).
    pub fn note_refused_sign_in(&self, address: Option<&str>) -> Result<()> {
        let key = address
            .map(address_group)
            .unwrap_or_else(|| "unknown".into());
        let now = Instant::now();
        let refusals = {
            let mut refused = self
                .refused_sign_ins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if refused.len() >= MAX_READS_REMEMBERED {
                refused.retain(|_, (at, _)| now.duration_since(*at) < REFUSALS_WINDOW);
                if refused.len() >= MAX_READS_REMEMBERED {
                    refused.clear();
                }
            }
            match refused.get_mut(&key) {
                Some((at, n)) if now.duration_since(*at) < REFUSALS_WINDOW => {
                    *n += 1;
                    return Ok(());
                }
                Some((at, n)) => {
                    let since = *n + 1;
                    (*at, *n) = (now, 0);
                    since
                }
                None => {
                    refused.insert(key.clone(), (now, 0));
                    1
                }
            }
        };
        self.audit.append(
            "anonymous",
            crate::audit::Action::SessionRefused,
            "console",
            crate::audited::SessionRefused {
                address: key.to_string(),
                refusals,
            }
            .to_value(),
        )?;
        Ok(())
    }
}
