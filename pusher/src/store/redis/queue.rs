//! The [`Store`] operations of the Redis store: each is one script (or a short pipeline) on
//! the channel's slot. About 500 lines because it is the one `impl Store` block, one method per
//! operation of the trait; the leasing, the outcome writes (`outcome.rs`) and the background
//! work live beside it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use redis::Value;

use super::conn::{self};
use super::handle::{CALLBACK_POLL, MAX_POLL, RedisStore, cb_args, decode, encode, ms, strings};
use super::lease::with_start_mark;
use crate::message::{MessageId, MessageRecord, Status};
use crate::store::{
    AcceptItem, Accepted, CallbackKey, DeadLetterPage, DeliveryEvent, EventOutcome, Leased,
    PendingCallback, QueueCounts, Store, StoreError, apply_event, millis, reset_for_replay,
};

/// The field of (`openid`, `template_id`) in the `credits` hash (a newline cannot occur in
/// either: both refuse control characters).
fn credit_field(openid: &str, template_id: &str) -> String {
    format!("{openid}\n{template_id}")
}

impl Store for RedisStore {
    async fn add_credits(
        &self,
        openid: &str,
        template_id: &str,
        count: u64,
    ) -> Result<u64, StoreError> {
        let cmd = redis::cmd("HINCRBY")
            .arg(self.key("credits"))
            .arg(credit_field(openid, template_id))
            .arg(count)
            .clone();
        let n: u64 = conn::retrying(|| {
            let mut c = self.conn();
            let cmd = cmd.clone();
            async move { cmd.query_async(&mut c).await }
        })
        .await
        .map_err(|e| self.fail("add_credits", &e))?;
        Ok(self.ok(n))
    }

