//! The label values and label sets of the pusher's metrics: enums, so that a wrong label does
//! not compile.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A message's final outcome, for `wxpush_messages_completed_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// WeChat accepted it (errcode 0).
    delivered,
    /// A permanent errcode.
    failed,
    /// `expires_at` or the retry budget passed.
    expired,
    /// Moved to the dead-letter queue.
    dead_lettered,
    /// Not re-sent after a crash beyond the de-duplication window (see `Status::UnknownOutcome`).
    unknown_outcome,
}

/// Label set `{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// See [`Outcome`].
    pub outcome: Outcome,
}

/// How one HTTP attempt ended, for `wxpush_send_attempts_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptResult {
    /// errcode 0.
    ok,
    /// A retryable errcode or HTTP status.
    retryable,
    /// A permanent errcode.
    permanent,
    /// One of the four timeouts ran out.
    timeout,
    /// Connection refused or reset, DNS, TLS and other transport errors.
    transport,
}

/// Label set `{result}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AttemptLabels {
    /// See [`AttemptResult`].
    pub result: AttemptResult,
}

/// Queue states, for `wxpush_queue_messages{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum QueueState {
    /// Due now, waiting for a worker.
    ready,
    /// Waiting for a retry time.
    delayed,
    /// Leased to a worker.
    inflight,
    /// In the dead-letter queue.
    dead,
}

/// Label set `{state}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabels {
    /// See [`QueueState`].
    pub state: QueueState,
}

/// Declares a label-value enum whose variants encode as the given texts, so that a wrong label
/// does not compile (the derive of `prometheus_client` can only spell a variant's own name).
macro_rules! label_value {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The label's text.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_value! {
    /// Which token API a fetch called, for `wxpush_token_requests_total{api}` (the policy's
    /// `token.api`, which lives in another crate and so cannot be a label itself).
    pub enum TokenApiLabel {
        /// `stable_token`.
        Stable => "stable",
        /// The classic `token` API.
        Classic => "classic",
        /// WeCom's `gettoken` (a corp and an application's secret).
        Wecom => "wecom",
        /// A webhook key read from its Secret (no token API is called).
        WebhookKey => "webhook_key",
    }
}

label_value! {
    /// The channel's `provider`, for `wxpush_invalid_recipients_total{provider}` (the policy's
    /// `Provider` lives in another crate and so cannot be a label itself).
    pub enum ProviderLabel {
        /// A WeChat Official Account.
        WechatOfficialAccount => "wechatOfficialAccount",
        /// A WeChat Mini Program.
        WechatMiniProgram => "wechatMiniProgram",
        /// A WeCom application.
        WecomApp => "wecomApp",
        /// A WeCom group robot.
        WecomRobot => "wecomRobot",
    }
}

/// Labels of `wxpush_invalid_recipients_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InvalidRecipientLabels {
    /// The channel's provider.
    pub provider: ProviderLabel,
    /// Which kind of recipient the provider called invalid.
    pub kind: RecipientKind,
}

/// A kind of recipient of a WeCom message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RecipientKind {
    /// A user id (`invaliduser`).
    user,
    /// A party (department) id (`invalidparty`).
    party,
    /// A tag id (`invalidtag`).
    tag,
    /// A user without a licence (`unlicenseduser`).
    unlicensed_user,
}

/// How a token fetch ended, for `wxpush_token_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenResult {
    /// A token came back.
    Ok,
    /// WeChat answered this errcode (the label is the number).
    Errcode(i64),
    /// A timeout ran out (or no other pod shared a token in time).
    Timeout,
    /// The connection failed.
    Transport,
    /// The stable API handed back the token WeChat had just refused.
    Stale,
    /// HTTP 5xx.
    Http5xx,
    /// Another non-200 status.
    HttpStatus,
    /// A 200 with neither a token nor an errcode.
    BadResponse,
    /// The credentials could not be read.
    Credentials,
}

impl EncodeLabelValue for TokenResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Ok => encoder.write_str("ok"),
            Self::Errcode(code) => write!(encoder, "{code}"),
            Self::Timeout => encoder.write_str("timeout"),
            Self::Transport => encoder.write_str("transport"),
            Self::Stale => encoder.write_str("stale"),
            Self::Http5xx => encoder.write_str("http_5xx"),
            Self::HttpStatus => encoder.write_str("http_status"),
            Self::BadResponse => encoder.write_str("bad_response"),
            Self::Credentials => encoder.write_str("credentials"),
        }
    }
}

impl From<crate::policy::TokenApi> for TokenApiLabel {
    fn from(api: crate::policy::TokenApi) -> Self {
        match api {
            crate::policy::TokenApi::Stable => Self::Stable,
            crate::policy::TokenApi::Classic => Self::Classic,
        }
    }
}

/// Label set `{api, result}` of `wxpush_token_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TokenLabels {
    /// See [`TokenApiLabel`].
    pub api: TokenApiLabel,
    /// See [`TokenResult`].
    pub result: TokenResult,
}

label_value! {
    /// Which of the four timeouts ran out, for `wxpush_send_timeouts_total{phase}`.
    pub enum TimeoutPhase {
        /// `timeouts.connect`.
        Connect => "connect",
        /// `timeouts.tls`.
        TlsHandshake => "tls_handshake",
        /// `timeouts.responseHeader`.
        ResponseHeader => "response_header",
        /// `timeouts.request`.
        Request => "request",
    }
}

