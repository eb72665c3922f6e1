//! Leasing from the stream: new entries, due retries, entries idle past `claimIdle`, and the
//! pending entries of consumers whose heartbeat expired; and finding the message a delivery
//! event is about.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use redis::Value;

use super::conn::{self};
use super::handle::{
    HEARTBEAT_EVERY, RedisStore, TAKE_OVER_AT_MOST, consumer_names, decode, ms, strings,
};
use crate::message::MessageRecord;
use crate::store::{DeliveryEvent, Leased, MatchedBy, StoreError, millis};

/// Puts the attempt-started mark of a lease (`mark`: the time, '' for none) into `record`, as
/// the embedded store's `started` table does: the first attempt started then, and its outcome
/// is not known. A record that already holds a start (written whole by an older version of the
/// store) keeps it.
pub(super) fn with_start_mark(record: &mut MessageRecord, mark: &str) -> Result<(), StoreError> {
    if mark.is_empty() || record.first_attempt_at.is_some() {
        return Ok(());
    }
    let at: Timestamp = mark.parse().map_err(|e| {
        StoreError::Storage(format!("redis lease: bad attempt-started mark {mark:?}: {e}").into())
    })?;
    record.first_attempt_at = Some(at);
    record.budget_from = at;
    record.updated_at = at;
    Ok(())
}

impl RedisStore {
    pub(super) async fn lease_once(&self, max: usize) -> Result<Vec<Leased>, StoreError> {
        let now = Instant::now();
        let idle = self.inner.options.claim_idle;
        let claim = {
            let mut last = self.inner.last_claim.lock();
            let every = (idle / 4).max(Duration::from_millis(50));
            if last.is_none_or(|t| now.duration_since(t) >= every) {
                *last = Some(now);
                ms(idle).max(1)
            } else {
                0
            }
        };
        let check_dead = {
            let mut last = self.inner.last_dead_check.lock();
            let due = last.is_none_or(|t| now.duration_since(t) >= HEARTBEAT_EVERY);
            if due {
                *last = Some(now);
            }
            due
        };
        if check_dead {
            // All of a dead consumer's entries at once, whatever room the dispatcher has now:
            // the rest wait here (kept alive), ahead of new work.
            let got = self.claim_dead(TAKE_OVER_AT_MOST).await?;
            let mut buffered = self.inner.taken_over.lock();
            let mut leases = self.inner.leases.lock();
            for pair in got.chunks_exact(2) {
                leases.insert(pair[1].clone(), pair[0].clone());
                buffered.push_back((pair[0].clone(), pair[1].clone()));
            }
        }
        let mut entries = Vec::new();
        {
            let mut buffered = self.inner.taken_over.lock();
            while entries.len() / 3 < max {
                let Some((eid, id)) = buffered.pop_front() else {
                    break;
                };
                // Taken over from a dead pod: it may have started the first attempt.
                entries.extend([eid, id, "1".to_string()]);
            }
        }
        let room = max.saturating_sub(entries.len() / 3);
        let flat = if entries.is_empty() && room > 0 && self.conn().is_single() {
            self.lease_in_one(room, claim).await?
        } else {
            if room > 0 {
                entries.extend(self.lease_read(room, claim).await?);
            }
            self.take(&entries).await?
        };
        let mut leased = Vec::with_capacity(flat.len() / 3);
        for pair in flat.chunks_exact(3) {
            let mut record = decode(pair[1].as_bytes())?;
            with_start_mark(&mut record, &pair[2])?;
            self.inner
                .leases
                .lock()
                .insert(record.id.to_string(), pair[0].clone());
            let slot = pair[0]
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let unrecorded = self
                .inner
                .unrecorded
                .lock()
                .remove(&record.id)
                .map(|(_, r)| Box::new(r));
            leased.push(Leased {
                record,
                slot,
                unrecorded,
            });
        }
        Ok(self.ok(leased))
    }

    /// The keys and arguments of [`scripts::lease_read`] and [`scripts::lease_one`] (which
    /// also takes the key base and declares `lease`).
    fn read_call(&self, count: usize, claim: u64, one: bool) -> (Vec<String>, Vec<String>) {
        let o = &self.inner.options;
        let cursor = self.inner.claim_cursor.lock().clone();
        let mut keys = vec![
            self.inner.stream.clone(),
            self.key("d"),
            self.key("deadt"),
            self.key("dead"),
        ];
        let mut args = vec![
            o.consumer_group.clone(),
            o.consumer.clone(),
            count.to_string(),
            millis(Timestamp::now()).to_string(),
            claim.to_string(),
            ms(o.retention).to_string(),
            cursor,
        ];
        if one {
            keys.push(self.key("lease"));
            args.push(self.inner.base.clone());
        }
        (keys, args)
    }

