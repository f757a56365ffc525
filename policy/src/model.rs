//! The nouns of the policy: roles, levels, column tags, states and the principal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::detect::SensitiveType;

/// What a principal may do; a principal may hold several.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Scientist,
    Admin,
    Reviewer,
    Provider,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Scientist,
        Role::Admin,
        Role::Reviewer,
        Role::Provider,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scientist => "scientist",
            Role::Admin => "admin",
            Role::Reviewer => "reviewer",
            Role::Provider => "provider",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role `{s}`: expected scientist, admin, reviewer, provider or auditor"
                )
            })
    }
}

/// Classification level of a dataset (DOMAIN.md section 2). A derived result carries the
/// highest level of its inputs.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Level {
    L1,
    L2,
    L3,
    L4,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "L1" => Ok(Level::L1),
            "L2" => Ok(Level::L2),
            "L3" => Ok(Level::L3),
            "L4" => Ok(Level::L4),
            _ => Err(format!("unknown level `{s}`: expected L1, L2, L3 or L4")),
        }
    }
}

/// Where a dataset comes from: a public body, or an operating unit's own ("social") data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Public,
    Social,
}

/// A column tag (DOMAIN.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ColumnTag {
    /// A direct identifier of the given type.
    Pii(SensitiveType),
    Quasi,
    Sensitive,
    /// The subject key used to count distinct subjects.
    Entity,
    /// Allowed as a group-by key in exports.
    Dimension,
}

impl fmt::Display for ColumnTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnTag::Pii(t) => write!(f, "pii:{}", t.as_str()),
            ColumnTag::Quasi => f.write_str("quasi"),
            ColumnTag::Sensitive => f.write_str("sensitive"),
            ColumnTag::Entity => f.write_str("entity"),
            ColumnTag::Dimension => f.write_str("dimension"),
        }
    }
}

impl FromStr for ColumnTag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quasi" => Ok(ColumnTag::Quasi),
            "sensitive" => Ok(ColumnTag::Sensitive),
            "entity" => Ok(ColumnTag::Entity),
            "dimension" => Ok(ColumnTag::Dimension),
            _ => match s.strip_prefix("pii:") {
                Some(t) => t.parse().map(ColumnTag::Pii),
                None => Err(format!(
                    "unknown tag `{s}`: expected pii:TYPE, quasi, sensitive, entity or dimension"
                )),
            },
        }
    }
}

impl From<ColumnTag> for String {
    fn from(t: ColumnTag) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for ColumnTag {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Parses a comma-separated tag list such as `pii:resident_id,entity`.
pub fn parse_tags(s: &str) -> Result<Vec<ColumnTag>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect()
}

/// The column types a dataset may declare. Written as text everywhere (API, CLI, stored
/// schemas): `utf8`, `int32`, `int64`, `float64`, `boolean`, `date32`, `timestamp`,
/// `timestamp(ms)`, `timestamptz`, `timestamptz(us, Asia/Shanghai)`, `decimal(12,2)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataType {
    Utf8,
    Int32,
    Int64,
    Float64,
    Boolean,
    Date32,
    /// An instant, counted in `unit`s from 1970-01-01T00:00:00 UTC; with a time zone (an IANA
    /// name or a fixed offset such as `+08:00`) it is shown in that zone, without one it is a
    /// wall-clock time.
    Timestamp {
        unit: TimeUnit,
        zone: Option<String>,
    },
    /// An exact decimal number: `precision` digits (1-38), `scale` of them after the point.
    Decimal {
        precision: u8,
        scale: u8,
    },
}

/// How finely a timestamp counts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    Second,
    Millisecond,
    Microsecond,
}

impl TimeUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Second => "s",
            TimeUnit::Millisecond => "ms",
            TimeUnit::Microsecond => "us",
        }
    }
}

impl DataType {
    /// The widest precision of a decimal.
    pub const MAX_DECIMAL_PRECISION: u8 = 38;

