//! The policy fields that the config file and the `PushChannel` spec both carry, written once.
//!
//! `#[serde(flatten)]` would share them as one nested struct, but it turns off
//! `deny_unknown_fields` and changes the generated schema. So a declaring macro writes the
//! same fields, with the same docs and serde attributes, into both structs.

/// Declares a struct whose fields are `before`, then the shared policy fields, then `after`.
/// `secret` is how the policies that name a secret take it: [`super::SecretKeyRef`] in the
/// CRD, [`super::LocalSecret`] in the config file.
///
/// ```text
/// with_policy_fields! {
///     #[derive(...)]
///     pub struct Name (secret = SecretType) {
///         /// A field before the policies.
///         pub first: String,
///     }
///     after {
///         /// A field after them.
///         pub last: u32,
///     }
/// }
/// ```
macro_rules! with_policy_fields {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident (secret = $secret:ty) {
            $( $(#[$bmeta:meta])* $bvis:vis $bfield:ident : $bty:ty ),* $(,)?
        }
        after {
            $( $(#[$ameta:meta])* $avis:vis $afield:ident : $aty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$bmeta])* $bvis $bfield : $bty, )*
            /// Where accepted messages wait. Default: the embedded store.
            #[serde(default)]
            pub queue: $crate::policy::QueuePolicy<$secret>,
            /// Timeouts of each request to WeChat.
            #[serde(default)]
            pub timeouts: $crate::policy::Timeouts,
            /// The pooled HTTP client.
            #[serde(default)]
            pub pool: $crate::policy::Pool,
            /// Retries with exponential backoff and jitter.
            #[serde(default)]
            pub retry: $crate::policy::Retry,
            /// The circuit breaker in front of WeChat.
            #[serde(default)]
            pub circuit_breaker: $crate::policy::CircuitBreaker,
            /// Sending rate limits.
            #[serde(default)]
            pub rate_limit: $crate::policy::RateLimit,
            /// Requests in flight per pusher.
            #[serde(default)]
            pub concurrency: $crate::policy::Concurrency,
            /// access_token management.
            #[serde(default)]
            pub token: $crate::policy::TokenPolicy,
            /// Outcome callbacks to producers.
            #[serde(default)]
            pub callbacks: $crate::policy::Callbacks<$secret>,
            /// The template registry: messages checked against the account's templates at accept.
            #[serde(default)]
            pub templates: $crate::policy::TemplatePolicy,
            $( $(#[$ameta])* $avis $afield : $aty, )*
        }
    };
}

pub(crate) use with_policy_fields;
