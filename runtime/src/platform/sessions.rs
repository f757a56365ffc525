//! Console sessions: a principal's token exchanged once for a session the browser keeps in a
//! cookie. Only the session secret's hash is stored; a session ends when it expires, when its
//! holder signs out, or when the token it was opened with is rotated or revoked (it is bound to
//! that token's hash), and the org's freeze applies to it as to the token.

use super::*;

/// How long a console session lasts after sign-in.
pub const SESSION_SECONDS: i64 = 8 * 3600;

/// A console session as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    /// The session's CSRF token: every form of the console carries it, every post must.
    pub csrf: String,
    /// When it ends (Unix seconds).
    pub expires_at: i64,
}

fn unix_now() -> i64 {
    crate::clock::unix_now()
}

impl Platform {
    /// Opens a console session for the holder of `token`: returns the session's secret (the
    /// cookie's value, given once; only its hash is kept) and the session. Audited.
    pub fn sign_in(&self, token: &str) -> Result<(String, Session)> {
        let principal = self.authenticate(token)?;
        let secret = crate::crypto::random_token();
        let csrf = crate::crypto::random_token();
        let expires_at = unix_now() + SESSION_SECONDS;
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO sessions (id_hash, principal_id, token_hash, csrf, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                hash_token(&secret),
                principal.id,
                hash_token(token),
                csrf,
                crate::now_rfc3339(),
                expires_at
            ],
        )?;
        self.audit.append(
            &principal.id,
            crate::audit::Action::SessionStart,
            &principal.id,
            crate::audited::SessionStart { expires_at }.to_value(),
        )?;
        tx.commit()?;
        Ok((
            secret,
            Session {
                principal,
                csrf,
                expires_at,
            },
        ))
    }

    /// The session whose secret is `secret`, with its principal as it is now; an expired,
    /// ended or unknown session, or one whose token was rotated, is unauthenticated.
    pub fn session(&self, secret: &str) -> Result<Session> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found: Option<(String, String, i64)> = db
            .query_row(
                "SELECT s.principal_id, s.csrf, s.expires_at FROM sessions s
                 JOIN principals p ON p.id = s.principal_id AND p.token_hash = s.token_hash
                 WHERE s.id_hash = ?1 AND s.ended_at IS NULL AND s.expires_at > ?2",
                params![hash_token(secret), unix_now()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((principal, csrf, expires_at)) = found else {
            return Err(Error::Unauthenticated(
                "the session has ended: sign in again".into(),
            ));
        };
        let principal = Self::principal_where(&db, "id", &principal)?
            .ok_or_else(|| Error::Unauthenticated("the session has ended: sign in again".into()))?;
        Ok(Session {
            principal,
            csrf,
            expires_at,
        })
    }

    /// Ends the session whose secret is `secret` (signing out). Audited; ending an ended
    /// session changes nothing.
    pub fn sign_out(&self, secret: &str) -> Result<()> {
        let db = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = db.unchecked_transaction()?;
        let principal: Option<String> = tx
            .query_row(
                "UPDATE sessions SET ended_at = ?2 WHERE id_hash = ?1 AND ended_at IS NULL
                 RETURNING principal_id",
                params![hash_token(secret), crate::now_rfc3339()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(principal) = principal {
            self.audit.append(
                &principal,
                crate::audit::Action::SessionEnd,
                &principal,
                crate::audited::SessionEnd {}.to_value(),
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}