    /// A decimal type, checked: precision 1-38, scale at most the precision.
    pub fn decimal(precision: u8, scale: u8) -> Result<DataType, String> {
        if precision == 0 || precision > Self::MAX_DECIMAL_PRECISION {
            return Err(format!(
                "a decimal has 1 to {} digits, not {precision}",
                Self::MAX_DECIMAL_PRECISION
            ));
        }
        if scale > precision {
            return Err(format!(
                "a decimal of {precision} digits has at most {precision} after the point, not {scale}"
            ));
        }
        Ok(DataType::Decimal { precision, scale })
    }

    /// A timestamp type; a zone, if any, is a fixed offset (`+08:00`, `-05:30`, `Z`) or an
    /// IANA name (`Asia/Shanghai`, `UTC`): letters, digits and `/_+-:`, at most 64 bytes.
    pub fn timestamp(unit: TimeUnit, zone: Option<&str>) -> Result<DataType, String> {
        if let Some(z) = zone {
            let ok = !z.is_empty()
                && z.len() <= 64
                && z.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-:".contains(c));
            if !ok {
                return Err(
                    "a time zone is an offset such as +08:00 or a name such as Asia/Shanghai"
                        .into(),
                );
            }
        }
        Ok(DataType::Timestamp {
            unit,
            zone: zone.map(str::to_string),
        })
    }

    /// Dates and times: quasi-identifiers by nature, generalized by `month`.
    pub fn is_temporal(&self) -> bool {
        matches!(self, DataType::Date32 | DataType::Timestamp { .. })
    }
}

impl FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = "expected utf8, int32, int64, float64, boolean, date32, timestamp, \
                        timestamp(s|ms|us), timestamptz, timestamptz(UNIT, ZONE) or decimal(P,S)";
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        let (head, args) = match lower.find('(') {
            Some(open) if lower.ends_with(')') => (
                lower[..open].trim().to_string(),
                // Zone names keep their case.
                Some(&s[open + 1..s.len() - 1]),
            ),
            Some(_) => return Err(format!("unknown column type `{s}`: {expected}")),
            None => (lower.clone(), None),
        };
        let unit = |u: &str| match u.trim().to_ascii_lowercase().as_str() {
            "s" | "second" => Ok(TimeUnit::Second),
            "ms" | "millisecond" => Ok(TimeUnit::Millisecond),
            "us" | "µs" | "microsecond" => Ok(TimeUnit::Microsecond),
            other => Err(format!(
                "a timestamp counts s, ms or us, not `{other}` (nanoseconds are read as us)"
            )),
        };
        Ok(match (head.as_str(), args) {
            ("utf8" | "string" | "text", None) => DataType::Utf8,
            ("int32", None) => DataType::Int32,
            ("int64" | "integer", None) => DataType::Int64,
            ("float64" | "double", None) => DataType::Float64,
            ("boolean" | "bool", None) => DataType::Boolean,
            ("date32" | "date", None) => DataType::Date32,
            ("timestamp" | "datetime", None) => DataType::timestamp(TimeUnit::Microsecond, None)?,
            ("timestamp" | "datetime", Some(u)) => DataType::timestamp(unit(u)?, None)?,
            ("timestamptz", None) => DataType::timestamp(TimeUnit::Microsecond, Some("UTC"))?,
            ("timestamptz", Some(a)) => match a.split_once(',') {
                Some((u, zone)) => DataType::timestamp(unit(u)?, Some(zone.trim()))?,
                None => DataType::timestamp(unit(a)?, Some("UTC"))?,
            },
            ("decimal" | "numeric", Some(a)) => {
                let number = |t: &str| {
                    t.trim()
                        .parse::<u8>()
                        .map_err(|_| format!("`{s}`: decimal(PRECISION,SCALE) takes two numbers"))
                };
                match a.split_once(',') {
                    Some((p, sc)) => DataType::decimal(number(p)?, number(sc)?)?,
                    None => DataType::decimal(number(a)?, 0)?,
                }
            }
            _ => return Err(format!("unknown column type `{s}`: {expected}")),
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Utf8 => f.write_str("utf8"),
            DataType::Int32 => f.write_str("int32"),
            DataType::Int64 => f.write_str("int64"),
            DataType::Float64 => f.write_str("float64"),
            DataType::Boolean => f.write_str("boolean"),
            DataType::Date32 => f.write_str("date32"),
            DataType::Timestamp { unit, zone: None } => write!(f, "timestamp({})", unit.as_str()),
            DataType::Timestamp {
                unit,
                zone: Some(z),
            } => write!(f, "timestamptz({}, {z})", unit.as_str()),
            DataType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
        }
    }
}

