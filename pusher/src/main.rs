//! `wxpush-pusher`: the sending service.
//!
//! - `serve --config FILE`: run the pusher (prints `wxpush-pusher listening on http://ADDR`).
//! - `check-config --config FILE`: validate a config, print it resolved (secrets redacted); it
//!   reads every secret exactly as `serve` does (`wxpush_pusher::preflight`) and also checks
//!   what `serve` would fail on later (a writable queue folder, free listen ports, callback
//!   targets, a reachable Redis); `--online` also fetches one access_token with the
//!   configured credentials.
//! - `demo`: sandbox + pusher in one process, a few thousand messages end to end, with a live
//!   progress line, a closing table, and `--faults MODE` to watch it survive a bad WeChat.
//!
//! Logs go to stderr: coloured text on a terminal, plain text otherwise, JSON lines with
//! `--log-json` (as the operator).

/// jemalloc, not glibc's allocator: the hot path's per-message allocations (HTTP buffers of
/// 8 KiB, request futures of 3–4 KB) are above glibc's per-thread cache and went through its
/// bins and consolidation; jemalloc's thread caches hold those sizes. Measured in
/// docs/performance.md ("Ninth round: the allocator"). Its settings (`.cargo/config.toml`,
/// `JEMALLOC_SYS_WITH_MALLOC_CONF`) return freed pages within about a second, so that RSS
/// follows the queue down. The `alloc-count` benchmark build counts with its own allocator.
#[cfg(not(feature = "alloc-count"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::path::PathBuf;
#[cfg(feature = "demo")]
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wxpush_pusher::config::PusherConfig;
#[cfg(feature = "demo")]
use wxpush_pusher::demo::progress::LogWriter;
#[cfg(feature = "demo")]
use wxpush_pusher::demo::{Demo, DemoOptions, FaultMode, ProgressStyle};
use wxpush_pusher::policy::LocalSecret;
use wxpush_pusher::wiring::Pusher;

/// Reliable WeChat template-message delivery.
#[derive(Debug, Parser)]
#[command(name = "wxpush-pusher", version, max_term_width = 100)]
struct Cli {
    /// Log as JSON lines instead of text (stderr).
    #[arg(long, global = true, env = "WXPUSH_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pusher: HTTP API, durable queue, delivery to WeChat.
    Serve {
        /// The config file (YAML); environment variables override some fields.
        #[arg(long, env = "WXPUSH_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file (with environment overrides) and print it resolved, secrets
    /// redacted. Exits 1 naming each bad field.
    CheckConfig {
        /// The config file (YAML).
        #[arg(long, env = "WXPUSH_CONFIG")]
        config: PathBuf,
        /// Also fetch one access_token with the configured credentials from `apiBaseUrl`, and
        /// report a wrong appid or secret, an address not on the IP allowlist or an unreachable
        /// endpoint in one line each (docs/wechat-onboarding.md).
        #[arg(long)]
        online: bool,
    },
    /// Rewrite a stopped embedded store's records in the JSON form that versions before the
    /// binary record read, for a rollback to such a version (docs/reliability.md). Prints how
    /// many records it rewrote.
    StoreToJson {
        /// The store's folder (`queue.embedded.path`, holding `wxpush-queue.redb`).
        #[arg(long)]
        path: PathBuf,
    },
    /// Start the sandbox and a pusher in this process, send messages through the HTTP API,
    /// wait for delivery and report count, rate and latency.
    Demo(DemoArgs),
}

/// The demo's flags.
#[cfg(feature = "demo")]
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Concurrent HTTP requests to the pusher.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Messages per request (1 = single accepts; more = the batch route).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The pusher's concurrency.maxInFlight [default: the pusher's own].
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// The pusher's rateLimit.perSecond [default: 100000; with --faults, count/4 so the run
    /// lasts about 4 s and the faults meet traffic].
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Run the same load with the WeChat sandbox misbehaving, then show what wxpush did
    /// about it: `tail` (slow answers past the timeout), `flaky` (resets, 502, errcode -1),
    /// `outage` (connections refused for 3 s), `tokens` (access_tokens revoked every 0.7 s).
    #[arg(long, value_enum)]
    faults: Option<FaultMode>,
    /// Give up waiting for deliveries after this long.
    #[arg(long, default_value = "120s")]
    timeout: wxpush_api::policy::HumanDuration,
    /// Use a running sandbox instead of starting one.
    #[arg(long)]
    sandbox_url: Option<String>,
    /// The channel's provider: `wechatOfficialAccount` (template messages) or `wecomApp`
    /// (WeCom application messages, with the sandbox's default corp and app).
    #[arg(long, default_value = "wechatOfficialAccount", value_parser = parse_provider)]
    provider: wxpush_pusher::policy::Provider,
    /// The sandbox account's appid.
    #[arg(long, default_value = "wxdemo0000000000")]
    appid: String,
    /// The sandbox account's secret.
    #[arg(long, default_value = "demo-secret", hide_default_value = true)]
    secret: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Keep the sandbox and pusher running afterwards (until Ctrl-C), and print curl lines
    /// (with this run's bearer token) to look around.
    #[arg(long)]
    keep_running: bool,
    /// No progress line (by default: a live line on a terminal, else a plain line a second).
    #[arg(long)]
    no_progress: bool,
}

