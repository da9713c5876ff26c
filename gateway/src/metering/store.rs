//! The durable side of metering: hourly buckets in `data_dir/usage.sqlite3` (SQLite, WAL,
//! `synchronous=FULL`), added to by each flush and read by `GET /admin/usage`.

use super::{Key, Totals};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub const FILE: &str = "usage.sqlite3";
/// Most rows one query answers; a range with more gets a clear error instead.
pub const MAX_ROWS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// What rows of `GET /admin/usage` are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Function,
    Tenant,
    Service,
}

impl Group {
    pub fn parse(s: &str) -> Option<Group> {
        match s {
            "function" => Some(Group::Function),
            "tenant" => Some(Group::Tenant),
            "service" => Some(Group::Service),
            _ => None,
        }
    }

    fn column(self) -> &'static str {
        match self {
            Group::Function => "service || '/' || function",
            Group::Tenant => "tenant",
            Group::Service => "service",
        }
    }
}

/// One hour's totals for one group (and GPU type: GPU-GB-seconds of different card types are
/// not added together).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRow {
    pub hour: i64,
    pub key: String,
    pub gpu_type: Option<String>,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS usage (
                hour INTEGER NOT NULL,
                service TEXT NOT NULL,
                function TEXT NOT NULL,
                tenant TEXT NOT NULL,
                gpu_type TEXT NOT NULL,
                invocations INTEGER NOT NULL,
                busy_s REAL NOT NULL,
                vcpu_s REAL NOT NULL,
                memory_gb_s REAL NOT NULL,
                gpu_gb_s REAL NOT NULL,
                reserved_s REAL NOT NULL,
                PRIMARY KEY (hour, service, function, tenant, gpu_type)
            ) WITHOUT ROWID;",
        )?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a batch of bucket deltas in one transaction (all or nothing).
    pub fn add(&self, batch: &HashMap<Key, Totals>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO usage (hour, service, function, tenant, gpu_type, invocations,
                    busy_s, vcpu_s, memory_gb_s, gpu_gb_s, reserved_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (hour, service, function, tenant, gpu_type) DO UPDATE SET
                    invocations = invocations + excluded.invocations,
                    busy_s = busy_s + excluded.busy_s,
                    vcpu_s = vcpu_s + excluded.vcpu_s,
                    memory_gb_s = memory_gb_s + excluded.memory_gb_s,
                    gpu_gb_s = gpu_gb_s + excluded.gpu_gb_s,
                    reserved_s = reserved_s + excluded.reserved_s",
            )?;
            for (k, t) in batch {
                st.execute(params![
                    k.hour,
                    k.service,
                    k.function,
                    k.tenant,
                    k.gpu_type,
                    t.invocations as i64,
                    t.busy_s,
                    t.vcpu_s,
                    t.memory_gb_s,
                    t.gpu_gb_s,
                    t.reserved_s
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Hourly totals of buckets starting in `[from_hour, to)`, by hour then group; at most
    /// `MAX_ROWS + 1` rows (more than `MAX_ROWS` means the range is too wide).
    pub fn query(
        &self,
        from_hour: i64,
        to: i64,
        group: Group,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let conn = self.lock();
        let sql = format!(
            "SELECT hour, {col} AS k, gpu_type, SUM(invocations), SUM(busy_s), SUM(vcpu_s),
                    SUM(memory_gb_s), SUM(gpu_gb_s), SUM(reserved_s)
             FROM usage WHERE hour >= ?1 AND hour < ?2
             GROUP BY hour, k, gpu_type ORDER BY hour, k, gpu_type LIMIT ?3",
            col = group.column()
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map(params![from_hour, to, (MAX_ROWS + 1) as i64], |r| {
            let gpu: String = r.get(2)?;
            Ok(UsageRow {
                hour: r.get(0)?,
                key: r.get(1)?,
                gpu_type: (!gpu.is_empty()).then_some(gpu),
                totals: Totals {
                    invocations: r.get::<_, i64>(3)? as u64,
                    busy_s: r.get(4)?,
                    vcpu_s: r.get(5)?,
                    memory_gb_s: r.get(6)?,
                    gpu_gb_s: r.get(7)?,
                    reserved_s: r.get(8)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
