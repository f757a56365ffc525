//! Plain records shared by the platform, the typed details of its audit entries and the
//! metering that replays them: no logic but their own.

use serde::{Deserialize, Serialize};

/// A scenario's grant of a dataset's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub dataset: String,
    pub columns: Vec<String>,
    /// The dataset version the grant is pinned to, set when the scenario becomes active: a
    /// new import does not reach a running authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// What a job used, as measured while it ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceUse {
    pub fuel: u64,
    pub guest_calls: u64,
    pub peak_guest_memory_bytes: u64,
    pub guest_output_bytes: u64,
    pub wall_ms: u64,
    /// CPU time of the job's own threads (query engine and guests).
    #[serde(default)]
    pub cpu_ms: u64,
    /// The most memory the query engine's operators reserved at once.
    #[serde(default)]
    pub peak_engine_memory_bytes: u64,
    /// Bytes of the gate's per-subject rows the job wrote sealed to disk (its budget was too
    /// small to hold them); 0 as a scientist sees a job over L2 or L3 data.
    #[serde(default)]
    pub spilled_bytes: u64,
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub output_bytes: u64,
}

impl ResourceUse {
    /// Raises each of the counts an executor records to `later`'s, where it is higher (a
    /// record only grows, whatever order its tasks end in).
    pub(crate) fn raise_to(&mut self, later: &ResourceUse) {
        self.fuel = self.fuel.max(later.fuel);
        self.guest_calls = self.guest_calls.max(later.guest_calls);
        self.guest_output_bytes = self.guest_output_bytes.max(later.guest_output_bytes);
        self.cpu_ms = self.cpu_ms.max(later.cpu_ms);
        self.peak_guest_memory_bytes = self
            .peak_guest_memory_bytes
            .max(later.peak_guest_memory_bytes);
    }

    /// These resources as the scientist of a job over data of `level` sees them and pays for
    /// them: [`ResourceUse::coarse`] over L2 or L3 data, exact over L1.
    pub fn shown_at(&self, level: tidegate_policy::Level) -> ResourceUse {
        if level > tidegate_policy::Level::L1 {
            self.coarse()
        } else {
            self.clone()
        }
    }

    /// What an executor's record `self` adds to its earlier record `was` (its counts only
    /// grow; the most memory a guest held is the later record's).
    pub(crate) fn beyond(&self, was: &ResourceUse) -> ResourceUse {
        ResourceUse {
            fuel: self.fuel.saturating_sub(was.fuel),
            guest_calls: self.guest_calls.saturating_sub(was.guest_calls),
            guest_output_bytes: self
                .guest_output_bytes
                .saturating_sub(was.guest_output_bytes),
            cpu_ms: self.cpu_ms.saturating_sub(was.cpu_ms),
            peak_guest_memory_bytes: self.peak_guest_memory_bytes,
            ..ResourceUse::default()
        }
    }

    /// Adds what a job's guests and tasks used elsewhere (on a cluster's executor): fuel,
    /// calls, output and CPU time add up; the most memory a guest held is the larger.
    pub(crate) fn add_executors(&mut self, there: &ResourceUse) {
        self.fuel = self.fuel.saturating_add(there.fuel);
        self.guest_calls = self.guest_calls.saturating_add(there.guest_calls);
        self.guest_output_bytes = self
            .guest_output_bytes
            .saturating_add(there.guest_output_bytes);
        self.cpu_ms = self.cpu_ms.saturating_add(there.cpu_ms);
        self.peak_guest_memory_bytes = self
            .peak_guest_memory_bytes
            .max(there.peak_guest_memory_bytes);
    }

    /// The resources of a job over L2 or L3 data as its scientist sees them and pays for
    /// them (R-GATE 7): fuel in units of 10^9 (about a second of guest work), times in whole
    /// seconds, memory in 64 MiB, the stored result in MiB, guest calls and rows scanned in
    /// thousands, each rounded up. Exact numbers could tell a value (a guest that loops as
    /// long as one subject's spend, a result as long as the groups that passed a filter).
    /// The audit log keeps the exact ones for the authority.
    pub fn coarse(&self) -> ResourceUse {
        let up = |v: u64, unit: u64| v.div_ceil(unit).saturating_mul(unit);
        const MIB64: u64 = 64 << 20;
        ResourceUse {
            fuel: up(self.fuel, 1_000_000_000),
            guest_calls: up(self.guest_calls, 1000),
            peak_guest_memory_bytes: up(self.peak_guest_memory_bytes, MIB64),
            guest_output_bytes: up(self.guest_output_bytes, MIB64),
            wall_ms: up(self.wall_ms, 1000),
            cpu_ms: up(self.cpu_ms, 1000),
            peak_engine_memory_bytes: up(self.peak_engine_memory_bytes, MIB64),
            // How much a job spilled follows its rows' sizes and how they group: shown over
            // L1 data only (the audit log keeps it).
            spilled_bytes: 0,
            rows_scanned: up(self.rows_scanned, 1000),
            bytes_scanned: up(self.bytes_scanned, MIB64),
            output_bytes: up(self.output_bytes, 1 << 20),
        }
    }
}
