//! What each WeChat answer means for the message and the channel: a pure function of the
//! errcode (or HTTP status), following the table in `docs/wechat-api.md` exactly. The codes
//! themselves (numbers, WeChat's wording) are the table the sandbox shares, `wxcrypto::errcode`.
//!
//! Unknown non-zero errcodes are **retried with backoff** (counted against the message's retry
//! budget, so they end in the dead-letter queue with the errcode if they persist): WeChat
//! answered, so the message was not sent, and a retry with the same `client_msg_id` can never
//! deliver twice. Treating an unknown code as permanent would lose messages on a new transient
//! code; retrying costs at most `retry.maxAttempts` attempts.

use std::time::SystemTime;

use wxcrypto::errcode::WxCode;

use crate::calendar::next_beijing_midnight;
use crate::metrics::AttemptResult;
use crate::policy::Retry;

pub use crate::send::SendAction;

impl SendAction {
    /// The `wxpush_send_attempts_total{result}` label of an attempt that ended this way.
    pub fn attempt_result(self) -> AttemptResult {
        match self {
            Self::Delivered => AttemptResult::ok,
            // A configuration fault will not go away by retrying; the daily quota will.
            Self::Permanent { .. } | Self::Pause { until: None } => AttemptResult::permanent,
            Self::Retry { .. }
            | Self::RefreshToken
            | Self::Throttle { .. }
            | Self::Pause { until: Some(_) } => AttemptResult::retryable,
        }
    }
}

/// Classifies a send's errcode. `now` fixes "next midnight" for 45009; `retry` gives the
/// throttled backoff for 45011 and 43117.
pub fn classify_send(errcode: i64, now: SystemTime, retry: &Retry) -> SendAction {
    use WxCode::*;
    let throttled = retry.throttled_backoff.get();
    let Some(code) = WxCode::from_code(errcode) else {
        return SendAction::Retry { not_before: None };
    };
    match code {
        Ok => SendAction::Delivered,
        SystemBusy => SendAction::Retry { not_before: None },
        InvalidCredential | InvalidAccessToken | AccessTokenExpired => SendAction::RefreshToken,
        DailyQuota => SendAction::Pause {
            until: Some(next_beijing_midnight(now)),
        },
        MinuteQuota => SendAction::Throttle {
            for_at_least: throttled,
        },
        TooFrequentOpenid => SendAction::Retry {
            not_before: Some(throttled),
        },
        InvalidOpenid | RequireSubscribe | UserRefused | DataFormat | ArgumentInvalid
        | InvalidPage => SendAction::Permanent { alert: false },
        InvalidTemplateId => SendAction::Permanent { alert: true },
        ApiUnauthorized | InvalidAppid | InvalidSecret | IpNotAllowed => {
            SendAction::Pause { until: None }
        }
        // Codes of the token API, not expected from a send: retried like unknown codes.
        InvalidGrantType | AccessTokenMissing | AppidMissing | SecretMissing => {
            SendAction::Retry { not_before: None }
        }
    }
}

/// Whether an errcode says the access_token was refused (40001, 40014, 42001): invalidate it,
/// refresh once, retry once.
pub fn token_refused(errcode: i64) -> bool {
    matches!(
        WxCode::from_code(errcode),
        Some(WxCode::InvalidCredential | WxCode::InvalidAccessToken | WxCode::AccessTokenExpired)
    )
}

/// What to do after an access_token fetch answered with an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchAction {
    /// A configuration fault (wrong appid or secret, IP not whitelisted, missing field): pause
    /// the channel; probe again after a pause, since credentials may be fixed meanwhile.
    ConfigFault,
    /// A quota: pause until `until`.
    Quota {
        /// When to try again.
        until: SystemTime,
    },
    /// Transient: back off and retry the fetch.
    Backoff,
}

/// Classifies a token fetch's errcode.
pub fn classify_fetch(errcode: i64, now: SystemTime, retry: &Retry) -> FetchAction {
    use WxCode::*;
    match WxCode::from_code(errcode) {
        // 40002 bad grant_type and 41002/41004 missing appid/secret: our request or the
        // credentials are wrong, which waiting will not fix without a change.
        Some(
            InvalidAppid | InvalidSecret | IpNotAllowed | InvalidGrantType | AppidMissing
            | SecretMissing | ApiUnauthorized,
        ) => FetchAction::ConfigFault,
        Some(DailyQuota) => FetchAction::Quota {
            until: next_beijing_midnight(now),
        },
        Some(MinuteQuota) => FetchAction::Quota {
            until: now + retry.throttled_backoff.get(),
        },
        _ => FetchAction::Backoff,
    }
}

