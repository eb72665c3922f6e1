//! `wxpush-sandbox`: the WeChat API stand-in, as a program. A thin wrapper around
//! `wxpush_sandbox`; see `docs/sandbox.md`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use wxpush_api::policy::HumanDuration;
use wxpush_sandbox::config::defaults;
use wxpush_sandbox::faults::{DEFAULT_5XX_STATUS, DEFAULT_HANG, DEFAULT_OVERLOAD_LATENCY};
use wxpush_sandbox::wecom::config as wecom_defaults;
use wxpush_sandbox::wecom::config::parse_app;
use wxpush_sandbox::{
    EventConfig, EventMode, FaultConfig, OutageSpec, Sandbox, SandboxConfig, TemplateDef, WeComApp,
    WeComCallbackConfig, WeComConfig, parse_list,
};

/// A quota or limit: a number, or `unlimited`.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<u64>);

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("unlimited"),
        }
    }
}

fn parse_limit(s: &str) -> Result<Limit, String> {
    match s {
        "unlimited" | "none" => Ok(Limit(None)),
        n => n
            .parse()
            .map(|n| Limit(Some(n)))
            .map_err(|e| format!("{e}: expected a number or `unlimited`")),
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

/// `CODE=SHARE`, e.g. `-1=0.1` or `45011=0.05`.
fn parse_errcode_share(s: &str) -> Result<(i64, f64), String> {
    let (code, share) = s
        .split_once('=')
        .ok_or("expected CODE=SHARE, e.g. -1=0.1")?;
    let code: i64 = code.trim().parse().map_err(|e| format!("errcode: {e}"))?;
    Ok((code, parse_share(share.trim())?))
}

/// The templates of `--template-file` (a newtype: clap reads `Option<Vec<_>>` as a list flag).
#[derive(Debug, Clone)]
struct Catalogue(Vec<TemplateDef>);

fn parse_catalogue_file(path: &str) -> Result<Catalogue, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    wxpush_sandbox::templates::parse_catalogue(&text)
        .map(Catalogue)
        .map_err(|e| format!("{path}: {e}"))
}

fn parse_set(s: &str) -> Result<HashSet<String>, String> {
    parse_list(s).map_err(|e| format!("cannot read {s}: {e}"))
}

/// A faithful, fast stand-in for the WeChat API: access_token (classic and stable), template
/// and subscribe message sends, TEMPLATESENDJOBFINISH events, and fault injection; and for
/// WeCom's: gettoken, message/send, message/recall, group robots and the callback URL.
///
/// Prints `wxpush-sandbox listening on http://ADDR` on stdout once it accepts connections.
/// Admin routes: GET /__stats, POST /__reset, GET|PUT|PATCH /__faults,
/// POST /__tokens/invalidate, GET /__config, GET /__health, GET /__deliveries,
/// GET|POST /__subscriptions, GET /__wecom/messages, POST /__wecom/verify,
/// POST /__wecom/events.
#[derive(Debug, Parser)]
#[command(name = "wxpush-sandbox", version, max_term_width = 100)]
struct Cli {
    /// Address to listen on; port 0 lets the OS pick (the chosen address is printed).
    #[arg(long, env = "WXPUSH_SANDBOX_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The account's appid (wrong appid → 40013).
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_APPID",
        default_value = defaults::APPID
    )]
    appid: String,
    /// The account's secret (wrong secret → 40125).
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_SECRET",
        default_value = defaults::SECRET,
        hide_env_values = true
    )]
    secret: String,
    /// The account's original id (`gh_…`), sent as the events' ToUserName.
    #[arg(long, default_value = defaults::ACCOUNT_ID)]
    account_id: String,

    // --- access_token ---
    /// Lifetime of every access_token (after it: 42001).
    #[arg(long, default_value_t = defaults::TOKEN_EXPIRES_IN, help_heading = "Tokens")]
    token_expires_in: HumanDuration,
    /// How long a classic token keeps working after a newer one is issued (then: 40001).
    #[arg(long, default_value_t = defaults::CLASSIC_GRACE, help_heading = "Tokens")]
    classic_grace: HumanDuration,
    /// The stable API issues a new token when the current one has less than this left
    /// (capped at half of --token-expires-in).
    #[arg(long, default_value_t = defaults::STABLE_RENEW_BEFORE, help_heading = "Tokens")]
    stable_renew_before: HumanDuration,
    /// Classic token calls per day (then 45009); a number or `unlimited`.
    #[arg(long, default_value_t = Limit(defaults::CLASSIC_DAILY_QUOTA), value_parser = parse_limit, help_heading = "Tokens")]
    classic_token_daily_quota: Limit,
    /// Stable token calls per minute (then 45011).
    #[arg(long, default_value_t = Limit(defaults::STABLE_MINUTE_QUOTA), value_parser = parse_limit, help_heading = "Tokens")]
    stable_token_minute_quota: Limit,
    /// Stable token calls per day (then 45009).
    #[arg(long, default_value_t = Limit(defaults::STABLE_DAILY_QUOTA), value_parser = parse_limit, help_heading = "Tokens")]
    stable_token_daily_quota: Limit,
    /// `force_refresh: true` calls allowed per day (then 45009).
    #[arg(long, default_value_t = defaults::FORCE_REFRESH_DAILY_LIMIT, help_heading = "Tokens")]
    force_refresh_daily_limit: u32,
    /// Minimum time between two `force_refresh: true` calls (else 45011).
    #[arg(long, default_value_t = defaults::FORCE_REFRESH_INTERVAL, help_heading = "Tokens")]
    force_refresh_interval: HumanDuration,

    // --- sends ---
    /// How long (touser, client_msg_id) de-duplicates.
    #[arg(long, default_value_t = defaults::DEDUP_WINDOW, help_heading = "Sends")]
    dedup_window: HumanDuration,
    /// Sends per day per send API (then 45009); a number or `unlimited`.
    #[arg(long, default_value_t = Limit(defaults::DAILY_QUOTA), value_parser = parse_limit, help_heading = "Sends")]
    daily_quota: Limit,
    /// Sends per minute per send API (then 45011); a number or `unlimited`.
    #[arg(long, default_value_t = Limit(defaults::MINUTE_QUOTA), value_parser = parse_limit, help_heading = "Sends")]
    minute_quota: Limit,
    /// Sends per minute to one openid (then 43117); a number or `unlimited`.
    #[arg(long, default_value_t = Limit(defaults::OPENID_MINUTE_LIMIT), value_parser = parse_limit, help_heading = "Sends")]
    openid_minute_limit: Limit,
    /// Known openids, `a,b,c` or `@FILE` (one per line); others get 40003. Default: any.
    #[arg(long, value_parser = parse_set, help_heading = "Sends")]
    users: Option<HashSet<String>>,
    /// Openids that do not follow the account: 43004 on template and bizsend sends.
    #[arg(long, value_parser = parse_set, help_heading = "Sends")]
    non_followers: Option<HashSet<String>>,
    /// Openids that refused subscription messages: 43101 on subscribe and bizsend sends.
    #[arg(long, value_parser = parse_set, help_heading = "Sends")]
    refused_subscribers: Option<HashSet<String>>,
    /// Known template ids, `a,b` or `@FILE`; others get 40037. Default: any.
    #[arg(long, value_parser = parse_set, help_heading = "Sends")]
    templates: Option<HashSet<String>>,
    /// The account's template catalogue, a JSON file: `[{"template_id", "kind":
    /// "template"|"subscribe", "title", "keywords": ["thing1", ...], "one_time", "const_values"}]`.
    /// The template-list APIs answer from it and sends are checked against it (40037, 47003,
    /// 43101). Default: empty lists, sends not checked against templates.
    #[arg(long, value_parser = parse_catalogue_file, help_heading = "Sends")]
    template_file: Option<Catalogue>,
    /// The account's IP allowlist, `a,b` (IPv4 or IPv6): token calls from any other address get
    /// 40164 naming it. Default: any address.
    #[arg(long, value_delimiter = ',', help_heading = "Tokens")]
    ip_allowlist: Option<Vec<std::net::IpAddr>>,

    // --- events ---
    /// Server URL to POST TEMPLATESENDJOBFINISH events to (none: no events).
    #[arg(long, help_heading = "Events")]
    event_url: Option<String>,
    /// Server-URL token for `signature` / `msg_signature`.
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_EVENT_TOKEN",
        default_value = defaults::EVENT_TOKEN,
        hide_env_values = true,
        help_heading = "Events"
    )]
    event_token: String,
    /// 43-character EncodingAESKey (needed by compat and safe modes).
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_EVENT_AES_KEY",
        hide_env_values = true,
        help_heading = "Events"
    )]
    event_aes_key: Option<String>,
    /// Message mode: plain, compat (plain + <Encrypt>) or safe (only <Encrypt>). Default: safe
    /// when --event-aes-key is set, else plain.
    #[arg(long, value_enum, help_heading = "Events")]
    event_mode: Option<EventMode>,
    /// Share of events with Status `failed:user block`.
    #[arg(long, default_value_t = EventConfig::default().user_block_share, value_parser = parse_share, help_heading = "Events")]
    event_user_block_share: f64,
    /// Share of events with Status `failed: system failed`.
    #[arg(long, default_value_t = EventConfig::default().system_failed_share, value_parser = parse_share, help_heading = "Events")]
    event_system_failed_share: f64,
    /// Delay between a send's answer and its event.
    #[arg(long, default_value_t = defaults::EVENT_DELAY, help_heading = "Events")]
    event_delay: HumanDuration,
    /// How long to wait for the server's answer before retrying.
    #[arg(long, default_value_t = defaults::EVENT_TIMEOUT, help_heading = "Events")]
    event_timeout: HumanDuration,
    /// Retries after a timeout, transport error or non-2xx answer.
    #[arg(long, default_value_t = defaults::EVENT_RETRIES, help_heading = "Events")]
    event_retries: u32,
    /// Send MsgID 0 in events of sends that carried a client_msg_id (unconfirmed behaviour).
    #[arg(long, help_heading = "Events")]
    event_msgid_zero_with_client_msg_id: bool,

    // --- faults ---
    /// Fixed latency added to every WeChat API request.
    #[arg(long, default_value_t = HumanDuration(FaultConfig::default().latency), help_heading = "Faults")]
    fault_latency: HumanDuration,
    /// Extra latency drawn uniformly from [0, JITTER].
    #[arg(long, default_value_t = HumanDuration(FaultConfig::default().jitter), help_heading = "Faults")]
    fault_jitter: HumanDuration,
    /// Share of requests processed but answered only after --fault-hang.
    #[arg(long, default_value_t = FaultConfig::default().hang_share, value_parser = parse_share, help_heading = "Faults")]
    fault_hang_share: f64,
    /// How long hanging requests hang.
    #[arg(long, default_value_t = DEFAULT_HANG, help_heading = "Faults")]
    fault_hang: HumanDuration,
    /// Share of sends answered with an errcode, as CODE=SHARE (repeatable), e.g. -1=0.1.
    #[arg(long = "fault-errcode", value_parser = parse_errcode_share, help_heading = "Faults")]
    fault_errcodes: Vec<(i64, f64)>,
    /// Share of requests answered with HTTP --fault-5xx-status.
    #[arg(long, default_value_t = FaultConfig::default().http_5xx_share, value_parser = parse_share, help_heading = "Faults")]
    fault_5xx_share: f64,
    /// Status for --fault-5xx-share.
    #[arg(long, default_value_t = DEFAULT_5XX_STATUS, help_heading = "Faults")]
    fault_5xx_status: u16,
    /// Share of requests whose connection is reset (TCP RST).
    #[arg(long, default_value_t = FaultConfig::default().reset_share, value_parser = parse_share, help_heading = "Faults")]
    fault_reset_share: f64,
    /// Outage (connections refused) lasting this long...
    #[arg(long, help_heading = "Faults")]
    fault_outage_for: Option<HumanDuration>,
    /// ...starting this long after start-up.
    #[arg(long, default_value_t = HumanDuration::secs(0), help_heading = "Faults")]
    fault_outage_after: HumanDuration,
    /// Revoke every access_token this often (sends then get 40001).
    #[arg(long, help_heading = "Faults")]
    fault_token_invalidate_every: Option<HumanDuration>,
    /// Overload mode: requests served at once before each further one adds
    /// --fault-overload-latency-per-request.
    #[arg(long, help_heading = "Faults")]
    fault_capacity: Option<u32>,
    /// Latency added per request in flight beyond --fault-capacity.
    #[arg(long, default_value_t = DEFAULT_OVERLOAD_LATENCY, help_heading = "Faults")]
    fault_overload_latency_per_request: HumanDuration,

    // --- WeCom ---
    /// The WeCom corp id (`corpid` of gettoken; the callback's receive id).
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_WECOM_CORP_ID",
        default_value = wecom_defaults::DEFAULT_CORP_ID,
        help_heading = "WeCom"
    )]
    wecom_corp_id: String,
    /// An app of the corp, AGENTID=SECRET (repeatable, or comma-separated in the variable).
    #[arg(
        long = "wecom-app",
        env = "WXPUSH_SANDBOX_WECOM_APPS",
        value_delimiter = ',',
        default_value = wecom_defaults::DEFAULT_APP,
        value_parser = parse_app,
        hide_env_values = true,
        help_heading = "WeCom"
    )]
    wecom_apps: Vec<WeComApp>,
    /// A group robot's webhook key (repeatable, or comma-separated in the variable).
    #[arg(
        long = "wecom-robot-key",
        env = "WXPUSH_SANDBOX_WECOM_ROBOT_KEYS",
        value_delimiter = ',',
        default_value = wecom_defaults::DEFAULT_ROBOT_KEY,
        hide_env_values = true,
        help_heading = "WeCom"
    )]
    wecom_robot_keys: Vec<String>,
    /// The apps' trusted IP list, `a,b`: gettoken, message/send and message/recall from any
    /// other address get 60020. Default: any address.
    #[arg(long, value_delimiter = ',', help_heading = "WeCom")]
    wecom_trusted_ips: Option<Vec<std::net::IpAddr>>,
    /// How long after a send message/recall still works (then 40058).
    #[arg(long, default_value_t = wecom_defaults::DEFAULT_RECALL_WINDOW, help_heading = "WeCom")]
    wecom_recall_window: HumanDuration,
    /// Messages per robot key in any --wecom-robot-window (then 45009).
    #[arg(long, default_value_t = wecom_defaults::DEFAULT_ROBOT_LIMIT, help_heading = "WeCom")]
    wecom_robot_limit: u32,
    /// The robots' sliding window.
    #[arg(long, default_value_t = wecom_defaults::DEFAULT_ROBOT_WINDOW, help_heading = "WeCom")]
    wecom_robot_window: HumanDuration,
    /// The callback URL: verified by POST /__wecom/verify; events of POST /__wecom/events go
    /// there (none: no callback).
    #[arg(long, help_heading = "WeCom")]
    wecom_callback_url: Option<String>,
    /// The callback Token, for msg_signature.
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_WECOM_CALLBACK_TOKEN",
        default_value = wecom_defaults::DEFAULT_CALLBACK_TOKEN,
        hide_env_values = true,
        help_heading = "WeCom"
    )]
    wecom_callback_token: String,
    /// The callback's 43-character EncodingAESKey.
    #[arg(
        long,
        env = "WXPUSH_SANDBOX_WECOM_CALLBACK_AES_KEY",
        default_value = wecom_defaults::DEFAULT_AES_KEY,
        hide_env_values = true,
        help_heading = "WeCom"
    )]
    wecom_callback_aes_key: String,
    /// How long to wait for the callback's answer before retrying.
    #[arg(long, default_value_t = wecom_defaults::DEFAULT_CALLBACK_TIMEOUT, help_heading = "WeCom")]
    wecom_callback_timeout: HumanDuration,
    /// Retries of an event after a timeout, transport error or non-2xx answer.
    #[arg(long, default_value_t = wecom_defaults::DEFAULT_CALLBACK_RETRIES, help_heading = "WeCom")]
    wecom_callback_retries: u32,
}

