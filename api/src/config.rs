//! The pusher's config file (`wxpush-pusher serve --config pusher.yaml`).
//!
//! The operator writes it into the pusher's ConfigMap; people write it by hand for local runs.
//! Its policy sections are the [`crate::policy`] types, the same as the `PushChannel` spec.
//! Environment variables override a few fields (see [`ENV_OVERRIDES`]), so that a container can
//! be pointed elsewhere without a new file.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::wecom::Credential;
use crate::policy::with_policy_fields;
use crate::policy::{HumanDuration, LocalSecret, Provider, QueueKind};

/// Environment variables that override the file, with the field each replaces.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WXPUSH_LISTEN", "listen"),
    ("WXPUSH_METRICS_LISTEN", "metricsListen"),
    ("WXPUSH_CHANNEL", "channel"),
    ("WXPUSH_API_BASE_URL", "apiBaseUrl"),
    ("WXPUSH_APP_ID", "credentials.appId"),
    ("WXPUSH_APP_SECRET", "credentials.appSecret"),
    ("WXPUSH_CORP_SECRET", "credentials.corpSecret"),
    ("WXPUSH_WEBHOOK_KEY", "credentials.webhookKey"),
    ("WXPUSH_AUTH_TOKEN", "auth.token"),
    ("WXPUSH_QUEUE_PATH", "queue.embedded.path"),
];

with_policy_fields! {
    /// The whole config file.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PusherConfig (secret = LocalSecret) {
        /// Address of the HTTP API, WeChat's event callback, health checks and (unless
        /// `metricsListen` is set) metrics. Required.
        pub listen: SocketAddr,
        /// A separate address for `/metrics`, if wanted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub metrics_listen: Option<SocketAddr>,
        /// Name of the channel: a label on every metric and a prefix in the store. Default `default`.
        #[serde(default = "default_channel")]
        pub channel: String,
        /// Which WeChat product this channel sends through. Default `wechatOfficialAccount`.
        #[serde(default)]
        pub provider: Provider,
        /// Base URL of the WeChat API (`https://api.weixin.qq.com`, or a sandbox). Required.
        pub api_base_url: String,
        /// The account's appid and secret. Required, from the file or the environment
        /// (`WXPUSH_APP_ID`, `WXPUSH_APP_SECRET`).
        #[serde(default)]
        pub credentials: Credentials,
        /// The bearer token producers must present. Required, from the file or the environment
        /// (`WXPUSH_AUTH_TOKEN`).
        #[serde(default)]
        pub auth: Auth,
        /// WeChat's server-URL callback (delivery events). Off unless a token is given.
        #[serde(default)]
        pub events: Events,
    }
    after {
        /// Limits of the HTTP API.
        #[serde(default)]
        pub api: ApiLimits,
        /// Graceful shutdown.
        #[serde(default)]
        pub shutdown: Shutdown,
    }
}

fn default_channel() -> String {
    "default".into()
}

/// The channel's credentials: each value inline (local runs only) or from a file. Which ones
/// are needed depends on `provider` ([`crate::policy::wecom::Credential`]): `appId` and
/// `appSecret` for WeChat, `corpId`, `corpSecret` and `agentId` for `wecomApp`, `webhookKey`
/// for `wecomRobot`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    /// The appid, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// A file holding the appid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id_file: Option<PathBuf>,
    /// The app secret, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    /// A file holding the app secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_file: Option<PathBuf>,
    /// The WeCom corp id, inline (`wecomApp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_id: Option<String>,
    /// A file holding the WeCom corp id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_id_file: Option<PathBuf>,
    /// The WeCom application's secret, inline (`wecomApp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_secret: Option<String>,
    /// A file holding the WeCom application's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corp_secret_file: Option<PathBuf>,
    /// The WeCom application's AgentId, inline (`wecomApp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// A file holding the WeCom application's AgentId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id_file: Option<PathBuf>,
    /// The WeCom group robot's webhook key, inline (`wecomRobot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_key: Option<String>,
    /// A file holding the WeCom group robot's webhook key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Credentials")
            .field("app_id", &self.app_id)
            .field("app_id_file", &self.app_id_file)
            .field("app_secret", &redacted(&self.app_secret))
            .field("app_secret_file", &self.app_secret_file)
            .field("corp_id", &self.corp_id)
            .field("corp_id_file", &self.corp_id_file)
            .field("corp_secret", &redacted(&self.corp_secret))
            .field("corp_secret_file", &self.corp_secret_file)
            .field("agent_id", &self.agent_id)
            .field("agent_id_file", &self.agent_id_file)
            .field("webhook_key", &redacted(&self.webhook_key))
            .field("webhook_key_file", &self.webhook_key_file)
            .finish()
    }
}