impl TryFrom<String> for DataType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DataType> for String {
    fn from(t: DataType) -> String {
        t.to_string()
    }
}

/// One column of a dataset: its name, type and tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ColumnSpec {
    pub name: String,
    pub data_type: DataType,
    pub tags: Vec<ColumnTag>,
}

impl ColumnSpec {
    pub fn has_tag(&self, tag: ColumnTag) -> bool {
        self.tags.contains(&tag)
    }

    pub fn is_identifier(&self) -> bool {
        self.tags.iter().any(|t| matches!(t, ColumnTag::Pii(_)))
    }
}

/// Lifecycle of a scenario authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScenarioState {
    /// Written by its org, not yet submitted: nobody is asked to approve it.
    Draft,
    PendingApprovals,
    Active,
    Suspended,
    Expired,
    Revoked,
    /// Its org left the domain (R-EXIT); final.
    Exited,
}

impl ScenarioState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioState::Draft => "draft",
            ScenarioState::PendingApprovals => "pending_approvals",
            ScenarioState::Active => "active",
            ScenarioState::Suspended => "suspended",
            ScenarioState::Expired => "expired",
            ScenarioState::Revoked => "revoked",
            ScenarioState::Exited => "exited",
        }
    }
}

impl FromStr for ScenarioState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draft" => Ok(ScenarioState::Draft),
            "pending_approvals" => Ok(ScenarioState::PendingApprovals),
            "active" => Ok(ScenarioState::Active),
            "suspended" => Ok(ScenarioState::Suspended),
            "expired" => Ok(ScenarioState::Expired),
            "revoked" => Ok(ScenarioState::Revoked),
            "exited" => Ok(ScenarioState::Exited),
            _ => Err(format!("unknown scenario state `{s}`")),
        }
    }
}

/// Defines an enum stored and shown as text, with `ALL`, `as_str`, `FromStr` and `Display`: the
/// one spelling of each value, so a misspelt one cannot compile. Serde's form, if any, is the
/// caller's attribute.
macro_rules! text_states {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order written.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(concat!("unknown ", $what, " `{}`"), s)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_states! {
    /// Where an export is on its way out (R-EXPORT).
    #[derive(Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    ExportState, "export state" {
        /// Asked for; the gate has not answered yet.
        Submitted = "submitted",
        /// The gate passed it.
        Checked = "checked",
        /// Waiting for its reviewers.
        InReview = "in_review",
        /// Its reviewers approved it: its bundle may be downloaded.
        Approved = "approved",
        /// A reviewer sent it back for changes; a new request may amend it.
        Returned = "returned",
        /// The gate or a reviewer refused it; final.
        Rejected = "rejected",
        /// Its bundle was downloaded.
        Released = "released",
    }
}

text_states! {
    /// Where a job is.
    #[derive(Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    JobState, "job state" {
        /// Accepted, waiting for a worker.
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        /// Stopped by an error, a limit or the process's end.
        Failed = "failed",
        /// Stopped when its scientist (or a suspension) asked.
        Cancelled = "cancelled",
    }
}

text_states! {
    /// A reviewer's decision on an export.
    #[derive(Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    Decision, "decision" {
        Approve = "approve",
        Return = "return",
        Reject = "reject",
    }
}