impl Cli {
    fn into_config(self) -> SandboxConfig {
        let mode = self.event_mode.unwrap_or(if self.event_aes_key.is_some() {
            EventMode::Safe
        } else {
            EventMode::Plain
        });
        SandboxConfig {
            listen: self.listen,
            appid: self.appid,
            secret: self.secret,
            account_id: self.account_id,
            token_expires_in: self.token_expires_in.get(),
            classic_grace: self.classic_grace.get(),
            stable_renew_before: self.stable_renew_before.get(),
            classic_daily_quota: self.classic_token_daily_quota.0,
            stable_minute_quota: self.stable_token_minute_quota.0,
            stable_daily_quota: self.stable_token_daily_quota.0,
            force_refresh_daily_limit: self.force_refresh_daily_limit,
            force_refresh_interval: self.force_refresh_interval.get(),
            dedup_window: self.dedup_window.get(),
            daily_quota: self.daily_quota.0,
            minute_quota: self.minute_quota.0,
            openid_minute_limit: self.openid_minute_limit.0,
            users: self.users,
            non_followers: self.non_followers.unwrap_or_default(),
            refused_subscribers: self.refused_subscribers.unwrap_or_default(),
            templates: self.templates,
            template_defs: self.template_file.map(|c| c.0),
            ip_allowlist: self.ip_allowlist,
            events: EventConfig {
                url: self.event_url,
                token: self.event_token,
                aes_key: self.event_aes_key,
                mode,
                user_block_share: self.event_user_block_share,
                system_failed_share: self.event_system_failed_share,
                delay: self.event_delay.get(),
                timeout: self.event_timeout.get(),
                retries: self.event_retries,
                msgid_zero_with_client_msg_id: self.event_msgid_zero_with_client_msg_id,
            },
            faults: FaultConfig {
                latency: self.fault_latency.get(),
                jitter: self.fault_jitter.get(),
                hang_share: self.fault_hang_share,
                hang: self.fault_hang.get(),
                errcodes: self.fault_errcodes.into_iter().collect::<BTreeMap<_, _>>(),
                http_5xx_share: self.fault_5xx_share,
                http_5xx_status: self.fault_5xx_status,
                reset_share: self.fault_reset_share,
                outage: self.fault_outage_for.map(|duration| OutageSpec {
                    after: self.fault_outage_after.get(),
                    duration: duration.get(),
                }),
                token_invalidate_every: self.fault_token_invalidate_every.map(HumanDuration::get),
                capacity: self.fault_capacity,
                overload_latency_per_request: self.fault_overload_latency_per_request.get(),
            },
            wecom: WeComConfig {
                corp_id: self.wecom_corp_id,
                apps: self.wecom_apps,
                robot_keys: self.wecom_robot_keys,
                trusted_ips: self.wecom_trusted_ips,
                recall_window: self.wecom_recall_window.get(),
                robot_limit: self.wecom_robot_limit,
                robot_window: self.wecom_robot_window.get(),
                callback: WeComCallbackConfig {
                    url: self.wecom_callback_url,
                    token: self.wecom_callback_token,
                    aes_key: self.wecom_callback_aes_key,
                    timeout: self.wecom_callback_timeout.get(),
                    retries: self.wecom_callback_retries,
                },
            },
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wxpush_sandbox=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: no escape codes in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Cli::parse().into_config();
    let sandbox = Sandbox::start(config)
        .await
        .context("starting wxpush-sandbox")?;
    println!("wxpush-sandbox listening on {}", sandbox.base_url());
    tokio::select! {
        () = sandbox_wait(sandbox) => anyhow::bail!("the sandbox server stopped"),
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
        () = terminate() => {}
    }
    Ok(())
}

async fn sandbox_wait(sandbox: wxpush_sandbox::SandboxHandle) {
    sandbox.wait().await;
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}
