//! Healing after a compromise: this device replaces its own leaf key in every chat (an MLS
//! commit with a fresh path), at least once per period and soon after the account loses a
//! device. Keys of this device that leaked before an update open none of the messages after it.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use sotto_core::mls;

use crate::db;
use crate::*;

/// How often each chat gets a fresh leaf key from this device, unless set otherwise.
pub const DEFAULT_HEAL_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// The shortest period that may be set (each update is a commit every member processes).
pub const MIN_HEAL_INTERVAL_SECS: u64 = 3600;
/// The longest.
pub const MAX_HEAL_INTERVAL_SECS: u64 = 90 * 24 * 3600;

const INTERVAL_SETTING: &str = "heal_interval_secs";
/// How long a chat whose update failed waits before the next try.
const HEAL_RETRY_MS: u64 = 10 * 60 * 1000;

/// What a round of key updates did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealReport {
    /// Chats (ids) where this device's leaf key was replaced.
    pub updated: Vec<String>,
    /// Chats where it could not be, with the reason (tried again later).
    pub failed: Vec<(String, String)>,
    /// Chats left for later because the server could not be reached.
    #[serde(default)]
    pub postponed: Vec<String>,
    /// The period between updates, seconds.
    pub interval_secs: u64,
}

impl Client {
    /// The period between this device's key updates in each chat, seconds.
    pub fn heal_interval(&self) -> Result<u64, Error> {
        Ok(db::setting(&self.conn, INTERVAL_SETTING)?.unwrap_or(DEFAULT_HEAL_INTERVAL_SECS))
    }

    /// Sets the period between key updates (between an hour and 90 days).
    pub fn set_heal_interval(&mut self, secs: u64) -> Result<(), Error> {
        if !(MIN_HEAL_INTERVAL_SECS..=MAX_HEAL_INTERVAL_SECS).contains(&secs) {
            return Err(Error::Invalid(format!(
                "the period between key updates must be between {} hour and {} days",
                MIN_HEAL_INTERVAL_SECS / 3600,
                MAX_HEAL_INTERVAL_SECS / 86_400
            )));
        }
        db::set_setting(&self.conn, INTERVAL_SETTING, secs)
    }

    /// When the next chat is due for a key update (Unix milliseconds), if any chat is active.
    pub(crate) fn heal_next_at(&self) -> Result<Option<u64>, Error> {
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(leaf_updated_at) FROM chats WHERE state = 'active'")?
            .query_row([], |r| r.get(0))?;
        let interval_ms = self.heal_interval()?.saturating_mul(1000);
        Ok(oldest.map(|t| (t.max(0) as u64).saturating_add(interval_ms)))
    }

    /// Makes every active chat due for a key update (the account lost a device).
    pub(crate) fn heal_soon(&self) -> Result<(), Error> {
        self.conn.execute("UPDATE chats SET leaf_updated_at = 0 WHERE state = 'active'", [])?;
        Ok(())
    }

    /// Replaces this device's leaf key in every active chat whose last update is older than the
    /// period (`all`: in every active chat, now). A chat that cannot be updated now (the
    /// server away, the epoch taken) stays due.
    pub fn heal(&mut self, all: bool) -> Result<HealReport, Error> {
        let interval = self.heal_interval()?;
        let due_before = if all {
            i64::MAX
        } else {
            self.now_ms().saturating_sub(interval.saturating_mul(1000)) as i64
        };
        let due: Vec<Vec<u8>> = {
            let mut stmt = self.conn.prepare(
                "SELECT group_id FROM chats WHERE state = 'active' AND leaf_updated_at <= ?1
                 ORDER BY leaf_updated_at",
            )?;
            let rows = stmt.query_map([due_before], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut report = HealReport { interval_secs: interval, ..HealReport::default() };
        // A chat that cannot be updated now is tried again in a while, not at once.
        let retry_at =
            (self.now_ms() + HEAL_RETRY_MS).saturating_sub(interval.saturating_mul(1000));
        let postpone = |conn: &rusqlite::Connection, group_id: &[u8]| {
            conn.execute(
                "UPDATE chats SET leaf_updated_at = MAX(leaf_updated_at, ?2) WHERE group_id = ?1",
                params![group_id, retry_at as i64],
            )
        };
        let mut away = false;
        for group_id in due {
            if away {
                postpone(&self.conn, &group_id)?;
                report.postponed.push(hex::encode(&group_id));
                continue;
            }
            let outcome = self
                .commit(&group_id, |p, me| Ok((mls::self_update(p, &group_id, me)?, Vec::new())));
            match outcome {
                Ok(()) => {
                    self.conn.execute(
                        "UPDATE chats SET leaf_updated_at = ?2 WHERE group_id = ?1",
                        params![group_id, self.now_ms() as i64],
                    )?;
                    report.updated.push(hex::encode(&group_id));
                }
                // Left or removed meanwhile: nothing to update.
                Err(Error::NotActive(_)) => {}
                Err(e @ (Error::Database(_) | Error::Revoked(_) | Error::Wiped(_))) => {
                    // Not tried again at once (a daemon would spin on a past due time).
                    let _ = postpone(&self.conn, &group_id);
                    return Err(e);
                }
                Err(e) => {
                    postpone(&self.conn, &group_id)?;
                    // The server being away, every other chat would fail the same way.
                    away = crate::outbox::transient(&e);
                    if away {
                        report.postponed.push(hex::encode(&group_id));
                    } else {
                        report.failed.push((hex::encode(&group_id), e.to_string()));
                    }
                }
            }
        }
        if all {
            // Key packages waiting on the server are replaced too: now if the server takes
            // them, else at the next sync.
            self.rotate_key_packages_soon()?;
            if let Err(e) = self.replenish_key_packages() {
                report.failed.push(("key packages".into(), e.to_string()));
            }
        }
        Ok(report)
    }

    /// This device's current leaf encryption key in a chat (it changes with each update).
    pub fn own_leaf_key(&self, chat: &str) -> Result<Vec<u8>, Error> {
        let group_id = self.resolve(chat)?;
        Ok(mls::own_leaf_key(&db::provider(&self.conn), &group_id)?)
    }
}