text_states! {
    /// What an audit entry records: every action the platform logs, spelt once. The log stores
    /// its text (an entry of an action this build no longer writes is still read and verified).
    AuditAction, "audit action" {
        AlertAcknowledge = "alert.acknowledge",
        AlertRaise = "alert.raise",
        AuditPrune = "audit.prune",
        AuditSearch = "audit.search",
        DatasetApprove = "dataset.approve",
        DatasetBudget = "dataset.budget",
        DatasetImport = "dataset.import",
        DatasetDestroy = "dataset.destroy",
        DatasetMock = "dataset.mock",
        DatasetSample = "dataset.sample",
        DatasetSeal = "dataset.seal",
        DatasetUnseal = "dataset.unseal",
        ExportDownload = "export.download",
        ExportRequest = "export.request",
        ExportRead = "export.read",
        ExportReview = "export.review",
        JobDiscard = "job.discard",
        JobEnd = "job.end",
        JobRead = "job.read",
        JobStart = "job.start",
        JobUsage = "job.usage",
        KeysRotate = "keys.rotate",
        ModuleApprove = "module.approve",
        ModuleDownload = "module.download",
        ModuleRead = "module.read",
        ModuleRejected = "module.rejected",
        ModuleRevoke = "module.revoke",
        ModuleUpload = "module.upload",
        ModuleVerify = "module.verify",
        OrgAuthorization = "org.authorization",
        OrgCreate = "org.create",
        OrgEvaluate = "org.evaluate",
        OrgExit = "org.exit",
        OrgFreeze = "org.freeze",
        OrgUnfreeze = "org.unfreeze",
        PlatformInit = "platform.init",
        PolicyApply = "policy.apply",
        PriceSet = "price.set",
        PrincipalNewAddress = "principal.new_address",
        PrincipalCreate = "principal.create",
        PrincipalTokenRevoke = "principal.token.revoke",
        PrincipalTokenRotate = "principal.token.rotate",
        PrincipalTraining = "principal.training",
        ReportRead = "report.read",
        ScenarioApply = "scenario.apply",
        ScenarioApprove = "scenario.approve",
        ScenarioClose = "scenario.close",
        ScenarioRepin = "scenario.repin",
        ScenarioResume = "scenario.resume",
        ScenarioRevoke = "scenario.revoke",
        ScenarioSubmit = "scenario.submit",
        ScenarioSuspend = "scenario.suspend",
        SessionEnd = "session.end",
        SessionRefused = "session.refused",
        SessionStart = "session.start",
    }
}

impl AuditAction {
    /// Whether the action may change what the platform holds or shows. Reads, searches,
    /// sign-ins and samples do not; every other action does (a new action counts as a change
    /// until it is named here).
    pub fn changes_state(self) -> bool {
        !matches!(
            self,
            AuditAction::AuditSearch
                | AuditAction::DatasetMock
                | AuditAction::DatasetSample
                | AuditAction::ExportRead
                | AuditAction::JobRead
                | AuditAction::ModuleDownload
                | AuditAction::ModuleRead
                | AuditAction::ModuleVerify
                | AuditAction::PrincipalNewAddress
                | AuditAction::ReportRead
                | AuditAction::SessionEnd
                | AuditAction::SessionRefused
                | AuditAction::SessionStart
        )
    }
}

text_states! {
    /// What an alert is about (R-MONITOR).
    #[derive(Serialize, Deserialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    AlertKind, "alert kind" {
        /// Exports of one scenario with suppressed groups, many in a row.
        SuppressedGroups = "suppressed_groups",
        /// The gate found a release nearly identical to an earlier one (a differencing
        /// pattern) and refused or flagged it.
        Differencing = "differencing",
        /// A scenario has spent most of its privacy budget.
        Budget = "budget",
        /// Jobs that broke a limit, or failures that depend on the data, repeated.
        LimitBreaches = "limit_breaches",
        /// An uploaded module failed validation.
        ModuleInvalid = "module_invalid",
        /// An org was frozen.
        Freeze = "freeze",
        /// The audit log failed verification.
        AuditFailure = "audit_failure",
    }
}