    async fn credits(&self, openid: &str, template_id: &str) -> Result<u64, StoreError> {
        let n: Option<u64> = redis::cmd("HGET")
            .arg(self.key("credits"))
            .arg(credit_field(openid, template_id))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("credits", &e))?;
        Ok(self.ok(n.unwrap_or(0)))
    }

    async fn take_credit(&self, openid: &str, template_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .script(
                &self.inner.scripts.take_credit,
                &[self.key("credits")],
                &[credit_field(openid, template_id)],
            )
            .await
            .map_err(|e| self.fail("take_credit", &e))?;
        Ok(self.ok(n == 1))
    }

    async fn accept(&self, items: Vec<AcceptItem>) -> Result<Vec<Accepted>, StoreError> {
        self.check_open()?;
        let now = Timestamp::now();
        let mut keys = vec![self.inner.stream.clone(), self.key("n")];
        let mut args = vec![
            self.inner.options.max_messages.to_string(),
            items.len().to_string(),
        ];
        for item in items {
            let key = item.idempotency_key.clone().unwrap_or_default();
            let mut record =
                MessageRecord::new(MessageId::new(), item.message, item.idempotency_key, now);
            if record.idempotency_key.is_some() {
                record.request_digest = item.request_digest;
            }
            keys.push(self.key(&format!("i:{key}")));
            keys.push(self.key(&format!("m:{}", record.id)));
            args.push(key);
            args.push(record.request_digest.clone().unwrap_or_default());
            args.push(record.id.to_string());
            args.push(encode(&record)?);
        }
        // A key seen before: the script asks for the first message's record to be declared
        // too (it cannot know that id in advance), and runs again with it.
        let mut flat;
        let mut rounds = 0;
        loop {
            let out: Value = self
                .script(&self.inner.scripts.accept, &keys, &args)
                .await
                .map_err(|e| self.fail("accept", &e))?;
            flat = strings(out);
            if flat.first().map(String::as_str) != Some("declare") || rounds > 2 {
                break;
            }
            rounds += 1;
            for first in &flat[1..] {
                keys.push(self.key(&format!("m:{first}")));
            }
        }
        match flat.first().map(String::as_str) {
            Some("full") => {
                let pending = flat.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
                return Err(StoreError::Full {
                    pending,
                    max: self.inner.options.max_messages,
                    retry_after: Duration::from_secs(1),
                });
            }
            Some("reused") => {
                return Err(StoreError::KeyReused(
                    flat.get(1).cloned().unwrap_or_default(),
                ));
            }
            Some("ok") => {}
            _ => {
                return Err(StoreError::Storage(
                    "redis accept: unexpected answer".into(),
                ));
            }
        }
        let mut results = Vec::with_capacity(flat.len() / 3);
        let mut fresh = false;
        for t in flat[1..].chunks_exact(3) {
            let id: MessageId = t[0].parse().map_err(|_| {
                StoreError::Storage(format!("redis accept: bad id {}", t[0]).into())
            })?;
            let status: Status = serde_json::from_value(serde_json::Value::String(t[1].clone()))
                .unwrap_or(Status::Queued);
            let duplicate = t[2] == "1";
            fresh |= !duplicate;
            results.push(Accepted {
                id,
                status,
                duplicate,
            });
        }
        self.wait_replicas().await?;
        if fresh {
            self.inner.work.notify_waiters();
        }
        Ok(self.ok(results))
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Leased>, StoreError> {
        self.check_open()?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut poll = Duration::from_millis(5);
        loop {
            let notified = self.inner.work.notified();
            let got = self.lease_once(max).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.min(now + poll)) => {}
            }
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    async fn complete(&self, _slot: u64, record: MessageRecord) -> Result<(), StoreError> {
        self.complete_records(vec![record])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StoreError::Storage("redis complete: no answer".into())))
    }

    async fn complete_many(&self, items: Vec<(u64, MessageRecord)>) -> Vec<Result<(), StoreError>> {
        self.complete_records(items.into_iter().map(|(_, r)| r).collect())
            .await
    }

    async fn start_attempt(&self, leased: &Leased, at: Timestamp) -> Result<(), StoreError> {
        self.start_attempts_of(&[leased], at)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(StoreError::Storage("redis start attempt: no answer".into())))
    }

    async fn start_attempts(
        &self,
        leased: &[&Leased],
        at: Timestamp,
    ) -> Vec<Result<(), StoreError>> {
        self.start_attempts_of(leased, at).await
    }

    async fn get(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let b = &self.inner.base;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(format!("{b}m:{id}"))
            .cmd("HMGET")
            .arg(format!("{b}lease"))
            .arg(id.to_string())
            .arg(format!("s:{id}"));
        let (rec, (leased, mark)): (Option<String>, (Option<String>, Option<String>)) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("get", &e))?;
        let mut record = rec.map(|r| decode(r.as_bytes())).transpose()?;
        if let Some(r) = record.as_mut()
            && !r.status.is_final()
        {
            with_start_mark(r, mark.as_deref().unwrap_or_default())?;
            if leased.is_some() {
                r.status = Status::Sending;
            }
        }
        Ok(self.ok(record))
    }

    async fn dead_letters(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<DeadLetterPage, StoreError> {
        let b = &self.inner.base;
        let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(format!("{b}dead"))
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.saturating_add(1))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("dead letters", &e))?;
        let more = ids.len() > limit;
        let mut items = Vec::new();
        if limit > 0 && !ids.is_empty() {
            let keys: Vec<String> = ids
                .iter()
                .take(limit)
                .map(|id| format!("{b}m:{id}"))
                .collect();
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("GET").arg(k);
            }
            let recs: Vec<Option<String>> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail("dead letters", &e))?;
            for r in recs.into_iter().flatten() {
                items.push(decode(r.as_bytes())?);
            }
        }
        let next = if more {
            ids.get(limit.saturating_sub(1))
                .and_then(|s| s.parse().ok())
        } else {
            None
        };
        Ok(self.ok(DeadLetterPage { items, next }))
    }

    async fn replay(&self, id: MessageId) -> Result<MessageRecord, StoreError> {
        self.check_open()?;
        let b = &self.inner.base;
        let rec: Option<String> = redis::cmd("GET")
            .arg(format!("{b}m:{id}"))
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("replay", &e))?;
        let mut record = match rec {
            None => return Err(StoreError::NotFound(id)),
            Some(r) => decode(r.as_bytes())?,
        };
        if !record.dead_letter {
            return Err(StoreError::NotDeadLetter(id));
        }
        let now = Timestamp::now();
        if let Some(exp) = record.message.expires_at
            && exp <= now
        {
            return Err(StoreError::PastExpiry(id, exp));
        }
        reset_for_replay(&mut record, now);
        let idem = record.idempotency_key.clone().unwrap_or_default();
        let keys = [
            self.inner.stream.clone(),
            self.key("n"),
            self.key("dead"),
            self.key("deadt"),
            self.key(&format!("m:{id}")),
            self.key(&format!("i:{idem}")),
        ];
        let args = [
            id.to_string(),
            encode(&record)?,
            self.inner.options.max_messages.to_string(),
            idem,
        ];
        let out: Value = self
            .script(&self.inner.scripts.replay, &keys, &args)
            .await
            .map_err(|e| self.fail("replay", &e))?;
        let flat = strings(out);
        match flat.first().map(String::as_str) {
            Some("ok") => {
                self.inner.work.notify_waiters();
                Ok(self.ok(record))
            }
            Some("full") => Err(StoreError::Full {
                pending: flat.get(1).and_then(|p| p.parse().ok()).unwrap_or(0),
                max: self.inner.options.max_messages,
                retry_after: Duration::from_secs(1),
            }),
            _ => Err(StoreError::NotDeadLetter(id)),
        }
    }

    async fn record_recall(&self, id: MessageId, at: Timestamp) -> Result<Timestamp, StoreError> {
        self.check_open()?;
        let key = self.key(&format!("m:{id}"));
        // Read, change, write if unchanged: an event may change the record meanwhile.
        for _ in 0..16 {
            let old: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail("recall", &e))?;
            let Some(old) = old else {
                return Err(StoreError::NotFound(id));
            };
            let mut record = decode(old.as_bytes())?;
            let receipt = record.receipt.get_or_insert_default();
            if let Some(first) = receipt.recalled_at {
                return Ok(self.ok(first));
            }
            receipt.recalled_at = Some(at);
            let new = encode(&record)?;
            let out: String = self
                .script(
                    &self.inner.scripts.recall,
                    std::slice::from_ref(&key),
                    &[old, new],
                )
                .await
                .map_err(|e| self.fail("recall", &e))?;
            if out == "ok" {
                return Ok(self.ok(at));
            }
        }
        Err(StoreError::Storage(
            "the message's record kept changing; the recall was not recorded".into(),
        ))
    }

    async fn record_event(
        &self,
        event: DeliveryEvent,
        fallback: bool,
    ) -> Result<EventOutcome, StoreError> {
        self.check_open()?;
        let b = &self.inner.base;
        let seen = format!("s:{}:{}:{}", event.openid, event.create_time, event.msgid);
        for _ in 0..16 {
            let exists: bool = redis::cmd("EXISTS")
                .arg(format!("{b}{seen}"))
                .query_async(&mut self.conn())
                .await
                .map_err(|e| self.fail("event", &e))?;
            if exists {
                return Ok(self.ok(EventOutcome::Duplicate));
            }
            let Some((id, by, old)) = self.find_for_event(&event, fallback).await? else {
                return Ok(self.ok(EventOutcome::Unmatched));
            };
            let mut record = decode(old.as_bytes())?;
            let had_events = !record.events.is_empty();
            let outcome = apply_event(&mut record, &event, by);
            if outcome == EventOutcome::Duplicate {
                return Ok(self.ok(outcome));
            }
            let now = Timestamp::now();
            let cb = if matches!(outcome, EventOutcome::Applied { .. }) {
                self.callback_for(&record, now)
            } else {
                None
            };
            let (cb_id, cb_due, cb_json) = cb_args(cb.as_ref())?;
            let keys = [
                self.key(&seen),
                self.key(&format!("m:{id}")),
                self.key(&format!("a:{}", event.openid)),
                self.key("cb"),
                self.key("cbd"),
            ];
            let args = [
                id.clone(),
                old.clone(),
                encode(&record)?,
                if had_events { "0" } else { "1" }.to_string(),
                ms(self.inner.options.retention).max(1).to_string(),
                cb_id,
                cb_due.to_string(),
                cb_json,
            ];
            let answer: String = self
                .script(&self.inner.scripts.event, &keys, &args)
                .await
                .map_err(|e| self.fail("event", &e))?;
            match answer.as_str() {
                "ok" => return Ok(self.ok(outcome)),
                "dup" => return Ok(self.ok(EventOutcome::Duplicate)),
                _ => continue,
            }
        }
        Err(StoreError::Storage(
            "redis event: the message kept changing; try again".into(),
        ))
    }

    async fn lease_callbacks(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<PendingCallback>, StoreError> {
        self.check_open()?;
        let deadline = tokio::time::Instant::now() + wait;
        let visibility = ms(self.inner.options.claim_idle).max(1000);
        loop {
            let keys = [self.key("cb"), self.key("cbd")];
            let args = [
                millis(Timestamp::now()).to_string(),
                max.to_string(),
                visibility.to_string(),
            ];
            let out: Value = self
                .script(&self.inner.scripts.lease_callbacks, &keys, &args)
                .await
                .map_err(|e| self.fail("lease callbacks", &e))?;
            let mut due = Vec::new();
            for t in strings(out).chunks_exact(3) {
                let Ok(id) = ulid::Ulid::from_string(&t[0]) else {
                    continue;
                };
                let due_ms = t[1].parse::<f64>().unwrap_or(0.0) as u64;
                match serde_json::from_str::<PendingCallback>(&t[2]) {
                    Ok(mut cb) => {
                        cb.key = CallbackKey { due_ms, id: id.0 };
                        due.push(cb);
                    }
                    Err(e) => tracing::warn!(error = %e, "undecodable pending callback skipped"),
                }
            }
            if !due.is_empty() {
                return Ok(self.ok(due));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(self.ok(Vec::new()));
            }
            tokio::time::sleep_until(deadline.min(now + CALLBACK_POLL)).await;
        }
    }

    async fn finish_callback(
        &self,
        key: CallbackKey,
        next: Option<(Timestamp, u32)>,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        let b = &self.inner.base;
        let id = ulid::Ulid(key.id).to_string();
        let (due, js) = match next {
            None => (String::new(), String::new()),
            Some((at, attempts)) => {
                let old: Option<String> = redis::cmd("HGET")
                    .arg(format!("{b}cbd"))
                    .arg(&id)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(|e| self.fail("finish callback", &e))?;
                let Some(old) = old else {
                    return Ok(());
                };
                let mut cb: PendingCallback = serde_json::from_str(&old)
                    .map_err(|e| StoreError::storage(format!("decode callback: {e}"), e))?;
                cb.attempts = attempts;
                (millis(at).to_string(), encode(&cb)?)
            }
        };
        let keys = [self.key("cb"), self.key("cbd")];
        let args = [id, due, js];
        let _: i64 = self
            .script(&self.inner.scripts.finish_callback, &keys, &args)
            .await
            .map_err(|e| self.fail("finish callback", &e))?;
        self.ok(());
        Ok(())
    }

    fn counts(&self) -> QueueCounts {
        self.inner.snapshot.lock().counts
    }

    fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed) && !self.inner.closed.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        // Writes are answered as they happen: nothing is buffered. Leases this process still
        // holds (attempts abandoned by the drain) are handed back to the stream for another
        // pod, and this consumer leaves the group. When Redis cannot be reached, they stay in
        // its pending list and are taken over once its heartbeat expires.
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.work.notify_waiters();
        let o = &self.inner.options;
        let keys = [
            self.inner.stream.clone(),
            self.key("lease"),
            self.key(&format!("hb:{}", o.consumer)),
        ];
        let args = [o.consumer_group.clone(), o.consumer.clone()];
        match self
            .script::<i64>(&self.inner.scripts.hand_back, &keys, &args)
            .await
        {
            Ok(n) => {
                tracing::info!(handed_back = n, consumer = %o.consumer, "left the consumer group")
            }
            Err(e) => {
                tracing::warn!(error = %conn::clean(&e), "cannot hand back the leases; another pusher takes them over once this one's heartbeat expires")
            }
        }
        self.inner.leases.lock().clear();
    }
}
