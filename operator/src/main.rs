//! `wxpush-operator`: runs the PushChannel controller.
//!
//! It reads its kubeconfig like kubectl (`KUBECONFIG`, else `~/.kube/config`, else the
//! in-cluster service account), serves `/metrics`, `/healthz` and `/readyz` on `--listen`
//! (and prints `wxpush-operator listening on http://ADDR` once bound), and with leader election
//! on reconciles only while it holds the Lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::watch;
use tracing::{error, info};
use wxpush_api::policy::HumanDuration;
use wxpush_operator::leader::{Ended, LeaderElection};
use wxpush_operator::metrics::Metrics;
use wxpush_operator::reconcile::{Context, Settings};
use wxpush_operator::server::{Health, router};
use wxpush_operator::{controller, crd, reconcile};

/// The wxpush operator: turns PushChannels into running, autoscaled pushers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WXPUSH_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Watch only these namespaces (a comma list; joined with --namespace). Each gets its own
    /// namespaced watches, so Secrets are read nowhere else (default: all namespaces).
    #[arg(long, env = "WXPUSH_OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Images a PushChannel's spec.pod.image may name: a comma list of exact references or
    /// prefixes ending in `*` (default: only --pusher-image).
    #[arg(long, env = "WXPUSH_OPERATOR_ALLOWED_IMAGES", value_delimiter = ',')]
    allowed_images: Vec<String>,
    /// Address of /metrics, /healthz and /readyz (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "WXPUSH_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Elect a leader through a Lease, so that only one replica reconciles.
    #[arg(long, env = "WXPUSH_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "WXPUSH_OPERATOR_LEASE_NAME",
        default_value = "wxpush-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`, else `--namespace`, else `default`).
    #[arg(long, env = "WXPUSH_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a Lease stays valid without renewal.
    #[arg(long, env = "WXPUSH_OPERATOR_LEASE_DURATION", default_value = "15s")]
    lease_duration: HumanDuration,
    /// This replica's identity in the Lease and in Events (default: `POD_NAME`, else the host name).
    #[arg(long, env = "WXPUSH_OPERATOR_IDENTITY")]
    identity: Option<String>,
    /// Re-check every reconciled PushChannel this often.
    #[arg(long, env = "WXPUSH_OPERATOR_REQUEUE", default_value_t = reconcile::DEFAULT_REQUEUE)]
    requeue: HumanDuration,
    /// Re-check a PushChannel waiting for its Secrets this often.
    #[arg(long, env = "WXPUSH_OPERATOR_REQUEUE_WAITING", default_value_t = reconcile::DEFAULT_REQUEUE_WAITING)]
    requeue_waiting: HumanDuration,
    /// First retry delay after a failed reconcile (doubles per failure of the same object).
    #[arg(long, env = "WXPUSH_OPERATOR_BACKOFF_BASE", default_value_t = reconcile::DEFAULT_BACKOFF_BASE)]
    backoff_base: HumanDuration,
    /// Longest retry delay after failures.
    #[arg(long, env = "WXPUSH_OPERATOR_BACKOFF_MAX", default_value_t = reconcile::DEFAULT_BACKOFF_MAX)]
    backoff_max: HumanDuration,
    /// Image of the pusher for PushChannels that name none.
    #[arg(long, env = "WXPUSH_OPERATOR_PUSHER_IMAGE", default_value = crd::DEFAULT_IMAGE)]
    pusher_image: String,
    /// PushChannels reconciled at once.
    #[arg(long, env = "WXPUSH_OPERATOR_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "WXPUSH_OPERATOR_LOG_JSON")]
    log_json: bool,
    /// Check each PushChannel's credentials with one access_token request per change of the
    /// credentials Secret or apiBaseUrl, and show WeChat's answer in CredentialsValid.
    #[arg(long, env = "WXPUSH_OPERATOR_CHECK_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    check_credentials: bool,
}

fn identity(args: &Args) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("wxpush-operator-{}", std::process::id()))
}

async fn shutdown_signal(tx: watch::Sender<bool>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    info!("shutdown requested");
    let _ = tx.send(true);
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // kube's client builder logs every failed request at ERROR itself; the operator reports
        // each failure with its own context, so that line would only repeat it.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,kube=warn,kube_client::client::builder=off")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let log_json = args.log_json;
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            // Once: a JSON log line for log collectors, else one plain line.
            let chain = error_chain(&e);
            if log_json {
                error!(error = %chain, "wxpush-operator failed");
            } else {
                eprintln!("wxpush-operator: {chain}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the error before it
/// already shows (kube's errors print their source inside their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.is_empty() && last.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}

/// Which optional APIs the cluster serves.
struct Served {
    keda: bool,
    pod_monitors: bool,
    prometheus_rules: bool,
}

/// Checks that the CRD is served in the watched namespaces and finds the optional APIs.
async fn discover(client: &kube::Client, namespaces: &[String]) -> anyhow::Result<Served> {
    if namespaces.is_empty() {
        controller::check_crd(client, None).await?;
    }
    for ns in namespaces {
        controller::check_crd(client, Some(ns)).await?;
    }
    let served = Served {
        keda: controller::keda_available(client).await,
        pod_monitors: controller::pod_monitors_available(client).await,
        prometheus_rules: controller::prometheus_rules_available(client).await,
    };
    info!(
        keda = served.keda,
        pod_monitors = served.pod_monitors,
        prometheus_rules = served.prometheus_rules,
        namespaces = if namespaces.is_empty() {
            "<all>".to_string()
        } else {
            namespaces.join(",")
        },
        "starting"
    );
    Ok(served)
}

/// Binds `--listen` and serves `/metrics`, `/healthz` and `/readyz` until `stop`.
async fn serve_health(
    listen: SocketAddr,
    health: Health,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    println!("wxpush-operator listening on http://{bound}");
    info!(%bound, "serving /metrics, /healthz, /readyz");
    let app = router(health);
    Ok(tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            error!(error = %e, "metrics server failed");
        }
    }))
}

