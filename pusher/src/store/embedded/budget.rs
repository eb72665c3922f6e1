//! The disk budget (`queue.embedded.maxBytes`): accepts are refused while what the database
//! holds, plus what its pending messages' outcomes will need, has reached it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often, once the file's blocks have reached the budget, redb's page count is taken (it
/// walks the trees, so not on every group).
const BUDGET_STATS_EVERY: Duration = Duration::from_secs(1);

/// Bytes kept free for each pending message, for what its outcome will write: its progress
/// entry (delivered or dead), its indexes and callback, and the pages that redb's copy-on-write holds
/// twice until the commit after. Without it, a volume filled to the budget with pending
/// messages met the full file system while they were delivered (measured by
/// `engine_faults::a_producer_filling_the_volume_meets_the_budget_not_a_full_disk`, about
/// 800 bytes a pending message on disk).
pub(super) const OUTCOME_RESERVE: u64 = 256;

/// The disk budget: what the database holds plus what its pending messages' outcomes will
/// need.
///
/// What the database holds is measured on every group that adds messages, cheaply: the
/// file's allocated blocks (redb grows its file sparsely, so its length says little) bound it
/// from above. Once the blocks have reached the budget, redb's allocated pages are read (at
/// most once a second) and the blocks allocated since are added: redb reuses freed pages but
/// never gives blocks back, so after deliveries the pages come down and the blocks do not.
#[derive(Debug)]
pub(super) struct Budget {
    max: u64,
    state: parking_lot::Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    /// When redb's pages were last read, and the file's blocks then.
    stats_at: Option<(Instant, u64)>,
    /// Pages allocated at `stats_at`.
    pages: u64,
    /// What the budget counted last: the bytes in use plus the reserve.
    counted: u64,
    over: bool,
}

impl Budget {
    pub(super) fn new(max: u64) -> Self {
        Self {
            max,
            state: parking_lot::Mutex::new(BudgetState::default()),
        }
    }

    /// `(counted, max)`: what the budget counted last (the bytes in use plus the outcome
    /// reserve), and the budget.
    pub(super) fn figures(&self) -> (u64, u64) {
        (self.state.lock().counted, self.max)
    }

    /// `Some((used, max))` while the budget is spent: what the database holds plus
    /// [`OUTCOME_RESERVE`] for each of `pending` messages has reached it.
    pub(super) fn spent(
        &self,
        file: &Path,
        txn: &redb::WriteTransaction,
        pending: u64,
    ) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut s = self.state.lock();
        let blocks = std::fs::metadata(file).map_or(0, |m| m.blocks().saturating_mul(512));
        let reserve = pending.saturating_mul(OUTCOME_RESERVE);
        let used = if blocks.saturating_add(reserve) < self.max {
            s.stats_at = None;
            blocks
        } else {
            let stale = s
                .stats_at
                .is_none_or(|(at, _)| at.elapsed() >= BUDGET_STATS_EVERY);
            if stale && let Ok(st) = txn.stats() {
                s.pages = st.allocated_pages() * st.page_size() as u64;
                s.stats_at = Some((Instant::now(), blocks));
            }
            let grown = s
                .stats_at
                .map_or(0, |(_, then)| blocks.saturating_sub(then));
            blocks.min(s.pages.saturating_add(grown))
        };
        s.counted = used.saturating_add(reserve);
        let over = s.counted >= self.max;
        if over != s.over {
            if over {
                tracing::warn!(
                    used,
                    pending,
                    reserved = reserve,
                    max = self.max,
                    "disk budget spent: accepts refused (429) until space is freed"
                );
            } else {
                tracing::info!(
                    used,
                    pending,
                    reserved = reserve,
                    max = self.max,
                    "disk budget has room again: accepts resume"
                );
            }
            s.over = over;
        }
        s.over.then_some((s.counted, self.max))
    }
}

/// The embedded store's disk budget, for metrics.
#[derive(Debug, Clone)]
pub struct DiskBudget(pub(super) Arc<Budget>);

impl DiskBudget {
    /// `(bytes in use as last measured, budget)`.
    pub fn figures(&self) -> (u64, u64) {
        self.0.figures()
    }
}