/// When alerts are raised (R-MONITOR): policy, in the policy document.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertThresholds {
    /// Consecutive exports of a scenario with suppressed groups that raise an alert.
    pub suppressed_in_a_row: u64,
    /// The share of a scenario's privacy budget, in percent, whose spending raises an alert.
    pub budget_percent: u64,
    /// Limit breaches and data-dependent failures of a scenario (since an admin last resumed
    /// it) that raise an alert.
    pub breaches: u64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            suppressed_in_a_row: 3,
            budget_percent: 80,
            breaches: 2,
        }
    }
}

/// How long a training record holds when the admin names no end (S2).
pub const TRAINING_VALID_DAYS: i64 = 365;

/// How the gate desensitizes one output column before release (R-GATE 5). Written as text:
/// `mask`, `redact`, `pseudonymize`, `round:2`, `band:10`, `month`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Masking {
    /// The default mask of DOMAIN.md section 3 for the type detected in each value; a value
    /// of no detected type is starred out whole.
    Mask,
    /// The value is replaced by `***`.
    Redact,
    /// A keyed HMAC under the scenario's own key: equal values stay equal within the
    /// scenario, none can be recovered or enumerated without the key (a plain hash of a phone
    /// or ID number could).
    Pseudonymize,
    /// Generalization: a number rounded to this many decimals (coordinates to 2 decimals are
    /// about a kilometre).
    Round(u32),
    /// Generalization: a number replaced by its band of this width (`30-39` for 10).
    Band(u64),
    /// Generalization: a date (`YYYY-MM-DD...`) replaced by its month (`YYYY-MM`).
    Month,
}

impl Masking {
    /// Checks the rule's parameters.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Masking::Round(d) if *d > 6 => Err(format!(
                "round to {d} decimals generalizes nothing; at most 6"
            )),
            Masking::Band(0) => Err("a band is at least 1 wide".into()),
            _ => Ok(()),
        }
    }

    /// The generalized value for a generalization rule; `***` for a value the rule cannot read
    /// (never the value itself). `None` for the other rules.
    pub fn generalize(&self, value: &str) -> Option<String> {
        let number = || value.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let unreadable = || "***".to_string();
        Some(match self {
            Masking::Round(d) => number().map_or_else(unreadable, |v| {
                let f = 10f64.powi(*d as i32);
                format!("{:.*}", *d as usize, (v * f).round() / f)
            }),
            Masking::Band(w) => number().map_or_else(unreadable, |v| {
                let w = *w as i128;
                let low = (v.floor() as i128).div_euclid(w) * w;
                if w == 1 {
                    low.to_string()
                } else {
                    format!("{low}-{}", low + w - 1)
                }
            }),
            Masking::Month => {
                let b = value.as_bytes();
                let is_month = b.len() >= 7
                    && b[..4].iter().all(u8::is_ascii_digit)
                    && b[4] == b'-'
                    && b[5..7].iter().all(u8::is_ascii_digit)
                    && (b.len() == 7 || b[7] == b'-');
                if is_month {
                    value[..7].to_string()
                } else {
                    unreadable()
                }
            }
            Masking::Mask | Masking::Redact | Masking::Pseudonymize => return None,
        })
    }
}

impl fmt::Display for Masking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Masking::Mask => f.write_str("mask"),
            Masking::Redact => f.write_str("redact"),
            Masking::Pseudonymize => f.write_str("pseudonymize"),
            Masking::Round(d) => write!(f, "round:{d}"),
            Masking::Band(w) => write!(f, "band:{w}"),
            Masking::Month => f.write_str("month"),
        }
    }
}