impl Credentials {
    /// The appid as a [`LocalSecret`] (inline or file).
    pub fn app_id(&self) -> Option<LocalSecret> {
        one_of(&self.app_id, &self.app_id_file)
    }

    /// The app secret as a [`LocalSecret`] (inline or file).
    pub fn app_secret(&self) -> Option<LocalSecret> {
        one_of(&self.app_secret, &self.app_secret_file)
    }

    /// The credential `which` as a [`LocalSecret`] (inline or file), when exactly one is set.
    pub fn get(&self, which: Credential) -> Option<LocalSecret> {
        let (inline, file) = self.slots(which);
        one_of(inline, file)
    }

    /// The inline value and the file of `which`.
    fn slots(&self, which: Credential) -> (&Option<String>, &Option<PathBuf>) {
        match which {
            Credential::AppId => (&self.app_id, &self.app_id_file),
            Credential::AppSecret => (&self.app_secret, &self.app_secret_file),
            Credential::CorpId => (&self.corp_id, &self.corp_id_file),
            Credential::CorpSecret => (&self.corp_secret, &self.corp_secret_file),
            Credential::AgentId => (&self.agent_id, &self.agent_id_file),
            Credential::WebhookKey => (&self.webhook_key, &self.webhook_key_file),
        }
    }

    /// Every problem of the credentials of a `provider` channel, naming the field: a needed
    /// one missing or given twice, another provider's one given, an agentId that is no
    /// positive integer.
    pub fn problems(&self, provider: Provider) -> Vec<Problem> {
        let mut problems = Vec::new();
        let needed = provider.credentials();
        for which in Credential::ALL {
            let (inline, file) = self.slots(which);
            let name = which.name();
            let field = format!("credentials.{name}");
            let how = match which.env() {
                Some(var) => format!("{name} or {name}File (or the environment variable {var})"),
                None => format!("{name} or {name}File"),
            };
            let message = if !needed.contains(&which) {
                (inline.is_some() || file.is_some()).then(|| {
                    format!(
                        "belongs to another provider; a {} channel takes {}",
                        provider.as_str(),
                        needed
                            .iter()
                            .map(|c| c.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            } else {
                match (inline, file) {
                    (None, None) => Some(format!("required, not set: set {how}")),
                    (Some(_), Some(_)) => Some(format!("set only one of {how}")),
                    (Some(v), None) if which == Credential::AgentId => {
                        crate::policy::wecom::parse_agent_id(v)
                            .err()
                            .map(str::to_string)
                    }
                    _ => None,
                }
            };
            if let Some(message) = message {
                problems.push(Problem { field, message });
            }
        }
        problems
    }
}

/// The producers' bearer token: inline (local runs only) or from a file.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Auth {
    /// The token, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the token (re-read when it changes, so a Secret can rotate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl Auth {
    /// The token as a [`LocalSecret`] (inline or file).
    pub fn token(&self) -> Option<LocalSecret> {
        one_of(&self.token, &self.token_file)
    }
}

fn one_of(inline: &Option<String>, file: &Option<PathBuf>) -> Option<LocalSecret> {
    match (inline, file) {
        (Some(v), None) => Some(LocalSecret::Inline(v.clone())),
        (None, Some(p)) => Some(LocalSecret::File { file: p.clone() }),
        _ => None,
    }
}

/// WeChat's server-URL callback, which brings TEMPLATESENDJOBFINISH events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Events {
    /// The server-URL token configured at WeChat; signatures are checked with it. Events are
    /// refused (404) while it is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<LocalSecret>,
    /// The message mode chosen at WeChat: `plain`, `compatible` or `safe`. Default: `safe` when
    /// `encodingAesKey` is set, else `plain`. The pusher never takes the mode from the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EventsMode>,
    /// The EncodingAESKey (43 characters), needed by `compatible` and `safe` and refused by
    /// `plain`. Recommended: in plain mode WeChat's signature covers only the timestamp and
    /// nonce, not the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key: Option<LocalSecret>,
    /// Requests whose signed `timestamp` is further than this from the pusher's clock are
    /// refused (403), and each `(timestamp, nonce)` is accepted once within it (a replayed or
    /// re-bodied request gets 403). Default `5m`.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: HumanDuration,
}

impl Events {
    /// The mode in force: `mode` when set, else `safe` with a key and `plain` without.
    pub fn effective_mode(&self) -> EventsMode {
        self.mode.unwrap_or(if self.encoding_aes_key.is_some() {
            EventsMode::Safe
        } else {
            EventsMode::Plain
        })
    }
}

/// WeChat's three message modes of the server-URL callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventsMode {
    /// Plain XML bodies. WeChat's `signature` covers the token, timestamp and nonce only, so
    /// the body is protected by nothing but the once-only `(timestamp, nonce)` rule.
    Plain,
    /// WeChat sends plain fields and an `<Encrypt>` element side by side. The pusher handles it
    /// exactly as `safe`: it checks `msg_signature` and reads only the decrypted payload.
    Compatible,
    /// Only an `<Encrypt>` element; every POST must carry `msg_signature` over it.
    Safe,
}

impl EventsMode {
    /// Whether POSTs must be sealed (`compatible` and `safe`).
    pub fn sealed(self) -> bool {
        !matches!(self, Self::Plain)
    }

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Compatible => "compatible",
            Self::Safe => "safe",
        }
    }
}