/// A `provider` value as the config spells it.
#[cfg(feature = "demo")]
fn parse_provider(text: &str) -> Result<wxpush_pusher::policy::Provider, String> {
    serde_json::from_value(serde_json::Value::String(text.into())).map_err(|_| {
        "one of wechatOfficialAccount, wechatMiniProgram, wecomApp, wecomRobot".to_string()
    })
}

/// Without the `demo` feature the subcommand only says how to get it.
#[cfg(not(feature = "demo"))]
#[derive(Debug, clap::Args)]
struct DemoArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

/// Logs to stderr: JSON lines with `--log-json`, else text, coloured only on a terminal.
/// `RUST_LOG` overrides the level. Lines are printed above the demo's progress bar.
fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    #[cfg(feature = "demo")]
    let writer = LogWriter;
    #[cfg(not(feature = "demo"))]
    let writer = std::io::stderr;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, online } => check_config(&config, online),
        Command::StoreToJson { path } => {
            init_tracing("info", cli.log_json);
            let written = wxpush_pusher::store::EmbeddedStore::write_records_as_json(&path)
                .with_context(|| format!("rewriting the store in {}", path.display()))?;
            println!("{written} records rewritten as JSON in {}", path.display());
            Ok(())
        }
        Command::Serve { config } => {
            init_tracing("info", cli.log_json);
            let config = wxpush_pusher::config::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            runtime()?.block_on(serve(config))
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo(_) => anyhow::bail!(
            "this wxpush-pusher was built without the `demo` feature (production builds leave the \
             WeChat sandbox out); run: cargo run --release -p wxpush-pusher --features demo -- demo"
        ),
        #[cfg(feature = "demo")]
        Command::Demo(DemoArgs {
            count,
            concurrency,
            batch,
            max_in_flight,
            rate_limit,
            sandbox_url,
            provider,
            appid,
            secret,
            faults,
            timeout,
            json,
            keep_running,
            no_progress,
        }) => {
            init_tracing("warn", cli.log_json);
            let rate_limit = rate_limit.unwrap_or(if faults.is_some() {
                FaultMode::paced_rate(count)
            } else {
                100_000
            });
            let opts = DemoOptions {
                count,
                concurrency,
                batch,
                max_in_flight,
                rate_limit,
                sandbox_url,
                appid,
                secret,
                faults,
                timeout: timeout.into(),
                progress: if no_progress {
                    ProgressStyle::Quiet
                } else {
                    ProgressStyle::auto()
                },
                provider,
                latency_sample: wxpush_pusher::demo::LATENCY_SAMPLE,
            };
            runtime()?.block_on(demo(opts, json, keep_running))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(config: PusherConfig) -> anyhow::Result<()> {
    let pusher = Pusher::start(config).await?;
    println!("wxpush-pusher listening on http://{}", pusher.addr());
    shutdown_signal().await;
    pusher.shutdown();
    pusher.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

fn redact(s: &mut Option<String>) {
    if s.is_some() {
        *s = Some("<redacted>".into());
    }
}

fn redact_secret(s: &mut Option<LocalSecret>) {
    if let Some(LocalSecret::Inline(v)) = s {
        *v = "<redacted>".into();
    }
}

fn check_config(path: &std::path::Path, online: bool) -> anyhow::Result<()> {
    let mut config = match wxpush_pusher::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
    };
    // Exactly what `serve` reads before it starts: every secret source, and what is built
    // from them (the events cipher, the Redis URL).
    let mut problems = Vec::new();
    let resolved = match wxpush_pusher::preflight::resolve(&config) {
        Ok(r) => Some(r),
        Err(e) => {
            problems.extend(e.0.iter().map(|p| format!("{}: {}", p.field, p.message)));
            None
        }
    };
    problems.extend(serve_would_fail(&config));
    if let Some(o) = resolved.as_ref().and_then(|r| r.redis.as_ref()) {
        // The queue must be reachable now, not at the first accept: one line naming the URL
        // (without its password) and why.
        let checked = runtime()?.block_on(async {
            let mut conn = wxpush_pusher::store::redis::connect(&o.url, o.cluster).await?;
            redis_ping(&mut conn).await
        });
        if let Err(e) = checked {
            problems.push(format!("queue.redis.url: {e}"));
        }
    }
    if !problems.is_empty() {
        eprintln!("{}: {}", path.display(), problems.join("; "));
        std::process::exit(1);
    }
    let online_line = if online {
        match runtime()?.block_on(wxpush_pusher::wechat::verify::check_credentials(&config)) {
            Ok(line) => Some(line),
            Err(line) => {
                eprintln!("{}: {line}", path.display());
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    redact(&mut config.credentials.app_secret);
    redact(&mut config.auth.token);
    redact_secret(&mut config.events.token);
    redact_secret(&mut config.events.encoding_aes_key);
    redact_secret(&mut config.callbacks.signing_key);
    if let Some(r) = config.queue.redis.as_mut()
        && let LocalSecret::Inline(v) = &mut r.url
    {
        *v = "<redacted>".into();
    }
    let yaml = serde_yaml_ng::to_string(&config).context("printing the config")?;
    println!("# {}: valid", path.display());
    if let Some(line) = online_line {
        println!("# {line}");
    }
    println!("{yaml}");
    Ok(())
}

/// What `serve` would refuse at start beyond the schema and the secrets: the queue folder, the
/// listen addresses, the callback targets.
fn serve_would_fail(config: &PusherConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(wxpush_pusher::policy::QueueKind::Embedded(e)) = config.queue.kind()
        && let Err(why) = writable(std::path::Path::new(&e.path))
    {
        problems.push(format!(
            "queue.embedded.path: {} is not writable: {why}",
            e.path
        ));
    }
    for (field, addr) in [
        ("listen", Some(config.listen)),
        ("metricsListen", config.metrics_listen),
    ] {
        if let Some(addr) = addr.filter(|a| a.port() != 0)
            && let Err(e) = std::net::TcpListener::bind(addr)
        {
            problems.push(format!("{field}: cannot listen on {addr}: {e}"));
        }
    }
    match wxpush_pusher::callbacks::target::TargetPolicy::new(&config.callbacks.allow) {
        Err(e) => problems.push(e),
        Ok(p) => {
            if let Some(url) = &config.callbacks.url
                && let Err(e) = p.check_url(url)
            {
                problems.push(format!("callbacks.url: {e}"));
            }
        }
    }
    problems
}

/// Writes (then removes) a file in the folder, or in its nearest existing ancestor when the
/// folder is still to be created (`serve` creates it); creates nothing.
fn writable(dir: &std::path::Path) -> std::io::Result<()> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent().unwrap_or(std::path::Path::new("."));
    }
    if !at.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a folder",
            at.display()
        )));
    }
    let probe = at.join(format!(".wxpush-check-config-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

async fn redis_ping(conn: &mut wxpush_pusher::store::redis::Conn) -> Result<(), String> {
    let answer: Result<String, _> = redis::cmd("PING").query_async(conn).await;
    answer.map(|_| ()).map_err(|e| {
        format!(
            "Redis answered PING with an error: {}",
            e.to_string().lines().next().unwrap_or_default()
        )
    })
}

#[cfg(feature = "demo")]
async fn demo(opts: DemoOptions, json: bool, keep_running: bool) -> anyhow::Result<()> {
    eprintln!(
        "starting {} and a pusher…",
        opts.sandbox_url.as_deref().unwrap_or("the WeChat sandbox")
    );
    let demo = Demo::start(&opts).await?;
    eprintln!(
        "pusher on {}; sending {} messages ({} concurrent requests of {}){}…",
        demo.base(),
        opts.count,
        opts.concurrency,
        opts.batch.max(1),
        opts.faults
            .map(|f| format!(" with faults: {}", f.describe()))
            .unwrap_or_default()
    );
    let report = demo.run(&opts).await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            stop(demo).await;
            return Err(e.into());
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
    }
    if keep_running {
        println!("still running (Ctrl-C stops it); try, with this run's bearer token:");
        for line in demo.curl_lines(&report) {
            println!("  {line}");
        }
        shutdown_signal().await;
    } else if !json {
        println!(
            "(add --keep-running to keep the pusher and sandbox up and get curl lines to try)"
        );
    }
    stop(demo).await;
    if !report.ok() {
        anyhow::bail!(
            "not every accepted message was delivered: {}",
            report.summary()
        );
    }
    Ok(())
}

#[cfg(feature = "demo")]
async fn stop(demo: Demo) {
    if tokio::time::timeout(Duration::from_secs(15), demo.stop())
        .await
        .is_err()
    {
        eprintln!("shutdown took too long");
    }
}
