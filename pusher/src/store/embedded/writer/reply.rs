//! The reply and rollback machinery: what each operation changes in memory once its group
//! committed (or how it is undone when the commit failed), and the answers owed to callers,
//! sent in one place for success and failure alike.

use tokio::sync::oneshot;

use super::op::Op;
use crate::message::MessageRecord;
use crate::store::StoreError;
use crate::store::embedded::shared::Shared;

/// How an operation changes the in-memory view once its group committed (or, for a failed
/// commit, how it is undone).
#[derive(Debug)]
pub(super) enum Change {
    None,
    /// Accepted messages: due at `due`; their records are kept in memory for their first
    /// lease ([`super::Shared::fresh`]).
    Scheduled {
        ids: Vec<u128>,
        due: u64,
        records: Vec<MessageRecord>,
        /// Accepted without `schedule` entries (held in memory until their first outcome).
        unscheduled: bool,
    },
    /// A completed attempt: the lease ends. `outcome` is the record as completed, kept only to
    /// be handed back when the write fails ([`super::Shared::unrecorded`]).
    Released {
        id: u128,
        due: Option<u64>,
        dead: bool,
        outcome: Option<Box<MessageRecord>>,
    },
    Replayed {
        id: u128,
        due: u64,
    },
    CallbackDone {
        id: u128,
    },
    /// A refused operation's lease or callback lease, given back whatever the group's fate.
    GiveBack(Box<Change>),
    /// "Attempt started" records: the leases are kept after the commit, and given back when
    /// the commit fails (the caller does not send).
    Started {
        ids: Vec<u128>,
    },
    /// The changes of a many-message operation.
    Many(Vec<Change>),
}

impl Change {
    /// Applies the change after a commit; returns whether the lease loop has new work.
    pub(super) fn apply(&mut self, shared: &Shared) -> bool {
        let mut index = shared.index.lock();
        match self {
            Self::None => false,
            Self::Scheduled {
                ids,
                due,
                records,
                unscheduled,
            } => {
                for &id in ids.iter() {
                    if *unscheduled {
                        index.schedule_unscheduled(*due, id);
                    } else {
                        index.schedule(*due, id);
                    }
                }
                drop(index);
                shared.keep_fresh(std::mem::take(records));
                !ids.is_empty()
            }
            Self::Released { id, due, dead, .. } => {
                index.release(*id, *due);
                if *dead {
                    index.dead += 1;
                }
                due.is_some()
            }
            Self::Replayed { id, due } => {
                index.schedule(*due, *id);
                index.dead = index.dead.saturating_sub(1);
                true
            }
            Self::CallbackDone { id } => {
                drop(index);
                shared.callbacks_leased.lock().remove(id);
                false
            }
            Self::GiveBack(change) => {
                drop(index);
                change.roll_back(shared);
                false
            }
            Self::Started { .. } => false,
            Self::Many(changes) => {
                drop(index);
                let mut woke = false;
                for change in changes {
                    woke |= change.apply(shared);
                }
                woke
            }
        }
    }

    /// The undo of a completion that was not written: the lease goes back and the outcome
    /// is kept for its next lease.
    pub(super) fn released(record: Box<MessageRecord>) -> Self {
        Self::Released {
            id: record.id.as_u128(),
            due: None,
            dead: false,
            outcome: Some(record),
        }
    }

    /// Undoes what the caller's side did before the failed commit: leases go back, due
    /// again only after a delay (never at once: that would repeat the attempt in a loop).
    pub(super) fn roll_back(&self, shared: &Shared) {
        match self {
            Self::Released { id, outcome, .. } => {
                shared.give_back(*id);
                if let Some(record) = outcome {
                    // Its next lease carries this outcome, so that it is recorded instead of
                    // sent again.
                    shared
                        .unrecorded
                        .lock()
                        .insert(*id, MessageRecord::clone(record));
                }
            }
            Self::CallbackDone { id } => {
                shared.callbacks_leased.lock().remove(id);
            }
            Self::GiveBack(change) => change.roll_back(shared),
            Self::Started { ids } => {
                for &id in ids {
                    shared.give_back(id);
                }
            }
            Self::Many(changes) => {
                for change in changes {
                    change.roll_back(shared);
                }
            }
            Self::None | Self::Scheduled { .. } | Self::Replayed { .. } => {}
        }
    }
}

