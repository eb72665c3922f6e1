//! Writing what happened to leased messages: their outcomes ([`scripts::complete`]) and the
//! "attempt started" records before their first send ([`scripts::start_attempt`]). The
//! dispatcher hands over the messages of a lease, or the outcomes that ended together, at
//! once; each group becomes one script call (chunks of [`BATCH_AT_MOST`], sent concurrently
//! on the one multiplexed connection), not one round trip per message. Each message is still
//! answered on its own.
//!
//! [`scripts::complete`]: super::scripts::complete
//! [`scripts::start_attempt`]: super::scripts::start_attempt

use std::time::Instant;

use futures::future::join_all;
use jiff::Timestamp;
use redis::Value;

use super::handle::{RedisStore, UNRECORDED_KEPT, cb_args, encode, ms, strings};
use crate::message::{MessageRecord, Status};
use crate::store::{Leased, StoreError, due_millis, each_failed, millis, wants_callback};

/// Most messages in one script call: a script blocks Redis while it runs, so a long lease
/// is written in several calls (a few milliseconds each at most).
const BATCH_AT_MOST: usize = 128;

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

impl RedisStore {
    /// Records the outcomes of `records` (leased by this process), one answer each, in order.
    pub(super) async fn complete_records(
        &self,
        records: Vec<MessageRecord>,
    ) -> Vec<Result<(), StoreError>> {
        if let Err(e) = self.check_open() {
            return each_failed(records.len(), e);
        }
        let mut chunks = Vec::new();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            chunks.push(records.by_ref().take(BATCH_AT_MOST).collect::<Vec<_>>());
        }
        join_all(chunks.into_iter().map(|c| self.complete_chunk(c)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The keys and arguments of one [`scripts::complete`](super::scripts::complete) call for
    /// `records`, and whether one of them is queued again due now.
    fn complete_call(
        &self,
        records: &[MessageRecord],
        now: Timestamp,
    ) -> Result<(Vec<String>, Vec<String>, bool), StoreError> {
        let o = &self.inner.options;
        let mut keys = Vec::with_capacity(8 + records.len() * 4);
        keys.extend([
            self.inner.stream.clone(),
            self.key("lease"),
            self.key("n"),
            self.key("dead"),
            self.key("deadt"),
            self.key("cb"),
            self.key("cbd"),
            self.key("d"),
        ]);
        let mut args = Vec::with_capacity(4 + records.len() * 13);
        args.extend([
            o.consumer_group.clone(),
            millis(now).to_string(),
            ms(o.retention).max(1).to_string(),
            flag(o.event_indexes),
        ]);
        // The entry of each lease, as this process took it ('': the script reads `lease`).
        let eids: Vec<String> = {
            let leases = self.inner.leases.lock();
            records
                .iter()
                .map(|r| leases.get(&r.id.to_string()).cloned().unwrap_or_default())
                .collect()
        };
        let mut requeued_now = false;
        for (record, eid) in records.iter().zip(eids) {
            let is_final = record.status.is_final();
            let cb = if is_final && wants_callback(record.status) {
                self.callback_for(record, now)
            } else {
                None
            };
            let (cb_id, cb_due, cb_json) = cb_args(cb.as_ref())?;
            let due = due_millis(record.next_attempt_at.unwrap_or(now));
            requeued_now |= !is_final && due <= millis(now);
            let msgid = record
                .msgid
                .filter(|&m| m != 0)
                .map(|m| m.to_string())
                .unwrap_or_default();
            let idem = record.idempotency_key.clone().unwrap_or_default();
            keys.push(self.key(&format!("m:{}", record.id)));
            keys.push(self.key(&format!("i:{idem}")));
            keys.push(self.key(&format!("a:{}", record.message.touser)));
            keys.push(self.key(&format!("x:{msgid}")));
            args.extend([
                eid,
                record.id.to_string(),
                encode(record)?,
                flag(is_final),
                due.to_string(),
                flag(record.dead_letter),
                flag(record.status == Status::Delivered),
                msgid,
                idem,
                cb_id,
                cb_due.to_string(),
                cb_json,
                millis(record.finished_at.unwrap_or(now)).to_string(),
            ]);
        }
        Ok((keys, args, requeued_now))
    }

    async fn complete_chunk(&self, records: Vec<MessageRecord>) -> Vec<Result<(), StoreError>> {
        let n = records.len();
        let now = Timestamp::now();
        let (keys, args, requeued_now) = match self.complete_call(&records, now) {
            Ok(call) => call,
            Err(e) => return each_failed(n, e),
        };
        let done = self
            .script::<Value>(&self.inner.scripts.complete, &keys, &args)
            .await
            .map(|v| strings(v).len());
        // Kept alive no longer either way: after a failed write the entry goes idle and is
        // claimed again after claimIdle (by this pod or another).
        {
            let mut leases = self.inner.leases.lock();
            for record in &records {
                leases.remove(&record.id.to_string());
            }
        }
        match done {
            Ok(answered) if answered == n => {
                if requeued_now {
                    self.inner.work.notify_waiters();
                }
                self.ok(());
                (0..n).map(|_| Ok(())).collect()
            }
            Ok(_) => self.not_completed(
                records,
                StoreError::Storage("redis complete: unexpected answer".into()),
            ),
            Err(e) => {
                let e = self.fail("complete", &e);
                self.not_completed(records, e)
            }
        }
    }

    /// Outcomes that could not be written: kept in memory, so that when this pod claims their
    /// entries again the leases carry them and they are recorded instead of sent again.
    fn not_completed(
        &self,
        records: Vec<MessageRecord>,
        e: StoreError,
    ) -> Vec<Result<(), StoreError>> {
        let n = records.len();
        let mut kept = self.inner.unrecorded.lock();
        let now = Instant::now();
        kept.retain(|_, (at, _)| now.duration_since(*at) < UNRECORDED_KEPT);
        for record in records {
            kept.insert(record.id, (now, record));
        }
        each_failed(n, e)
    }

    /// Writes the "attempt started" records of `leased` (leased by this process), one answer
    /// each, in order. A message whose record was not written is not to be sent: it is kept
    /// alive no longer, so that its entry is claimed again after claimIdle.
    pub(super) async fn start_attempts_of(
        &self,
        leased: &[&Leased],
        at: Timestamp,
    ) -> Vec<Result<(), StoreError>> {
        if let Err(e) = self.check_open() {
            return each_failed(leased.len(), e);
        }
        join_all(
            leased
                .chunks(BATCH_AT_MOST)
                .map(|chunk| self.start_chunk(chunk, at)),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    async fn start_chunk(&self, leased: &[&Leased], at: Timestamp) -> Vec<Result<(), StoreError>> {
        let o = &self.inner.options;
        let keys = [self.inner.stream.clone(), self.key("lease")];
        let mut args = Vec::with_capacity(leased.len() * 3 + 2);
        args.extend([o.consumer_group.clone(), o.consumer.clone()]);
        let at_text = at.to_string();
        // Messages this process does not hold are answered without asking Redis.
        let mut answers: Vec<Option<Result<(), StoreError>>> = Vec::with_capacity(leased.len());
        let mut asked = Vec::with_capacity(leased.len());
        for (i, l) in leased.iter().enumerate() {
            let id = l.record.id;
            let Some(eid) = self.inner.leases.lock().get(&id.to_string()).cloned() else {
                answers.push(Some(Err(StoreError::Storage(
                    format!("redis start attempt: {id} is not leased by this process").into(),
                ))));
                continue;
            };
            args.extend([eid, id.to_string(), at_text.clone()]);
            asked.push(i);
            answers.push(None);
        }
        if !asked.is_empty() {
            let out: Result<Value, _> = self
                .script(&self.inner.scripts.start_attempt, &keys, &args)
                .await;
            let written = match out {
                Ok(v) => {
                    let words = strings(v);
                    if words.len() == asked.len() {
                        self.ok(());
                        Ok(words)
                    } else {
                        Err(StoreError::Storage(
                            "redis start attempt: unexpected answer".into(),
                        ))
                    }
                }
                Err(e) => Err(self.fail("start attempt", &e)),
            };
            match written {
                Ok(words) => {
                    for (&i, word) in asked.iter().zip(words) {
                        let id = leased[i].record.id;
                        answers[i] = Some(match word.as_str() {
                            "ok" | "kept" => Ok(()),
                            a => Err(StoreError::Storage(
                                format!(
                                    "redis start attempt: not written ({a}): the lease of {id} \
                                     was taken over or the message was completed"
                                )
                                .into(),
                            )),
                        });
                    }
                }
                Err(e) => {
                    for (&i, answer) in asked.iter().zip(each_failed(asked.len(), e)) {
                        answers[i] = Some(answer);
                    }
                }
            }
        }
        // Not sent: kept alive no longer, so that the entry is claimed again after claimIdle
        // (by this pod or another), as after a failed complete.
        let mut leases = self.inner.leases.lock();
        answers
            .into_iter()
            .zip(leased)
            .map(|(answer, l)| {
                let answer = answer.unwrap_or_else(|| {
                    Err(StoreError::Storage("redis start attempt: no answer".into()))
                });
                if answer.is_err() {
                    leases.remove(&l.record.id.to_string());
                }
                answer
            })
            .collect()
    }
}