/// The reconciler's settings, from the flags and the APIs served.
fn settings(args: &Args, served: &Served) -> Settings {
    Settings {
        default_image: args.pusher_image.clone(),
        requeue_after: args.requeue.get(),
        requeue_waiting: args.requeue_waiting.get(),
        backoff_base: args.backoff_base.get(),
        backoff_max: args.backoff_max.get(),
        keda_available: served.keda,
        pod_monitors_available: served.pod_monitors,
        prometheus_rules_available: served.prometheus_rules,
        allowed_images: args
            .allowed_images
            .iter()
            .map(|i| i.trim().to_string())
            .filter(|i| !i.is_empty())
            .collect(),
        check_credentials: args.check_credentials,
    }
}

/// What the controller runs with.
struct Running {
    client: kube::Client,
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    me: String,
    health: Health,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

/// Campaigns for the Lease and runs the controller while it is held. Fails when leadership
/// is lost, so that a restart campaigns again.
async fn run_as_leader(args: &Args, r: Running) -> std::process::ExitCode {
    let lease_ns = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| r.namespaces.first().cloned())
        .unwrap_or_else(|| "default".into());
    let elector = LeaderElection::new(
        r.client.clone(),
        &lease_ns,
        &args.lease_name,
        &r.me,
        args.lease_duration.get(),
    );
    let mut stop = r.stop.clone();
    if !elector.acquire(&mut stop).await {
        return std::process::ExitCode::SUCCESS;
    }
    r.health.leader.store(true, Ordering::Relaxed);
    r.metrics.set_leader(true);
    // The controller stops on shutdown or when leadership is lost.
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let keeper = {
        let elector = elector.clone();
        let mut stop = r.stop.clone();
        tokio::spawn(async move {
            let ended = elector.keep(&mut stop).await;
            let _ = lost_tx.send(true);
            ended
        })
    };
    controller::run(r.ctx, r.namespaces.clone(), args.concurrency, async move {
        let _ = lost_rx.wait_for(|s| *s).await;
    })
    .await;
    let ended = keeper.await.unwrap_or(Ended::Lost);
    r.health.leader.store(false, Ordering::Relaxed);
    r.metrics.set_leader(false);
    if ended == Ended::Lost {
        error!("lost the leader Lease: exiting so that a restart campaigns again");
        std::process::ExitCode::FAILURE
    } else {
        elector.release().await;
        std::process::ExitCode::SUCCESS
    }
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure the Kubernetes client (KUBECONFIG or in-cluster)")?;
    let namespaces =
        controller::watched_namespaces(&args.watch_namespaces, args.namespace.as_deref());
    let served = discover(&client, &namespaces).await?;

    let metrics = Arc::new(Metrics::new());
    let health = Health {
        metrics: metrics.clone(),
        ..Health::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // The server is bound before the signal handler starts, as before.
    let server = serve_health(args.listen, health.clone(), stop_rx.clone()).await?;
    tokio::spawn(shutdown_signal(stop_tx.clone()));
    health.ready.store(true, Ordering::Relaxed);

    let me = identity(&args);
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings(&args, &served),
        metrics.clone(),
        Some(me.clone()),
    ));
    let code = if args.leader_election {
        let running = Running {
            client,
            ctx,
            namespaces,
            me,
            health,
            metrics,
            stop: stop_rx,
        };
        run_as_leader(&args, running).await
    } else {
        health.leader.store(true, Ordering::Relaxed);
        metrics.set_leader(true);
        let mut stop = stop_rx.clone();
        controller::run(ctx, namespaces.clone(), args.concurrency, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
        std::process::ExitCode::SUCCESS
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    info!("stopped");
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_repeated_by_its_parent_is_printed_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = anyhow::Error::new(inner)
            .context("client error (Connect)")
            .context("ServiceError: client error (Connect)")
            .context("ServiceError: client error (Connect)")
            .context("cannot list PushChannels");
        assert_eq!(
            error_chain(&e),
            "cannot list PushChannels: ServiceError: client error (Connect): refused"
        );
    }
}