    /// A whole lease in one script, on a single Redis server ([`scripts::lease_one`]): up to
    /// `count` entries. Returns (entry id, record JSON, attempt-started mark or '', ...).
    async fn lease_in_one(&self, count: usize, claim: u64) -> Result<Vec<String>, StoreError> {
        let (keys, args) = self.read_call(count, claim, true);
        let script = &self.inner.scripts.lease_one;
        let out = match self.script::<Value>(script, &keys, &args).await {
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.create_group().await?;
                self.script(script, &keys, &args).await
            }
            r => r,
        }
        .map_err(|e| self.fail("lease", &e))?;
        let mut flat = strings(out).into_iter();
        if let Some(next) = flat.next() {
            *self.inner.claim_cursor.lock() = next;
        }
        Ok(flat.collect())
    }

    /// The first half of a lease ([`scripts::lease_read`]): up to `count` entries, now in this
    /// consumer's pending list, as (entry id, message id, whether an attempt-started mark may
    /// exist ('1' or '0'), ...).
    pub(super) async fn lease_read(
        &self,
        count: usize,
        claim: u64,
    ) -> Result<Vec<String>, StoreError> {
        let (keys, args) = self.read_call(count, claim, false);
        let out = match self
            .script::<Value>(&self.inner.scripts.lease_read, &keys, &args)
            .await
        {
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.create_group().await?;
                self.script(&self.inner.scripts.lease_read, &keys, &args)
                    .await
            }
            r => r,
        }
        .map_err(|e| self.fail("lease", &e))?;
        let mut flat = strings(out).into_iter();
        if let Some(next) = flat.next() {
            *self.inner.claim_cursor.lock() = next;
        }
        Ok(flat.collect())
    }

    /// The second half of a lease: `entries` (entry id, message id, '1' to look for an
    /// attempt-started mark, ...) are in this consumer's
    /// pending list; reads their records and records the leases ([`scripts::lease_take`]).
    /// Returns (entry id, record JSON, attempt-started mark or '', ...).
    pub(super) async fn take(&self, entries: &[String]) -> Result<Vec<String>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys = vec![self.inner.stream.clone(), self.key("lease")];
        let mut args = vec![self.inner.options.consumer_group.clone()];
        for e in entries.chunks_exact(3) {
            keys.push(self.key(&format!("m:{}", e[1])));
            args.extend_from_slice(e);
        }
        let out: Value = self
            .script(&self.inner.scripts.lease_take, &keys, &args)
            .await
            .map_err(|e| self.fail("lease", &e))?;
        Ok(strings(out))
    }

    /// Takes over the leases of consumers whose heartbeat expired (a pod that died), at once
    /// rather than after `claimIdle`, and deletes such consumers once they hold nothing.
    /// Returns (entry id, message id, ...) now pending for this consumer.
    pub(super) async fn claim_dead(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let o = &self.inner.options;
        let infos: Value = match conn::retrying(|| {
            let mut conn = self.conn();
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("CONSUMERS")
                .arg(&self.inner.stream)
                .arg(&o.consumer_group);
            async move { cmd.query_async::<Value>(&mut conn).await }
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %conn::clean(&e), "cannot list the group's consumers");
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for name in consumer_names(infos) {
            if name == o.consumer || out.len() / 2 >= max {
                continue;
            }
            let keys = [
                self.inner.stream.clone(),
                self.key("lease"),
                self.key(&format!("hb:{name}")),
            ];
            let args = [
                o.consumer_group.clone(),
                o.consumer.clone(),
                name.clone(),
                max.saturating_sub(out.len() / 2).max(1).to_string(),
            ];
            let answer: Value = self
                .script(&self.inner.scripts.claim_dead, &keys, &args)
                .await
                .map_err(|e| self.fail("claim", &e))?;
            let mut answer = strings(answer).into_iter();
            match answer.next().as_deref() {
                Some("claimed") => {
                    let got: Vec<String> = answer.collect();
                    tracing::info!(consumer = %name, entries = got.len() / 2, "took over the leases of a pusher whose heartbeat expired");
                    out.extend(got);
                }
                Some("deleted") => {
                    tracing::info!(consumer = %name, "removed a dead pusher's consumer from the group");
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Looks for the message an event is about: through the msgid index, else (when
    /// `fallback`) the most recent delivered message to the openid with no event yet.
    pub(super) async fn find_for_event(
        &self,
        event: &DeliveryEvent,
        fallback: bool,
    ) -> Result<Option<(String, MatchedBy, String)>, StoreError> {
        let b = &self.inner.base;
        let mut conn = self.conn();
        if event.msgid != 0 {
            let id: Option<String> = redis::cmd("GET")
                .arg(format!("{b}x:{}", event.msgid))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("GET", &e))?;
            if let Some(id) = id {
                let rec: Option<String> = redis::cmd("GET")
                    .arg(format!("{b}m:{id}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.fail("GET", &e))?;
                if let Some(rec) = rec {
                    return Ok(Some((id, MatchedBy::Msgid, rec)));
                }
            }
        }
        if !fallback {
            return Ok(None);
        }
        let akey = format!("{b}a:{}", event.openid);
        for _ in 0..8 {
            let last: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&akey)
                .arg(0)
                .arg(0)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("ZREVRANGE", &e))?;
            let Some(id) = last.into_iter().next() else {
                return Ok(None);
            };
            let rec: Option<String> = redis::cmd("GET")
                .arg(format!("{b}m:{id}"))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("GET", &e))?;
            match rec {
                Some(rec) => return Ok(Some((id, MatchedBy::OpenidFallback, rec))),
                None => {
                    // Gone with the retention: forget it and look at the next one.
                    let _: Result<i64, _> = redis::cmd("ZREM")
                        .arg(&akey)
                        .arg(&id)
                        .query_async(&mut conn)
                        .await;
                }
            }
        }
        Ok(None)
    }
}