impl Default for Events {
    fn default() -> Self {
        Self {
            token: None,
            mode: None,
            encoding_aes_key: None,
            max_clock_skew: default_max_clock_skew(),
        }
    }
}

fn default_max_clock_skew() -> HumanDuration {
    HumanDuration::mins(5)
}

/// Limits of the pusher's HTTP API (its listener serves HTTP/1.1 only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiLimits {
    /// Largest request body accepted; larger ones get 413. Default `1048576` (1 MiB).
    pub max_body_bytes: u64,
    /// Most messages in one batch. Default `1000`.
    pub max_batch: u32,
    /// Longest wait for a request's complete header block, counted from the moment the server
    /// starts waiting for it: on a new connection, and on a kept-alive one after the previous
    /// answer (so it also bounds how long an idle kept-alive connection stays open). The
    /// connection is closed when it runs out. Default `10s`.
    pub header_read_timeout: HumanDuration,
    /// Longest time to read a request's body, and to handle the request at all (from its
    /// header block on); past it the request is answered 408 and the connection closed.
    /// Default `30s`.
    pub body_read_timeout: HumanDuration,
    /// A connection with no bytes moving in either direction for this long is closed (a
    /// client that stops reading its answer, a stalled body). Default `60s`.
    pub idle_timeout: HumanDuration,
    /// Requests handled at once; beyond it requests get 503 with `Retry-After` at once.
    /// `/healthz`, `/readyz` and `/metrics` are not counted. Default `1024`.
    pub max_concurrent_requests: u32,
    /// Open connections at most; further ones are closed as soon as they are accepted. The
    /// pusher also keeps it to half of its open-file limit (`ulimit -n`), leaving the rest to
    /// the store and its outgoing connections. Default `4096`.
    pub max_connections: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_batch: 1000,
            header_read_timeout: HumanDuration::secs(10),
            body_read_timeout: HumanDuration::secs(30),
            idle_timeout: HumanDuration::secs(60),
            max_concurrent_requests: 1024,
            max_connections: 4096,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Shutdown {
    /// After SIGTERM, how long in-flight sends may take to finish; the rest stays queued.
    /// Default `20s` (the operator sets the pod's grace period a little above it).
    pub drain_timeout: HumanDuration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            drain_timeout: HumanDuration::secs(20),
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (the reason is in the message, once).
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong (not found, permission denied...).
        reason: std::io::Error,
    },
    /// The YAML does not match the schema (unknown field, wrong type, bad duration...).
    #[error("invalid config: {0}")]
    Parse(String),
    /// An environment override holds a bad value.
    #[error("environment variable {var} (overrides {field}): {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// The field it overrides.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The values parse but do not make sense together.
    #[error("invalid config: {}", .0.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// One thing wrong with a config, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a path (`retry.initialBackoff`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Placeholders for missing required top-level fields, so that the rest of the file can still
/// be parsed and checked and every problem reported in one run. A config holding one is never
/// returned: the field is reported missing.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("listen", "0.0.0.0:0"),
    ("apiBaseUrl", "http://required.invalid"),
];

/// What the config's schema says of the keys given: every unknown key (with the nearest known
/// one and its line) and every missing required one.
fn schema_problems(text: &str, given: &serde_json::Value) -> (Vec<Problem>, Vec<Problem>) {
    let schema = serde_json::to_value(schemars::schema_for!(PusherConfig)).unwrap_or_default();
    let defs = schema.get("$defs").cloned().unwrap_or_default();
    let mut unknown = Vec::new();
    let mut missing = Vec::new();
    walk(&schema, &defs, given, "", text, &mut unknown, &mut missing);
    (unknown, missing)
}

