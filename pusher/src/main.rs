//! `wxpush-pusher`: the sending service.
//!
//! - `serve --config FILE`: run the pusher (prints `wxpush-pusher listening on http://ADDR`).
//! - `check-config --config FILE`: validate a config, print it resolved (secrets redacted).
//! - `demo`: sandbox + pusher in one process, a few thousand messages end to end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use wxpush_pusher::config::PusherConfig;
use wxpush_pusher::demo::{Demo, DemoOptions};
use wxpush_pusher::policy::LocalSecret;
use wxpush_pusher::server::Pusher;

/// Reliable WeChat template-message delivery.
#[derive(Debug, Parser)]
#[command(name = "wxpush-pusher", version, max_term_width = 100)]
struct Cli {
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
    },
    /// Start the sandbox and a pusher in this process, send messages through the HTTP API,
    /// wait for delivery and report count, rate and latency.
    Demo {
        /// Messages to send.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Concurrent HTTP requests to the pusher.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Messages per request (1 = single accepts; more = the batch route).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// The pusher's concurrency.maxInFlight.
        #[arg(long, default_value_t = 64)]
        max_in_flight: u32,
        /// The pusher's rateLimit.perSecond.
        #[arg(long, default_value_t = 100_000)]
        rate_limit: u32,
        /// Use a running sandbox instead of starting one.
        #[arg(long)]
        sandbox_url: Option<String>,
        /// The sandbox account's appid.
        #[arg(long, default_value = "wxdemo0000000000")]
        appid: String,
        /// The sandbox account's secret.
        #[arg(long, default_value = "demo-secret", hide_default_value = true)]
        secret: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Keep the sandbox and pusher running afterwards (until Ctrl-C), to look around.
        #[arg(long)]
        keep_running: bool,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => {
            init_tracing("info");
            let config = PusherConfig::load(&config)
                .with_context(|| format!("loading {}", config.display()))?;
            runtime()?.block_on(serve(config))
        }
        Command::Demo {
            count,
            concurrency,
            batch,
            max_in_flight,
            rate_limit,
            sandbox_url,
            appid,
            secret,
            json,
            keep_running,
        } => {
            init_tracing("warn");
            let opts = DemoOptions {
                count,
                concurrency,
                batch,
                max_in_flight,
                rate_limit,
                sandbox_url,
                appid,
                secret,
                ..DemoOptions::default()
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

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let mut config = match PusherConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
    };
    // Secrets named by file must be readable now, not at the first send.
    let mut problems = Vec::new();
    for (field, secret) in [
        ("credentials.appId", config.credentials.app_id()),
        ("credentials.appSecret", config.credentials.app_secret()),
        ("auth.token", config.auth.token()),
    ] {
        if let Some(Err(e)) = secret.map(|s| s.read()) {
            problems.push(format!("{field}: {e}"));
        }
    }
    if let Some(r) = config.queue.redis.as_ref() {
        // The queue must be reachable now, not at the first accept: one line naming the URL
        // (without its password) and why.
        match wxpush_pusher::server::redis_options(&config, r) {
            Err(e) => problems.push(e.to_string()),
            Ok(o) => {
                let checked = runtime()?.block_on(async {
                    let conn = wxpush_pusher::store::redis::connect(&o.url, o.cluster).await?;
                    let mut conn = conn;
                    redis_ping(&mut conn).await
                });
                if let Err(e) = checked {
                    problems.push(format!("queue.redis.url: {e}"));
                }
            }
        }
    }
    if !problems.is_empty() {
        eprintln!("{}: {}", path.display(), problems.join("; "));
        std::process::exit(1);
    }
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
    println!("# {}: valid\n{yaml}", path.display());
    Ok(())
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

async fn demo(opts: DemoOptions, json: bool, keep_running: bool) -> anyhow::Result<()> {
    eprintln!(
        "starting {} and a pusher…",
        opts.sandbox_url.as_deref().unwrap_or("the WeChat sandbox")
    );
    let demo = Demo::start(&opts).await?;
    eprintln!(
        "pusher on {}; sending {} messages ({} concurrent requests)…",
        demo.base(),
        opts.count,
        opts.concurrency
    );
    let report = demo.run(&opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let l = &report.latency_ms;
        println!(
            "delivered {} of {} accepted ({} not delivered); the sandbox counted {} unique deliveries",
            report.delivered,
            report.accepted,
            report.not_delivered,
            report.sandbox_delivered_unique
        );
        println!(
            "accepted in {:.2} s ({:.0}/s); all delivered after {:.2} s: {:.0} messages/s end to end",
            report.accept_seconds, report.accept_rate, report.total_seconds, report.delivery_rate
        );
        println!(
            "latency accepted → delivered: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} sampled)",
            l["p50"].as_f64().unwrap_or(0.0),
            l["p90"].as_f64().unwrap_or(0.0),
            l["p99"].as_f64().unwrap_or(0.0),
            l["max"].as_f64().unwrap_or(0.0),
            l["sampled"]
        );
        println!("look around:");
        for url in &report.urls {
            println!("  {url}");
        }
        if keep_running {
            // A throwaway token of this demo only, printed so that the URLs can be opened.
            println!("bearer token for /v1 (this demo only): {}", demo.token);
        }
    }
    if keep_running {
        eprintln!("running until Ctrl-C…");
        shutdown_signal().await;
    }
    let stop = demo.stop();
    if tokio::time::timeout(Duration::from_secs(15), stop)
        .await
        .is_err()
    {
        eprintln!("shutdown took too long");
    }
    Ok(())
}
