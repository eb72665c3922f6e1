//! The Redis store's background work: the counts refresher, the heartbeat (and joining the
//! consumer group), and keeping this process's leases from looking idle.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::streams::StreamPendingReply;

use super::conn::{self};
use super::handle::{
    ConsumerPending, HEARTBEAT_EVERY, HEARTBEAT_TTL, Inner, REFRESH_EVERY, RedisStore, Snapshot, ms,
};
use crate::store::{QueueCounts, StoreError};

impl RedisStore {
    pub(super) async fn create_group(&self) -> Result<(), StoreError> {
        let r: Result<Value, _> = conn::retrying(|| {
            let mut conn = self.conn();
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&self.inner.stream)
                .arg(&self.inner.options.consumer_group)
                .arg("0")
                .arg("MKSTREAM");
            async move { cmd.query_async(&mut conn).await }
        })
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.fail("XGROUP CREATE", &e)),
        }
    }

    /// Reads the counts and the consumers' pending entries from Redis, and caches them for
    /// [`Store::counts`](crate::store::Store::counts).
    pub async fn refresh(&self) -> Result<QueueCounts, StoreError> {
        let b = &self.inner.base;
        // Drops the entries every group is done with, and reads the stream's length and this
        // group's pending entries in the same step (`scripts::TRIM`).
        let (xlen, in_pel): (u64, u64) = match self
            .script(
                &self.inner.scripts.trim,
                std::slice::from_ref(&self.inner.stream),
                std::slice::from_ref(&self.inner.options.consumer_group),
            )
            .await
        {
            Ok(v) => v,
            // No stream yet: the group is created below.
            Err(e) if e.to_string().contains("no such key") => (0, 0),
            Err(e) => return Err(self.fail("counts", &e)),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD")
            .arg(format!("{b}d"))
            .cmd("ZCARD")
            .arg(format!("{b}dead"));
        let (delayed, dead): (u64, u64) = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(|e| self.fail("counts", &e))?;
        let pending: Result<StreamPendingReply, _> = redis::cmd("XPENDING")
            .arg(&self.inner.stream)
            .arg(&self.inner.options.consumer_group)
            .query_async(&mut self.conn())
            .await;
        let (inflight, consumers) = match pending {
            Ok(StreamPendingReply::Data(d)) => (
                d.count as u64,
                d.consumers
                    .into_iter()
                    .map(|c| ConsumerPending {
                        consumer: c.name,
                        pending: c.pending as u64,
                    })
                    .collect(),
            ),
            Ok(_) => (0, Vec::new()),
            Err(e) if e.to_string().contains("NOGROUP") => {
                self.create_group().await?;
                (0, Vec::new())
            }
            Err(e) => return Err(self.fail("XPENDING", &e)),
        };
        let ready = xlen.saturating_sub(in_pel);
        let oldest_ready_ms = if ready > 0 {
            self.oldest_unread().await
        } else {
            None
        };
        let counts = QueueCounts {
            ready,
            delayed,
            inflight,
            dead,
            oldest_ready_ms,
        };
        *self.inner.snapshot.lock() = Snapshot { counts, consumers };
        Ok(self.ok(counts))
    }

    /// When the oldest stream entry the group has not read yet was added (unix ms, from its
    /// id): the oldest ready message. `None` when Redis cannot say (an error is only logged:
    /// the gauge is a diagnostic, not the queue).
    pub(super) async fn oldest_unread(&self) -> Option<u64> {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.inner.stream)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| tracing::debug!(error = %conn::clean(&e), "XINFO GROUPS"))
            .ok()?;
        let last = groups
            .groups
            .into_iter()
            .find(|g| g.name == self.inner.options.consumer_group)?
            .last_delivered_id;
        let next: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.inner.stream)
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(|e| tracing::debug!(error = %conn::clean(&e), "XRANGE"))
            .ok()?;
        let id = next.ids.first()?.id.clone();
        id.split('-').next()?.parse().ok()
    }

    /// Writes this pusher's heartbeat key (see [`HEARTBEAT_TTL`]). A key of its own, so that a
    /// slot on the move (multi-key operations answered TRYAGAIN) never stops the heartbeat.
    pub(super) async fn heartbeat(&self) -> Result<(), StoreError> {
        let key = self.key(&format!("hb:{}", self.inner.options.consumer));
        conn::retrying(|| {
            let mut conn = self.conn();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg("1").arg("PX").arg(ms(HEARTBEAT_TTL));
            async move { cmd.query_async::<()>(&mut conn).await }
        })
        .await
        .map_err(|e| self.fail("heartbeat", &e))
    }

    /// Makes sure this pusher's consumer is in the group (`XGROUP CREATECONSUMER`, after each
    /// heartbeat). Redis creates a consumer on `XREADGROUP` only when there is something to
    /// read, so an idle pusher would otherwise be missing from the group, and one whose
    /// consumer was deleted while its heartbeat had lapsed (a stall) comes back. Best effort:
    /// the next heartbeat tries again.
    pub(super) async fn join_group(&self) {
        let o = &self.inner.options;
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATECONSUMER")
            .arg(&self.inner.stream)
            .arg(&o.consumer_group)
            .arg(&o.consumer);
        let mut conn = self.conn();
        if let Err(e) = cmd.query_async::<i64>(&mut conn).await {
            tracing::debug!(error = %conn::clean(&e), "cannot add this pusher's consumer to the group");
        }
    }
}

/// Refreshes the counts and the health every [`REFRESH_EVERY`] while the store is alive.
pub(super) async fn refresher(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let store = RedisStore { inner };
        if let Err(e) = store.refresh().await {
            tracing::debug!(error = %e, "redis counts refresh failed");
        }
    }
}

/// Renews this pusher's heartbeat every [`HEARTBEAT_EVERY`] while the store is alive.
pub(super) async fn heartbeater(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let store = RedisStore { inner };
        match store.heartbeat().await {
            Ok(()) => store.join_group().await,
            Err(e) => tracing::debug!(error = %e, "cannot renew the heartbeat"),
        }
    }
}

/// Keeps this process's leases from looking idle (see [`scripts::KEEP_LEASES`]), every third
/// of `claimIdle`, while the store is alive.
pub(super) async fn lease_keeper(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => (i.options.claim_idle / 3).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let eids: Vec<String> = inner.leases.lock().values().cloned().collect();
        for chunk in eids.chunks(500) {
            let mut inv = inner.scripts.keep_leases.key(&inner.stream);
            inv.arg(&inner.options.consumer_group)
                .arg(&inner.options.consumer);
            for eid in chunk {
                inv.arg(eid);
            }
            let mut conn = inner.conn.lock().clone();
            if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
                tracing::debug!(error = %conn::clean(&e), "cannot keep leases alive");
                break;
            }
        }
    }
}