/// Follows `$ref`s and optional wrappers (`anyOf` with `null`) to the schema of an object;
/// `None` where the schema offers several shapes (a secret: a string, `{file}` or `{env}`).
fn resolve<'a>(
    mut s: &'a serde_json::Value,
    defs: &'a serde_json::Value,
) -> Option<&'a serde_json::Value> {
    for _ in 0..16 {
        if let Some(r) = s.get("$ref").and_then(serde_json::Value::as_str) {
            s = defs.get(r.rsplit('/').next()?)?;
            continue;
        }
        if let Some(any) = s
            .get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(serde_json::Value::as_array)
        {
            let mut shapes = any
                .iter()
                .filter(|b| b.get("type").and_then(serde_json::Value::as_str) != Some("null"));
            match (shapes.next(), shapes.next()) {
                (Some(one), None) => {
                    s = one;
                    continue;
                }
                _ => return None,
            }
        }
        return Some(s);
    }
    None
}

fn walk(
    schema: &serde_json::Value,
    defs: &serde_json::Value,
    given: &serde_json::Value,
    at: &str,
    text: &str,
    unknown: &mut Vec<Problem>,
    missing: &mut Vec<Problem>,
) {
    let Some(s) = resolve(schema, defs) else {
        return;
    };
    let (Some(props), serde_json::Value::Object(g)) = (
        s.get("properties").and_then(serde_json::Value::as_object),
        given,
    ) else {
        return;
    };
    let path = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    for (key, value) in g {
        match props.get(key) {
            Some(sub) => walk(sub, defs, value, &path(key), text, unknown, missing),
            None if value.is_null() => {}
            None => {
                let mut message = "unknown field".to_string();
                if let Some(near) = nearest(key, props.keys().map(String::as_str)) {
                    message.push_str(&format!("; did you mean `{near}`?"));
                }
                if let Some(line) = line_of(text, &path(key)) {
                    message.push_str(&format!(" (line {line})"));
                }
                unknown.push(Problem {
                    field: path(key),
                    message,
                });
            }
        }
    }
    for req in s
        .get("required")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
    {
        if g.get(req).is_none_or(serde_json::Value::is_null) {
            let var = ENV_OVERRIDES
                .iter()
                .find(|(_, field)| *field == path(req))
                .map(|(var, _)| format!(" (or the environment variable {var})"))
                .unwrap_or_default();
            missing.push(Problem {
                field: path(req),
                message: format!("required, not set{var}"),
            });
        }
    }
}

/// The known key closest to `key` by edit distance, when it is close enough to be a typo.
fn nearest<'a>(key: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    known
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The 1-based line where the field at `path` (`retry.maxAttempts`) is written: each key of
/// the path is looked for as a mapping key within its parent's block (more indented lines
/// after it) or on its parent's line (flow style); a top-level key starts its line.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l))
        .collect();
    let mut parent: Option<(usize, usize)> = None;
    for key in path.split('.') {
        let pattern = format!("{key}:");
        let has_key = |code: &str| {
            code.match_indices(&pattern).any(|(i, _)| {
                code[..i]
                    .chars()
                    .last()
                    .is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '-' | '"' | '\''))
            })
        };
        let mut found = None;
        for (i, code) in lines.iter().enumerate().skip(parent.map_or(0, |(l, _)| l)) {
            if code.trim().is_empty() || code.trim_start().starts_with('#') {
                continue;
            }
            let indent = code.len() - code.trim_start().len();
            match parent {
                None if indent > 0 || !code.starts_with(&pattern) => continue,
                Some((line, _)) if i == line => {}
                Some((_, parent_indent)) if indent <= parent_indent => break,
                _ => {}
            }
            if has_key(code) {
                found = Some((i, indent));
                break;
            }
        }
        parent = Some(found?);
    }
    parent.map(|(line, _)| line + 1)
}

/// Adds the line of each problem's field, where the file has it.
fn with_lines(text: &str, problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|mut p| {
            if !p.message.contains("(line ")
                && let Some(line) = line_of(text, &p.field)
            {
                p.message.push_str(&format!(" (line {line})"));
            }
            p
        })
        .collect()
}