impl Change {
    /// A refused operation's lease goes back once the group is settled (committed or not).
    pub(super) fn roll_back_refused(self, effects: &mut Vec<Effect>) {
        if matches!(self, Self::None) {
            return;
        }
        effects.push(Effect {
            change: Change::GiveBack(Box::new(self)),
            answer: Box::new(Nothing),
        });
    }
}

/// An answer already given.
pub(super) struct Nothing;

impl Owed for Nothing {
    fn settle(self: Box<Self>, _failed: Option<&str>) {}
}

/// What an operation came to.
pub(super) enum Step<T> {
    /// Written: the change to apply after the commit, and the caller's answer.
    Done(Change, T),
    /// Refused without writing anything: answered at once.
    Refused(StoreError),
}

/// A reply owed to a caller, sent once the group's fate is known.
pub(super) trait Owed: Send {
    /// Sends the value (`failed` = `None`) or the commit's error.
    fn settle(self: Box<Self>, failed: Option<&str>);
}

pub(super) struct Answer<T> {
    pub(super) value: Option<T>,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Owed for Answer<T> {
    fn settle(self: Box<Self>, failed: Option<&str>) {
        let result = match (failed, self.value) {
            (None, Some(v)) => Ok(v),
            (Some(msg), _) => Err(StoreError::Storage(msg.to_string().into())),
            (None, None) => Err(StoreError::Storage("operation not applied".into())),
        };
        let _ = self.reply.send(result);
    }
}

pub(super) struct Closing(pub(super) oneshot::Sender<()>);

impl Owed for Closing {
    fn settle(self: Box<Self>, _failed: Option<&str>) {
        let _ = self.0.send(());
    }
}

/// One operation's change and reply.
pub(super) struct Effect {
    pub(super) change: Change,
    pub(super) answer: Box<dyn Owed>,
}

/// Records an operation's step: a done step owes its answer until the commit; a refused one
/// is answered now; a storage error owes a failure (with `undo` to roll back) and aborts the
/// group.
pub(super) fn owe<T: Send + 'static>(
    effects: &mut Vec<Effect>,
    undo: Change,
    reply: oneshot::Sender<Result<T, StoreError>>,
    step: Result<Step<T>, StoreError>,
) -> Result<(), StoreError> {
    match step {
        Ok(Step::Done(change, value)) => {
            effects.push(Effect {
                change,
                answer: Box::new(Answer {
                    value: Some(value),
                    reply,
                }),
            });
            Ok(())
        }
        Ok(Step::Refused(e)) => {
            // Refused before writing anything: the group goes on; a lease goes back.
            undo.roll_back_refused(effects);
            let _ = reply.send(Err(e));
            Ok(())
        }
        Err(e) => {
            effects.push(Effect {
                change: undo,
                answer: Box::new(Answer { value: None, reply }),
            });
            Err(e)
        }
    }
}

impl Op {
    /// The effect of an operation that was never reached because its group failed.
    pub(super) fn abandon(self) -> Effect {
        pub(super) fn owed<T: Send + 'static>(
            change: Change,
            reply: oneshot::Sender<Result<T, StoreError>>,
        ) -> Effect {
            Effect {
                change,
                answer: Box::new(Answer { value: None, reply }),
            }
        }
        match self {
            Self::Accept { reply, .. } => owed(Change::None, reply),
            Self::Complete { record, reply, .. } => owed(Change::released(record), reply),
            Self::CompleteMany { items, reply } => owed(
                Change::Many(
                    items
                        .into_iter()
                        .map(|(_, record)| Change::released(record))
                        .collect(),
                ),
                reply,
            ),
            Self::StartAttempts { items, reply } => owed(
                Change::Started {
                    ids: items.iter().map(|(id, _)| *id).collect(),
                },
                reply,
            ),
            Self::Replay { reply, .. } => owed(Change::None, reply),
            Self::Recall { reply, .. } => owed(Change::None, reply),
            Self::Event { reply, .. } => owed(Change::None, reply),
            Self::FinishCallback { key, reply, .. } => {
                owed(Change::CallbackDone { id: key.id }, reply)
            }
            Self::Close { reply } => Effect {
                change: Change::None,
                answer: Box::new(Closing(reply)),
            },
            Self::Refill => Effect {
                change: Change::None,
                answer: Box::new(Nothing),
            },
            Self::PullIn { reply, .. } => owed(Change::None, reply),
        }
    }
}
