//! `wxpush-pod-runner`: the kubelet stand-in for the pusher's pods on the test control plane
//! (`scripts/cluster.sh up` starts it). What it does and what it rewrites:
//! `wxpush_tests::pod_runner`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wxpush_tests::pod_runner::run::{Options, run};

/// Runs one real `wxpush-pusher` for every Ready pusher pod of a cluster.
#[derive(Debug, Parser)]
struct Args {
    /// Kubeconfig of the cluster (default: `KUBECONFIG`, else `~/.kube/config`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Folder for the pods' files (`<state>/<namespace>/<pod>/`).
    #[arg(long)]
    state: PathBuf,
    /// Folder of Prometheus `file_sd` targets.
    #[arg(long)]
    prometheus_sd: PathBuf,
    /// The `wxpush-pusher` binary.
    #[arg(long)]
    pusher_bin: PathBuf,
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

async fn shutdown_signal() {
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
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let client = match client(args.kubeconfig.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pod-runner: cannot read the kubeconfig: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        state: args.state,
        prometheus_sd: args.prometheus_sd,
        pusher_bin: args.pusher_bin,
    };
    eprintln!("pod-runner: watching pods");
    match run(client, options, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-runner: {e}");
            ExitCode::FAILURE
        }
    }
}
