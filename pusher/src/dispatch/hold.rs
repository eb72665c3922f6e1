//! Sending on hold: why (a paused channel, an open circuit) and until when, shared with the API.

use jiff::Timestamp;
use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldCause {
    /// The channel is paused: WeChat answered a configuration fault or a quota, or no token
    /// could be had.
    Paused,
    /// The circuit breaker is open; the hold ends when it closes.
    CircuitOpen,
}

/// Why sending is on hold, for `/v1/status`, `wxpush_channel_hold_errcode` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    /// Until when.
    pub until: Timestamp,
    /// What put it on hold.
    pub cause: HoldCause,
    /// What WeChat or the breaker said.
    pub reason: String,
    /// WeChat's errcode, when it caused the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
}

/// State the dispatcher shares with the API.
#[derive(Debug, Default)]
pub struct DispatchState {
    hold: Mutex<Option<Hold>>,
}

impl DispatchState {
    /// The current hold, if still in force.
    pub fn hold(&self) -> Option<Hold> {
        let hold = self.hold.lock();
        hold.as_ref()
            .filter(|h| h.until > Timestamp::now())
            .cloned()
    }

    /// Ends a hold set because the circuit breaker was open (it closed again).
    pub(super) fn clear_circuit_hold(&self) {
        let mut hold = self.hold.lock();
        if hold
            .as_ref()
            .is_some_and(|h| h.cause == HoldCause::CircuitOpen)
        {
            *hold = None;
        }
    }

    /// Extends the hold; true when sending was not on hold before (worth a log line).
    pub(super) fn set_hold(
        &self,
        until: Timestamp,
        cause: HoldCause,
        reason: String,
        errcode: Option<i64>,
    ) -> bool {
        let now = Timestamp::now();
        let mut hold = self.hold.lock();
        let fresh = hold.as_ref().is_none_or(|h| h.until <= now);
        if hold.as_ref().is_none_or(|h| h.until < until) {
            *hold = Some(Hold {
                until,
                cause,
                reason,
                errcode,
            });
        }
        fresh
    }
}
