//! The consistency check of a channel's keys: what no operation may leave behind, whole or
//! interrupted. The tests run it after every fault; an operator can run it on a quiet channel.
//!
//! It reads everything of the channel (bounded by [`MAX_CHECKED`] records), so it is meant for
//! tests and diagnosis, not for a hot path. While pushers run, a message can be between two
//! steps that are each atomic (leased but not yet recorded in `lease`), so run it when the
//! channel is idle.

use std::collections::{HashMap, HashSet};

use redis::Value;

use super::handle::{RedisStore, decode, strings};
use crate::message::{MessageRecord, Status};
use crate::store::StoreError;

/// Most records the check reads.
pub const MAX_CHECKED: usize = 200_000;

impl RedisStore {
    /// Runs `cmd` on the master that owns the channel's slot (a plain server runs it itself).
    async fn on_owner(&self, cmd: redis::Cmd) -> Result<Value, StoreError> {
        let r = match self.conn() {
            super::conn::Conn::Single(mut c) => cmd.query_async(&mut c).await,
            super::conn::Conn::Cluster(mut c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(&self.inner.stream, SlotAddr::Master),
                ));
                c.route_command(cmd, route).await
            }
        };
        r.map_err(|e| self.fail("check", &e))
    }

    /// The ids of a set, read whole with `ZRANGE`.
    async fn sorted_set(&self, key: &str) -> Result<HashSet<String>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.key(key)).arg(0).arg(-1);
        Ok(strings(self.on_owner(cmd).await?).into_iter().collect())
    }

    /// The value of a plain string key; `None` when it is missing.
    async fn get_string(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        Ok(strings(Value::Array(vec![self.on_owner(cmd).await?]))
            .into_iter()
            .next())
    }

    /// The stream entries pending in the consumer group.
    async fn pending_entries(&self) -> Result<HashSet<String>, StoreError> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.inner.stream)
            .arg(&self.inner.options.consumer_group)
            .arg("-")
            .arg("+")
            .arg(MAX_CHECKED);
        Ok(match self.on_owner(cmd).await? {
            Value::Array(items) => items
                .into_iter()
                .filter_map(|i| strings(i).into_iter().next())
                .collect(),
            _ => HashSet::new(),
        })
    }

    /// The last entry the group read (`0-0` when none or no group).
    async fn last_read(&self) -> Result<String, StoreError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.inner.stream);
        let groups: redis::streams::StreamInfoGroupsReply =
            redis::from_redis_value(self.on_owner(cmd).await?)
                .map_err(|e| StoreError::storage(format!("redis check: {e}"), e))?;
        Ok(groups
            .groups
            .into_iter()
            .find(|g| g.name == self.inner.options.consumer_group)
            .map_or_else(|| "0-0".to_string(), |g| g.last_delivered_id))
    }

    /// The message ids of the stream's live entries: pending in the group (`pel`) or not read
    /// yet (after `last_read`). Entries acknowledged but not yet trimmed are left out.
    async fn ids_in_stream(
        &self,
        pel: &HashSet<String>,
        last_read: &str,
    ) -> Result<HashSet<String>, StoreError> {
        let last = entry_order(last_read);
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&self.inner.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(MAX_CHECKED);
        let mut in_stream = HashSet::new();
        if let Value::Array(entries) = self.on_owner(cmd).await? {
            for e in entries {
                if let Value::Array(mut parts) = e
                    && parts.len() == 2
                {
                    let eid = strings(Value::Array(vec![parts[0].clone()]))
                        .pop()
                        .unwrap_or_default();
                    if !pel.contains(&eid) && entry_order(&eid) <= last {
                        continue;
                    }
                    let fields = strings(parts.remove(1));
                    for kv in fields.chunks_exact(2) {
                        if kv[0] == "id" {
                            in_stream.insert(kv[1].clone());
                        }
                    }
                }
            }
        }
        Ok(in_stream)
    }

    /// Reads the channel's indexes: the stream, its pending entries, the retry schedule, the
    /// dead-letter set and the leases.
    async fn indexes(&self) -> Result<Indexes, StoreError> {
        let pel = self.pending_entries().await?;
        let last_read = self.last_read().await?;
        let in_stream = self.ids_in_stream(&pel, &last_read).await?;
        let scheduled = self.sorted_set("d").await?;
        let dead = self.sorted_set("dead").await?;
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.key("lease"));
        let mut lease = HashMap::new();
        let mut started = HashSet::new();
        for kv in strings(self.on_owner(cmd).await?).chunks_exact(2) {
            match kv[0].strip_prefix("s:") {
                Some(id) => {
                    started.insert(id.to_string());
                }
                None => {
                    lease.insert(kv[0].clone(), kv[1].clone());
                }
            }
        }
        Ok(Indexes {
            pel,
            in_stream,
            scheduled,
            dead,
            lease,
            started,
        })
    }

    /// Finds state that no operation may leave: lease entries without a pending stream entry
    /// (or of a final message), pending messages in neither the stream nor the retry schedule,
    /// delivered messages without their msgid index or their place among the openid's
    /// delivered messages, dead letters outside the dead-letter set, and a pending count that
    /// disagrees with the records. Returns one sentence per finding; empty when consistent.
    pub async fn check_consistency(&self) -> Result<Vec<String>, StoreError> {
        let mut findings = Vec::new();
        let idx = self.indexes().await?;
        for (id, eid) in &idx.lease {
            if !idx.pel.contains(eid) {
                findings.push(format!(
                    "lease of {id} names stream entry {eid}, which is not pending"
                ));
            }
        }
        let pending = self.check_records(&idx, &mut findings).await?;
        let counted: u64 = self
            .get_string(&self.key("n"))
            .await?
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if counted != pending {
            findings.push(format!(
                "the pending count says {counted}, the records say {pending}"
            ));
        }
        Ok(findings)
    }

    /// Checks every record of the channel against `idx`, adding to `findings`. Returns how
    /// many records are pending (not final).
    async fn check_records(
        &self,
        idx: &Indexes,
        findings: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        let pattern = format!("{}m:*", escape_glob(&self.inner.base));
        let mut cursor = "0".to_string();
        let mut pending = 0u64;
        let mut seen = 0usize;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(&cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (String, Vec<String>) =
                redis::from_redis_value(self.on_owner(cmd).await?)
                    .map_err(|e| StoreError::storage(format!("redis check: {e}"), e))?;
            for key in keys {
                seen += 1;
                let Some(text) = self.get_string(&key).await?.filter(|t| !t.is_empty()) else {
                    continue;
                };
                let r = decode(text.as_bytes())?;
                if !r.status.is_final() {
                    pending += 1;
                }
                self.check_record(&r, idx, findings).await?;
            }
            if next == "0" || seen >= MAX_CHECKED {
                break;
            }
            cursor = next;
        }
        Ok(pending)
    }

    /// Checks one record against `idx`, adding to `findings`.
    async fn check_record(
        &self,
        r: &MessageRecord,
        idx: &Indexes,
        findings: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let id = r.id.to_string();
        if !r.status.is_final() {
            if !idx.in_stream.contains(&id) && !idx.scheduled.contains(&id) {
                findings.push(format!(
                    "{id} is {} but in neither the stream nor the retry schedule",
                    r.status.as_str()
                ));
            }
            return Ok(());
        }
        if idx.lease.contains_key(&id) {
            findings.push(format!("{id} is {} but still leased", r.status.as_str()));
        }
        if idx.started.contains(&id) {
            findings.push(format!(
                "{id} is {} but still has an attempt-started mark",
                r.status.as_str()
            ));
        }
        if r.dead_letter && !idx.dead.contains(&id) {
            findings.push(format!("{id} is a dead letter outside the dead-letter set"));
        }
        if r.status != Status::Delivered || !self.inner.options.event_indexes {
            return Ok(());
        }
        if let Some(m) = r.msgid.filter(|&m| m != 0) {
            let indexed = self.get_string(&self.key(&format!("x:{m}"))).await?;
            if indexed.as_ref() != Some(&id) {
                findings.push(format!("{id} is delivered without its msgid index"));
            }
        }
        if r.events.is_empty() {
            let mut cmd = redis::cmd("ZSCORE");
            cmd.arg(self.key(&format!("a:{}", r.message.touser)))
                .arg(&id);
            if matches!(self.on_owner(cmd).await?, Value::Nil) {
                findings.push(format!(
                    "{id} is delivered but not among its openid's delivered messages"
                ));
            }
        }
        Ok(())
    }
}

/// What the check compares the records with.
struct Indexes {
    /// Stream entry ids pending in the consumer group.
    pel: HashSet<String>,
    /// Message ids in the stream.
    in_stream: HashSet<String>,
    /// Message ids in the retry schedule.
    scheduled: HashSet<String>,
    /// Message ids in the dead-letter set.
    dead: HashSet<String>,
    /// Message id → the stream entry it is leased under.
    lease: HashMap<String, String>,
    /// Message ids with an attempt-started mark (`lease` field `s:<id>`).
    started: HashSet<String>,
}

/// A stream entry id (`<ms>-<seq>`) as a pair that orders like the entries.
fn entry_order(eid: &str) -> (u64, u64) {
    let (ms, seq) = eid.split_once('-').unwrap_or((eid, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// `s` with the glob characters of `SCAN MATCH` escaped.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