impl PusherConfig {
    /// Parses YAML text, without environment overrides or validation.
    ///
    /// The file is strict: an unknown field anywhere is an error naming it, with the nearest
    /// known key and its line (a typo would otherwise be silently ignored). The policy types
    /// themselves accept unknown fields, so that an operator reading a `PushChannel` written for
    /// a newer CRD is not broken by it; the strictness of the file is checked here, against the
    /// config's schema. Every unknown and every missing required field is reported at once.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let (config, missing) = Self::parse(text, &|_| None)?;
        if missing.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(missing))
        }
    }

    /// Parses YAML text, applies the environment overrides (read through `get`) and validates,
    /// reporting every problem of the file in one error: unknown fields, missing required
    /// fields (which the environment may supply: `WXPUSH_LISTEN`, `WXPUSH_API_BASE_URL`,
    /// `WXPUSH_APP_ID`, `WXPUSH_APP_SECRET`, `WXPUSH_AUTH_TOKEN`) and invalid values.
    pub fn from_yaml_with_env(
        text: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (mut config, mut problems) = Self::parse(text, get)?;
        config.apply_env(get)?;
        if let Err(ConfigError::Invalid(more)) = config.validate() {
            problems.extend(with_lines(text, more));
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The config and the required fields missing from it. Missing top-level fields are taken
    /// from the environment where it has them, else filled with a placeholder so that the rest
    /// can be checked (they stay in the returned list).
    fn parse(
        text: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<Problem>), ConfigError> {
        let mut given: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if given.is_null() {
            given = serde_json::Value::Object(serde_json::Map::new());
        }
        let (mut problems, missing) = schema_problems(text, &given);
        let mut still_missing = Vec::new();
        let mut filled = false;
        for p in missing {
            let from_env = ENV_OVERRIDES
                .iter()
                .find(|(_, field)| *field == p.field)
                .and_then(|(var, _)| get(var));
            let placeholder = PLACEHOLDERS
                .iter()
                .find(|(field, _)| *field == p.field)
                .map(|(_, v)| (*v).to_string());
            match (from_env, placeholder, given.as_object_mut()) {
                (Some(v), _, Some(map)) => {
                    map.insert(p.field.clone(), serde_json::Value::String(v));
                    filled = true;
                }
                (None, Some(v), Some(map)) => {
                    map.insert(p.field.clone(), serde_json::Value::String(v));
                    filled = true;
                    still_missing.push(p);
                }
                _ => problems.push(p),
            }
        }
        if !problems.is_empty() {
            problems.extend(still_missing);
            return Err(ConfigError::Invalid(problems));
        }
        // Straight from the text where nothing was filled in, so that a type error names its
        // line and column.
        let config: Self = if filled {
            serde_json::from_value(given).map_err(|e| ConfigError::Parse(e.to_string()))?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        Ok((config, still_missing))
    }

    /// Applies the [`ENV_OVERRIDES`], reading variables through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let addr = |var: &'static str, field: &'static str, v: String| {
            v.parse::<SocketAddr>().map_err(|e| ConfigError::Env {
                var,
                field,
                message: e.to_string(),
            })
        };
        if let Some(v) = get("WXPUSH_LISTEN") {
            self.listen = addr("WXPUSH_LISTEN", "listen", v)?;
        }
        if let Some(v) = get("WXPUSH_METRICS_LISTEN") {
            self.metrics_listen = Some(addr("WXPUSH_METRICS_LISTEN", "metricsListen", v)?);
        }
        if let Some(v) = get("WXPUSH_CHANNEL") {
            self.channel = v;
        }
        if let Some(v) = get("WXPUSH_API_BASE_URL") {
            self.api_base_url = v;
        }
        if let Some(v) = get("WXPUSH_APP_ID") {
            self.credentials.app_id = Some(v);
            self.credentials.app_id_file = None;
        }
        if let Some(v) = get("WXPUSH_APP_SECRET") {
            self.credentials.app_secret = Some(v);
            self.credentials.app_secret_file = None;
        }
        if let Some(v) = get("WXPUSH_CORP_SECRET") {
            self.credentials.corp_secret = Some(v);
            self.credentials.corp_secret_file = None;
        }
        if let Some(v) = get("WXPUSH_WEBHOOK_KEY") {
            self.credentials.webhook_key = Some(v);
            self.credentials.webhook_key_file = None;
        }
        if let Some(v) = get("WXPUSH_AUTH_TOKEN") {
            self.auth.token = Some(v);
            self.auth.token_file = None;
        }
        if let Some(v) = get("WXPUSH_QUEUE_PATH") {
            match self.queue.embedded.as_mut() {
                Some(e) => e.path = v,
                None => {
                    return Err(ConfigError::Env {
                        var: "WXPUSH_QUEUE_PATH",
                        field: "queue.embedded.path",
                        message: "the queue is not embedded".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks what the types alone cannot: rules across fields, exactly-one choices, URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: &str| {
            problems.push(Problem {
                field: field.into(),
                message: message.into(),
            });
        };
        self.check_channel(&mut bad);
        self.check_auth_and_events(&mut bad);
        self.check_queue(&mut bad);
        self.check_policies(&mut bad);
        self.check_api_limits(&mut bad);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The template refresh, the channel name, its endpoint, credentials and provider.
    fn check_channel(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.templates.refresh_interval.get() < std::time::Duration::from_secs(1) {
            bad("templates.refreshInterval", "must be at least 1s");
        }
        if self.channel.is_empty()
            || !self
                .channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bad("channel", "use letters, digits, '-' and '_'");
        }
        match url::Url::parse(&self.api_base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => bad("apiBaseUrl", "must be an http(s) URL"),
        }
        for p in self.credentials.problems(self.provider) {
            bad(&p.field, &p.message);
        }
        if !self.provider.has_events() && self.events.token.is_some() {
            bad(
                "events.token",
                &format!("a {} channel has no events", self.provider.as_str()),
            );
        }
    }

    /// The producers' token and the events' mode and key.
    fn check_auth_and_events(&self, bad: &mut impl FnMut(&str, &str)) {
        for (field, a, b, message) in [(
            "auth.token",
            self.auth.token.is_some(),
            self.auth.token_file.is_some(),
            "token or tokenFile (or the environment variable WXPUSH_AUTH_TOKEN)",
        )] {
            match (a, b) {
                (false, false) => bad(field, &format!("required, not set: set {message}")),
                (true, true) => bad(field, &format!("set only one of {message}")),
                _ => {}
            }
        }
        if self
            .auth
            .token
            .as_deref()
            .is_some_and(|t| t.trim().len() < 16)
        {
            bad("auth.token", "use at least 16 characters");
        }
        match (self.events.effective_mode(), &self.events.encoding_aes_key) {
            (EventsMode::Plain, Some(_)) => bad(
                "events.mode",
                "plain mode takes no encodingAesKey: set mode to safe or compatible, or remove \
                 the key",
            ),
            (m, None) if m.sealed() => bad(
                "events.encodingAesKey",
                &format!("{} mode needs the EncodingAESKey", m.as_str()),
            ),
            _ => {}
        }
    }

    /// The queue: exactly one kind, and the embedded store's path and size.
    fn check_queue(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.queue.kind().is_none() {
            bad("queue", "set exactly one queue kind: embedded or redis");
        }
        if let Some(QueueKind::Embedded(e)) = self.queue.kind() {
            if e.path.is_empty() {
                bad("queue.embedded.path", "must not be empty");
            }
            if e.max_bytes
                .as_deref()
                .is_some_and(|b| crate::policy::disk::quantity_bytes(b).is_none_or(|v| v == 0))
            {
                bad(
                    "queue.embedded.maxBytes",
                    "must be a positive size such as 800Mi or 1Gi",
                );
            }
        }
    }

    /// Retries, rate limit, concurrency and the circuit breaker.
    fn check_policies(&self, bad: &mut impl FnMut(&str, &str)) {
        for (name, r) in [
            ("retry", &self.retry),
            ("callbacks.retry", &self.callbacks.retry),
        ] {
            if r.initial_backoff > r.max_backoff {
                bad(
                    &format!("{name}.initialBackoff"),
                    "must not exceed maxBackoff",
                );
            }
            if r.max_attempts == 0 {
                bad(&format!("{name}.maxAttempts"), "must be at least 1");
            }
            if !(1.0..=10.0).contains(&r.multiplier) {
                bad(&format!("{name}.multiplier"), "must be between 1 and 10");
            }
            if !(0.0..=1.0).contains(&r.jitter) {
                bad(&format!("{name}.jitter"), "must be between 0 and 1");
            }
        }
        if self.rate_limit.per_second == 0 || self.rate_limit.burst == 0 {
            bad("rateLimit", "perSecond and burst must be at least 1");
        }
        if self.concurrency.max_in_flight == 0 {
            bad("concurrency.maxInFlight", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.pool.closes_per_second) {
            bad("pool.closesPerSecond", "must be between 1 and 10000");
        }
        if self.pool.idle_timeout.get() < std::time::Duration::from_millis(100) {
            bad("pool.idleTimeout", "must be at least 100ms");
        }
        let cb = &self.circuit_breaker;
        if !(0.0..=1.0).contains(&cb.failure_ratio) || cb.failure_ratio == 0.0 {
            bad("circuitBreaker.failureRatio", "must be in (0, 1]");
        }
    }

    /// The HTTP API's limits and timeouts.
    fn check_api_limits(&self, bad: &mut impl FnMut(&str, &str)) {
        if self.api.max_batch == 0 || self.api.max_batch > 10_000 {
            bad("api.maxBatch", "must be between 1 and 10000");
        }
        if self.api.max_concurrent_requests == 0 {
            bad("api.maxConcurrentRequests", "must be at least 1");
        }
        if self.api.max_connections == 0 {
            bad("api.maxConnections", "must be at least 1");
        }
        for (field, d) in [
            ("api.headerReadTimeout", &self.api.header_read_timeout),
            ("api.bodyReadTimeout", &self.api.body_read_timeout),
            ("api.idleTimeout", &self.api.idle_timeout),
        ] {
            if d.get().is_zero() {
                bad(field, "must be more than 0");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Retry;

    const MINIMAL: &str = "
listen: 127.0.0.1:8080
apiBaseUrl: http://127.0.0.1:9000
credentials: {appId: wx123, appSecret: s3cret}
auth: {token: a-long-enough-token}
";

    #[test]
    fn the_config_file_refuses_unknown_fields_with_their_path() {
        for (typo, path) in [
            ("retry: {maxAtempts: 3}", "retry.maxAtempts"),
            ("queue: {embedded: {pth: /x}}", "queue.embedded.pth"),
            ("timeouts: {conect: 5s}", "timeouts.conect"),
            ("colour: blue", "colour"),
        ] {
            let err = PusherConfig::from_yaml(&format!("{MINIMAL}{typo}\n")).expect_err(typo);
            assert!(err.to_string().contains(path), "{typo}: {err}");
        }
        let c = PusherConfig::from_yaml(&format!(
            "{MINIMAL}retry: {{maxAttempts: 3, afterWindow: resend}}\nqueue: {{embedded: {{unhealthyAfter: 1m}}}}\n"
        ))
        .expect("known fields parse");
        assert_eq!(c.retry.max_attempts, 3);
    }

    #[test]
    fn a_push_channel_with_a_spec_field_unknown_to_this_version_is_read() {
        let pc: crate::crd::PushChannel = serde_json::from_value(serde_json::json!({
            "apiVersion": "wxpush.io/v1alpha1", "kind": "PushChannel",
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {
                "credentials": {"secretRef": {"name": "wx"}},
                "auth": {"secretRef": {"name": "auth", "key": "token"}},
                "fieldFromANewerCrd": {"x": 1},
                "retry": {"maxAttempts": 4, "newerRetryKnob": true},
            }
        }))
        .expect("unknown spec fields are ignored");
        assert_eq!(pc.spec.retry.max_attempts, 4);
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = PusherConfig::from_yaml(MINIMAL).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.channel, "default");
        assert_eq!(c.retry, Retry::default());
        assert!(matches!(c.queue.kind(), Some(QueueKind::Embedded(_))));
    }

    #[test]
    fn env_overrides_replace_fields() {
        let mut c = PusherConfig::from_yaml(MINIMAL).expect("parses");
        c.apply_env(|k| match k {
            "WXPUSH_API_BASE_URL" => Some("http://10.0.0.1:1".into()),
            "WXPUSH_APP_SECRET" => Some("other".into()),
            _ => None,
        })
        .expect("applies");
        assert_eq!(c.api_base_url, "http://10.0.0.1:1");
        assert_eq!(c.credentials.app_secret.as_deref(), Some("other"));
        let err = c
            .apply_env(|k| (k == "WXPUSH_LISTEN").then(|| "nope".to_string()))
            .expect_err("bad address");
        assert!(err.to_string().contains("WXPUSH_LISTEN"), "{err}");
    }

    #[test]
    fn problems_name_their_field() {
        let text = format!("{MINIMAL}retry: {{initialBackoff: 1m, maxBackoff: 1s}}\n");
        let c = PusherConfig::from_yaml(&text).expect("parses");
        let err = c.validate().expect_err("initial > max").to_string();
        assert!(err.contains("retry.initialBackoff"), "{err}");
        let err = PusherConfig::from_yaml(&format!("{MINIMAL}tiemouts: {{}}\n"))
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("tiemouts"), "{err}");
    }

    #[test]
    fn every_missing_required_field_is_listed_in_one_run() {
        let text = "# the service\nlisten: 127.0.0.1:8080\napiBaseUrl: http://127.0.0.1:9000\n";
        let err = PusherConfig::from_yaml_with_env(text, &|_| None).expect_err("three missing");
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["credentials.appId", "credentials.appSecret", "auth.token"]
        );
        // An empty file: the top-level required fields too, none with a made-up line.
        let err = PusherConfig::from_yaml_with_env("channel: shop\n", &|_| None)
            .expect_err("five missing")
            .to_string();
        for field in [
            "listen",
            "apiBaseUrl",
            "credentials.appId",
            "credentials.appSecret",
            "auth.token",
        ] {
            assert!(
                err.contains(&format!("{field}: required, not set")),
                "{field}: {err}"
            );
        }
        assert!(!err.contains("line"), "{err}");
    }

    #[test]
    fn every_wrong_wecom_field_is_named() {
        let text = "listen: 127.0.0.1:8080\napiBaseUrl: http://127.0.0.1:9000\n\
                    provider: wecomApp\nauth: {token: a-long-enough-token}\n\
                    credentials: {appId: wx1, corpSecret: s, corpSecretFile: /s, \
                    agentId: app, webhookKey: k}\n";
        let err = PusherConfig::from_yaml_with_env(text, &|_| None).expect_err("five wrong");
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "credentials.appId",
                "credentials.corpId",
                "credentials.corpSecret",
                "credentials.agentId",
                "credentials.webhookKey",
            ]
        );
        let robot = "listen: 127.0.0.1:8080\napiBaseUrl: http://127.0.0.1:9000\n\
                     provider: wecomRobot\nauth: {token: a-long-enough-token}\n\
                     credentials: {}\nevents: {token: t}\n";
        let err = PusherConfig::from_yaml_with_env(robot, &|_| None)
            .expect_err("no key")
            .to_string();
        assert!(err.contains("credentials.webhookKey: required"), "{err}");
        assert!(
            err.contains("events.token: a wecomRobot channel has no events"),
            "{err}"
        );
        let ok = "listen: 127.0.0.1:8080\napiBaseUrl: http://127.0.0.1:9000\n\
                  provider: wecomApp\nauth: {token: a-long-enough-token}\n\
                  credentials: {corpId: ww1, corpSecret: s, agentId: \"1000002\"}\n";
        PusherConfig::from_yaml_with_env(ok, &|_| None).expect("valid");
    }

    #[test]
    fn the_pool_pacing_is_checked() {
        for (pool, field) in [
            ("{closesPerSecond: 0}", "pool.closesPerSecond"),
            ("{closesPerSecond: 20000}", "pool.closesPerSecond"),
            ("{idleTimeout: 10ms}", "pool.idleTimeout"),
        ] {
            let c = PusherConfig::from_yaml(&format!("{MINIMAL}pool: {pool}\n")).expect("parses");
            let err = c.validate().expect_err(pool).to_string();
            assert!(err.contains(field), "{pool}: {err}");
        }
        let c = PusherConfig::from_yaml(&format!("{MINIMAL}pool: {{closesPerSecond: 50}}\n"))
            .expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.pool.closes_per_second, 50);
    }

    #[test]
    fn invalid_values_name_their_line() {
        let text = format!(
            "{MINIMAL}callbacks:\n  retry:\n    maxAttempts: 5\nretry:\n  maxAttempts: 0\n"
        );
        let err = PusherConfig::from_yaml_with_env(&text, &|_| None)
            .expect_err("zero attempts")
            .to_string();
        assert!(
            err.contains("retry.maxAttempts: must be at least 1 (line 10)"),
            "{err}"
        );
    }

    #[test]
    fn the_environment_alone_supplies_credentials_the_token_and_addresses() {
        let env = |k: &str| match k {
            "WXPUSH_LISTEN" => Some("127.0.0.1:0".to_string()),
            "WXPUSH_API_BASE_URL" => Some("http://127.0.0.1:9".to_string()),
            "WXPUSH_APP_ID" => Some("wx123".to_string()),
            "WXPUSH_APP_SECRET" => Some("s3cret".to_string()),
            "WXPUSH_AUTH_TOKEN" => Some("a-long-enough-token\n".to_string()),
            _ => None,
        };
        let c = PusherConfig::from_yaml_with_env("channel: shop\n", &env).expect("env suffices");
        assert_eq!(c.credentials.app_id.as_deref(), Some("wx123"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert!(c.auth.token.is_some());
    }

    #[test]
    fn a_misspelt_nested_key_gets_the_nearest_key_and_its_line() {
        let text =
            format!("{MINIMAL}retry:\n  maxAtempts: 3\nqueue: {{embedded: {{retension: 1h}}}}\n");
        let err = PusherConfig::from_yaml(&text)
            .expect_err("typos")
            .to_string();
        assert!(
            err.contains("retry.maxAtempts: unknown field; did you mean `maxAttempts`? (line 7)"),
            "{err}"
        );
        assert!(
            err.contains(
                "queue.embedded.retension: unknown field; did you mean `retention`? (line 8)"
            ),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = PusherConfig::from_yaml(MINIMAL).expect("parses");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret") && !dbg.contains("a-long-enough-token"),
            "{dbg}"
        );
    }
}