label_value! {
    /// Why a connection to WeChat ended, for `wxpush_wechat_connections_closed_total{reason}`.
    pub enum ConnCloseReason {
        /// Unused for `pool.idleTimeout` and not needed by the recent load: closed by the
        /// pool's pacing (at most `pool.closesPerSecond`).
        Idle => "idle",
        /// Closed by WeChat, broken, dropped with an abandoned request, or at shutdown.
        Other => "other",
    }
}

/// Label set `{reason}` of `wxpush_wechat_connections_closed_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnCloseLabels {
    /// See [`ConnCloseReason`].
    pub reason: ConnCloseReason,
}

/// Label set `{phase}` of `wxpush_send_timeouts_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// See [`TimeoutPhase`].
    pub phase: TimeoutPhase,
}

label_value! {
    /// The WeChat event a request to `/wechat/events` carried, for `wxpush_events_total{event}`.
    pub enum EventName {
        /// `TEMPLATESENDJOBFINISH`, a template message's delivery report.
        TemplateSendJobFinish => "TEMPLATESENDJOBFINISH",
        /// WeCom's contact change.
        ChangeContact => "change_contact",
        /// A tap on a WeCom interactive card.
        TemplateCardEvent => "template_card_event",
        /// Any other event (ignored).
        Other => "other",
        /// None was read (refused before, or not an event).
        Unread => "-",
    }
}

label_value! {
    /// What became of a request to `/wechat/events`, for `wxpush_events_total{result}`.
    pub enum EventResult {
        /// A delivery was confirmed.
        Confirmed => "confirmed",
        /// The user refused the message.
        RejectedByUser => "rejected_by_user",
        /// Recorded on a message that is not delivered yet.
        Recorded => "recorded",
        /// Seen before.
        Duplicate => "duplicate",
        /// No message matches.
        Unmatched => "unmatched",
        /// Not an event the pusher uses.
        Ignored => "ignored",
        /// A WeCom recipient became unreachable (a deleted, disabled, departed or renamed
        /// user, or a deleted party).
        Unreachable => "unreachable",
        /// The URL check (echostr) was answered.
        Echostr => "echostr",
        /// A wrong or missing signature.
        BadSignature => "bad_signature",
        /// Malformed XML or fields.
        BadRequest => "bad_request",
        /// The sealed payload could not be opened.
        DecryptFailed => "decrypt_failed",
        /// The timestamp is outside the allowed skew.
        Stale => "stale",
        /// The (timestamp, nonce) pair was seen before.
        Replayed => "replayed",
        /// The replay guard is full; WeChat is asked to retry.
        ReplayCacheFull => "replay_cache_full",
        /// The store failed; WeChat is asked to retry.
        Error => "error",
    }
}

/// Label set `{event, result}` of `wxpush_events_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EventLabels {
    /// See [`EventName`].
    pub event: EventName,
    /// See [`EventResult`].
    pub result: EventResult,
}

label_value! {
    /// How one callback delivery ended, for `wxpush_callbacks_total{result}`.
    pub enum CallbackResult {
        /// The producer answered 2xx.
        Ok => "ok",
        /// It failed; another attempt is scheduled.
        Retry => "retry",
        /// Dropped after `callbacks.retry` ran out.
        GaveUp => "gave_up",
    }
}

/// Label set `{result}` of `wxpush_callbacks_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CallbackLabels {
    /// See [`CallbackResult`].
    pub result: CallbackResult,
}

/// Label set `{rule}` of `wxpush_template_refusals_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule broken (`unknown_template`, `too_long`...).
    pub rule: TemplateRuleLabel,
}

/// A template rule as a metric label (`crate::templates::rules::Rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TemplateRuleLabel {
    /// See `Rule::UnknownTemplate`.
    unknown_template,
    /// See `Rule::MissingKeyword`.
    missing_keyword,
    /// See `Rule::UnknownKeyword`.
    unknown_keyword,
    /// See `Rule::EmptyValue`.
    empty_value,
    /// See `Rule::TooLong`.
    too_long,
    /// See `Rule::BadCharacters`.
    bad_characters,
    /// See `Rule::BadFormat`.
    bad_format,
    /// See `Rule::NotAllowedValue`.
    not_allowed_value,
    /// See `Rule::LineBreak`.
    line_break,
    /// See `Rule::ControlCharacter`.
    control_character,
    /// See `Rule::NoSubscriptionCredit`.
    no_subscription_credit,
}

label_value! {
    /// Which template list, for `wxpush_templates{list}` and
    /// `wxpush_template_list_fetches_total{list}`.
    pub enum TemplateList {
        /// The account's private templates (Official Account).
        Private => "private",
        /// The subscribe-message templates.
        Subscribe => "subscribe",
    }
}

label_value! {
    /// How a template-list fetch ended, for `wxpush_template_list_fetches_total{result}`.
    pub enum FetchResult {
        /// Read.
        Ok => "ok",
        /// Not read.
        Error => "error",
    }
}

/// Label set `{list}` of `wxpush_templates`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TemplateListLabels {
    /// See [`TemplateList`].
    pub list: TemplateList,
}

/// Label set `{list, result}` of `wxpush_template_list_fetches_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TemplateFetchLabels {
    /// See [`TemplateList`].
    pub list: TemplateList,
    /// See [`FetchResult`].
    pub result: FetchResult,
}
