//! Who is in the domain: orgs, principals and their tokens, training, and authenticating a
//! request's token.

use super::*;

impl Platform {
    /// Resolves a bearer token to its principal.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::principal_where(&db, "token_hash", &hash_token(token))?
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked token".into()))
    }

    /// The principal whose `key` column (`id` or `token_hash`) is `value`, as it is now:
    /// roles, training, and whether its org is frozen.
    pub(super) fn principal_where(
        db: &Connection,
        key: &'static str,
        value: &str,
    ) -> Result<Option<Principal>> {
        let row = db
            .query_row(
                &format!(
                    "SELECT id, org_id, roles, trained_at,
                            EXISTS (SELECT 1 FROM settings WHERE key = 'frozen:' || org_id),
                            training_until
                     FROM principals WHERE {key} = ?1"
                ),
                params![value],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, bool>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, org, roles, trained, frozen, until)) = row else {
            return Ok(None);
        };
        // S2: a training counts only to its last day.
        let until = until.as_deref().map(parse_date).transpose()?;
        let trained = tidegate_policy::training_holds(trained.is_some(), until, today());
        Ok(Some(Principal {
            id,
            org,
            roles: roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(|r| r.parse().map_err(Error::Integrity))
                .collect::<Result<_>>()?,
            trained,
            frozen,
        }))
    }

    /// An org's kind, by its id.
    pub(super) fn org_kind(db: &Connection, org: &str) -> Result<tidegate_policy::OrgKind> {
        let kind: String = db
            .query_row("SELECT kind FROM orgs WHERE id = ?1", params![org], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("org {org}")))?;
        kind.parse().map_err(Error::Integrity)
    }

    /// R-ONBOARD: an admin closes a principal's token (the old one stops at once) and hands
    /// out a new one; a principal rotates its own. Returns the new token, shown once.
    pub fn rotate_token(&self, actor: &Principal, principal: &str) -> Result<String> {
        if actor.id != principal {
            tidegate_policy::require_role(actor, Role::Admin)?;
        } else {
            // A frozen org acts on nothing; its leaked token is the admin's to revoke.
            tidegate_policy::require_not_frozen(actor)?;
        }
        let token = random_token();
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An exited org's tokens stay closed: no rotation opens one again.
        let exited: Option<Option<String>> = db
            .query_row(
                "SELECT o.exited_at FROM principals p JOIN orgs o ON o.id = p.org_id WHERE p.id = ?1",
                params![principal],
                |r| r.get(0),
            )
            .optional()?;
        match exited {
            None => return Err(Error::NotFound(format!("principal {principal}"))),
            Some(Some(_)) => {
                return Err(Error::Refused(
                    "the principal's org has exited: its tokens stay closed".into(),
                ));
            }
            Some(None) => {}
        }
        let tx = db.transaction()?;
        let n = tx.execute(
            "UPDATE principals SET token_hash = ?2 WHERE id = ?1",
            params![principal, hash_token(&token)],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("principal {principal}")));
        }
        self.audit.append(
            &actor.id,
            if actor.id == principal {
                crate::audit::Action::PrincipalTokenRotate
            } else {
                crate::audit::Action::PrincipalTokenRevoke
            },
            principal,
            crate::audited::value(&crate::audited::Nothing {}),
        )?;
        tx.commit()?;
        Ok(token)
    }

    pub fn create_org(&self, actor: &Principal, name: &str, kind: &str) -> Result<OrgView> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        let _: tidegate_policy::OrgKind = kind.parse().map_err(Error::BadInput)?;
        tidegate_policy::check_name("the org's name", name)
            .map_err(|r| Error::BadInput(r.reason))?;
        let id = new_id("org");
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO orgs (id, name, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, kind, crate::now_rfc3339()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Error::BadInput(format!("an org named {name} already exists"))
            }
            e => e.into(),
        })?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::OrgCreate,
            &id,
            crate::audited::OrgCreate {
                name: name.to_string(),
                kind: kind.to_string(),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(OrgView {
            id,
            name: name.into(),
            kind: kind.into(),
        })
    }

    pub(super) fn org_id(db: &Connection, name_or_id: &str) -> Result<String> {
        db.query_row(
            "SELECT id FROM orgs WHERE id = ?1 OR name = ?1",
            params![name_or_id],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("org {name_or_id}")))
    }

    pub fn create_principal(
        &self,
        actor: &Principal,
        name: &str,
        org: &str,
        roles: &[Role],
    ) -> Result<PrincipalView> {
        tidegate_policy::require_role(actor, Role::Admin)?;
        tidegate_policy::check_name("the principal's name", name)
            .map_err(|r| Error::BadInput(r.reason))?;
        let id = new_id("p");
        let token = random_token();
        let roles_text = roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let org_id = Self::org_id(&db, org)?;
        // R-SOD: roles tied to the kind of org, and no pair of roles that checks itself.
        tidegate_policy::can_hold_roles(Self::org_kind(&db, &org_id)?, roles)?;
        let exited: Option<String> = db.query_row(
            "SELECT exited_at FROM orgs WHERE id = ?1",
            params![org_id],
            |r| r.get(0),
        )?;
        if exited.is_some() {
            return Err(Error::Refused(format!(
                "the org {org_id} has exited: it gets no new principals"
            )));
        }
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO principals (id, name, org_id, roles, trained_at, training, token_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5, ?6)",
            params![
                id,
                name,
                org_id,
                roles_text,
                hash_token(&token),
                crate::now_rfc3339()
            ],
        )?;
        self.audit.append(
            &actor.id,
            crate::audit::Action::PrincipalCreate,
            &id,
            crate::audited::PrincipalCreate {
                org: org_id.to_string(),
                roles: roles_text,
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(PrincipalView {
            id,
            name: name.into(),
            org: org_id,
            roles: roles.to_vec(),
            trained: false,
            token: Some(token),
        })
    }

    /// R-ONBOARD: an admin records that a principal passed training, valid for a year.
    pub fn record_training(&self, actor: &Principal, principal: &str, course: &str) -> Result<()> {
        self.record_training_until(actor, principal, course, None)
    }

    /// S2: an admin records that a principal passed a course, valid to its last day `until`
    /// (YYYY-MM-DD; a year when none is named). Without a current training a principal can do
    /// nothing but read their own training state.
    pub fn record_training_until(
        &self,
        actor: &Principal,
        principal: &str,
        course: &str,
        until: Option<&str>,
    ) -> Result<()> {
        tidegate_policy::can_record_training(actor, principal)?;
        tidegate_policy::check_course(course).map_err(|r| Error::BadInput(r.reason))?;
        let until =
            tidegate_policy::training_valid_until(until.map(parse_date).transpose()?, today())
                .map_err(|r| Error::BadInput(r.reason))?
                .to_string();
        let mut db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.transaction()?;
        let n = tx.execute(
            "UPDATE principals SET trained_at = ?2, training = ?3, training_until = ?4 WHERE id = ?1",
            params![principal, crate::now_rfc3339(), course, until],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!("principal {principal}")));
        }
        self.audit.append(
            &actor.id,
            crate::audit::Action::PrincipalTraining,
            principal,
            crate::audited::PrincipalTraining {
                course: course.to_string(),
                valid_until: until.to_string(),
            }
            .to_value(),
        )?;
        tx.commit()?;
        Ok(())
    }

    // ----- Import -----
}