impl From<Masking> for String {
    fn from(m: Masking) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Masking {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl FromStr for Masking {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = "expected mask, redact, pseudonymize, round:DECIMALS, band:WIDTH or month";
        let rule = match s.split_once(':') {
            None => match s {
                "mask" => Masking::Mask,
                "redact" => Masking::Redact,
                "pseudonymize" => Masking::Pseudonymize,
                "month" => Masking::Month,
                _ => return Err(format!("unknown masking `{s}`: {expected}")),
            },
            Some(("round", d)) => Masking::Round(
                d.parse()
                    .map_err(|_| format!("`{s}`: round takes a number of decimals"))?,
            ),
            Some(("band", w)) => Masking::Band(
                w.parse()
                    .map_err(|_| format!("`{s}`: band takes a width"))?,
            ),
            Some(_) => return Err(format!("unknown masking `{s}`: {expected}")),
        };
        rule.validate()?;
        Ok(rule)
    }
}

/// A scenario's export rules besides its threshold k (R-SCENARIO): masking by output column,
/// a differential privacy budget, and size limits tighter than the platform's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRules {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub masking: std::collections::BTreeMap<String, Masking>,
    /// Total epsilon the scenario may spend on noisy releases; none means no differential
    /// privacy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_budget: Option<f64>,
    /// Under differential privacy: each subject's contribution to one sum in one group is
    /// clamped to `[-b, b]`. Sums are not released without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution_bound: Option<f64>,
    /// Under differential privacy: a subject's rows counted in one group (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_bound: Option<u64>,
    /// Under differential privacy: the groups of one result a subject counts in (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_groups_per_subject: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// The dominance rules of exact releases, tightened by an admin (DOMAIN.md defaults:
    /// (2, 90%) and p = 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dominance: Option<crate::release::DominanceRule>,
    /// The query engine's memory for one job of the scenario, in MiB (default
    /// [`DEFAULT_JOB_MEMORY_MIB`]): the gate's per-subject work over a larger input is
    /// written sealed to disk rather than failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_memory_mib: Option<u64>,
    /// The most jobs the scenario may submit in any 24 hours (none: no quota but the queue's).
    /// Approved with the application, enforced when a job is submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_per_day: Option<u64>,
    /// The most CPU seconds the scenario's jobs may use in any 24 hours (none: no quota but
    /// each job's time limit). Approved with the application; a job starts only with some
    /// left and runs at most as long as what is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds_per_day: Option<u64>,
    /// The most guest fuel the scenario's jobs may burn in any 24 hours, in units of 10^9
    /// (about a second of guest work each). A job's fuel budget is at most what is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gigafuel_per_day: Option<u64>,
    /// The most job results the scenario keeps stored at once, in MiB: a job whose result
    /// would pass it keeps nothing; a scientist frees room by discarding results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_mib: Option<u64>,
    /// The figures of the scenario's released products appear in the public record (S19),
    /// signed, beside their titles. Approved with the application; each export request
    /// records it, so its reviewers know that approving publishes the rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_figures: bool,
}

/// The most a scenario's daily job quota may be.
pub const MAX_JOBS_PER_DAY: u64 = 100_000;
/// The most a scenario's daily CPU, fuel (in 10^9) and storage (MiB) quotas may be.
pub const MAX_CPU_SECONDS_PER_DAY: u64 = 86_400 * 64;
pub const MAX_GIGAFUEL_PER_DAY: u64 = 100_000_000;
pub const MAX_STORAGE_MIB: u64 = 16 << 20;

/// What a scenario has used of its quotas: jobs submitted, CPU and fuel used by the jobs that
/// ended in the last 24 hours (as their scientists see them: over L2 or L3 data rounded up),
/// and the bytes of the job results it keeps now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUse {
    pub jobs: u64,
    pub cpu_ms: u64,
    pub fuel: u64,
    pub stored_bytes: u64,
}

/// A job's engine memory when the scenario names none.
pub const DEFAULT_JOB_MEMORY_MIB: u64 = 2048;
/// The least and the most engine memory a scenario may give its jobs.
pub const JOB_MEMORY_MIB_RANGE: std::ops::RangeInclusive<u64> = 64..=16384;

impl ExportRules {
    /// The engine memory of one job of the scenario, in bytes.
    pub fn job_memory_bytes(&self) -> u64 {
        // Within the range whatever wrote the rules (every door validates them too).
        let mib = self
            .job_memory_mib
            .unwrap_or(DEFAULT_JOB_MEMORY_MIB)
            .clamp(*JOB_MEMORY_MIB_RANGE.start(), *JOB_MEMORY_MIB_RANGE.end());
        mib << 20
    }