/// What to do after an HTTP answer that is not a 200 with JSON: 5xx means the outcome is
/// unknown (retry with the same `client_msg_id`); 429 asks to slow down; other statuses mean
/// something between us and WeChat is wrong (a proxy, a wrong base URL) and are retried.
pub fn classify_http_status(status: u16, retry: &Retry) -> SendAction {
    match status {
        429 => SendAction::Retry {
            not_before: Some(retry.throttled_backoff.get()),
        },
        _ => SendAction::Retry { not_before: None },
    }
}

pub use wxcrypto::errcode::describe;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HumanDuration;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    fn policy() -> Retry {
        Retry {
            throttled_backoff: HumanDuration::secs(60),
            ..Retry::default()
        }
    }

    #[test]
    fn send_table_follows_wechat_api_md() {
        // 2026-11-28T12:00:00Z = 20:00 Beijing; quota resets at 16:00Z.
        let now = UNIX_EPOCH + Duration::from_secs(1_795_867_200);
        let midnight = UNIX_EPOCH + Duration::from_secs(1_795_881_600);
        let minute = Duration::from_secs(60);
        let r = policy();
        use SendAction::*;
        let table: &[(i64, SendAction)] = &[
            (0, Delivered),
            (-1, Retry { not_before: None }),
            (40001, RefreshToken),
            (40014, RefreshToken),
            (42001, RefreshToken),
            (
                45009,
                Pause {
                    until: Some(midnight),
                },
            ),
            (
                45011,
                Throttle {
                    for_at_least: minute,
                },
            ),
            (
                43117,
                Retry {
                    not_before: Some(minute),
                },
            ),
            (40003, Permanent { alert: false }),
            (43004, Permanent { alert: false }),
            (43101, Permanent { alert: false }),
            (40037, Permanent { alert: true }),
            (47001, Permanent { alert: false }),
            (47003, Permanent { alert: false }),
            (41030, Permanent { alert: false }),
            (48001, Pause { until: None }),
            (40013, Pause { until: None }),
            (40125, Pause { until: None }),
            (40164, Pause { until: None }),
            // Unknown codes: retried with backoff (documented choice).
            (99999, Retry { not_before: None }),
            (40002, Retry { not_before: None }),
        ];
        for &(code, want) in table {
            assert_eq!(classify_send(code, now, &r), want, "errcode {code}");
        }
    }

    #[test]
    fn throttled_backoff_follows_the_policy() {
        let r = Retry {
            throttled_backoff: HumanDuration::secs(90),
            ..Retry::default()
        };
        let now = SystemTime::now();
        assert_eq!(
            classify_send(45011, now, &r),
            SendAction::Throttle {
                for_at_least: Duration::from_secs(90)
            }
        );
        assert_eq!(
            classify_send(43117, now, &r),
            SendAction::Retry {
                not_before: Some(Duration::from_secs(90))
            }
        );
    }

    #[test]
    fn fetch_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_867_200);
        let r = policy();
        for code in [40013, 40125, 40164, 40002, 41002, 41004] {
            assert_eq!(
                classify_fetch(code, now, &r),
                FetchAction::ConfigFault,
                "{code}"
            );
        }
        assert_eq!(
            classify_fetch(45009, now, &r),
            FetchAction::Quota {
                until: UNIX_EPOCH + Duration::from_secs(1_795_881_600)
            }
        );
        assert_eq!(
            classify_fetch(45011, now, &r),
            FetchAction::Quota {
                until: now + Duration::from_secs(60)
            }
        );
        for code in [-1, 12345] {
            assert_eq!(
                classify_fetch(code, now, &r),
                FetchAction::Backoff,
                "{code}"
            );
        }
    }

    #[test]
    fn http_statuses_are_retried() {
        let r = policy();
        assert_eq!(
            classify_http_status(502, &r),
            SendAction::Retry { not_before: None }
        );
        assert_eq!(
            classify_http_status(429, &r),
            SendAction::Retry {
                not_before: Some(Duration::from_secs(60))
            }
        );
    }

    #[test]
    fn metric_results() {
        assert_eq!(SendAction::Delivered.attempt_result(), AttemptResult::ok);
        assert_eq!(
            SendAction::Permanent { alert: false }.attempt_result(),
            AttemptResult::permanent
        );
        assert_eq!(
            SendAction::RefreshToken.attempt_result(),
            AttemptResult::retryable
        );
    }
}