    /// The dominance rules a release of the scenario is checked against.
    pub fn dominance_rule(&self) -> crate::release::DominanceRule {
        self.dominance.unwrap_or_default()
    }

    /// The contribution bounds a job of the scenario runs under, when it uses differential
    /// privacy.
    pub fn contribution_bounds(&self) -> Option<crate::privacy::ContributionBounds> {
        self.privacy_budget
            .map(|_| crate::privacy::ContributionBounds {
                sum_bound: self.contribution_bound,
                count_bound: self.count_bound.unwrap_or(1),
                max_groups: self.max_groups_per_subject.unwrap_or(1),
            })
    }
}

/// The kinds of org (SPEC.md): the data authority (admins, its review and audit offices),
/// the providers of data, and the operating units that compute on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrgKind {
    Authority,
    Provider,
    Operator,
}

impl OrgKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Authority => "authority",
            OrgKind::Provider => "provider",
            OrgKind::Operator => "operator",
        }
    }
}

impl std::str::FromStr for OrgKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "authority" => Ok(OrgKind::Authority),
            "provider" => Ok(OrgKind::Provider),
            "operator" => Ok(OrgKind::Operator),
            other => Err(format!(
                "an org's kind is authority, provider or operator, not `{other}`"
            )),
        }
    }
}

/// An authenticated principal as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub org: String,
    pub roles: Vec<Role>,
    pub trained: bool,
    /// The principal's org is frozen by the authority (R-MONITOR): it acts on nothing until
    /// the freeze is lifted.
    #[serde(default)]
    pub frozen: bool,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[cfg(test)]
mod masking_tests {
    use super::*;

    #[test]
    fn masking_rules_read_and_write_as_text_and_check_their_parameters() {
        for text in [
            "mask",
            "redact",
            "pseudonymize",
            "round:2",
            "band:10",
            "month",
        ] {
            let rule: Masking = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Masking>(&json).unwrap(), rule);
        }
        let refusals = [
            ("band:0", "a band is at least 1 wide"),
            ("round:9", "at most 6"),
            ("round:x", "round takes a number of decimals"),
            ("hash", "unknown masking `hash`"),
        ];
        for (text, reason) in refusals {
            let err = text.parse::<Masking>().unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
        assert!(serde_json::from_str::<Masking>("\"band:0\"").is_err());
    }

    #[test]
    fn a_band_covers_its_width_and_a_unit_band_is_the_integer() {
        assert_eq!(
            Masking::Band(10).generalize("39.9").as_deref(),
            Some("30-39")
        );
        assert_eq!(Masking::Band(5).generalize("0").as_deref(), Some("0-4"));
        assert_eq!(Masking::Band(1).generalize("7.5").as_deref(), Some("7"));
        assert_eq!(Masking::Band(10).generalize("NaN").as_deref(), Some("***"));
        assert_eq!(Masking::Mask.generalize("x"), None);
    }
}

/// Types written as strings (`into = "String"`) are strings in the API's schema too.
macro_rules! string_schema {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($what))
                    .into()
            }
        }
        impl utoipa::ToSchema for $t {}
    )*};
}

string_schema!(
    ColumnTag => "a column tag: entity, dimension, quasi, sensitive, pii:TYPE (DOMAIN.md section 2)",
    DataType => "a column type: utf8, int64, float64, bool, date, timestamp[(UNIT[, ZONE])], timestamptz, decimal(P,S)",
    Masking => "a masking rule: mask, redact, pseudonymize, round:N, band:N, month",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_spelt_once_and_read_back_as_itself() {
        let mut seen = std::collections::HashSet::new();
        for a in AuditAction::ALL {
            assert!(seen.insert(a.as_str()), "{} twice", a.as_str());
            assert_eq!(a.as_str().parse::<AuditAction>(), Ok(*a));
        }
        assert!("export.approve".parse::<AuditAction>().is_err());
    }
}
