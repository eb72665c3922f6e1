//! The pod runner: a kubelet stand-in for the pusher's pods on a test control plane.
//!
//! The control plane of `scripts/cluster.sh` has no real kubelet: kwok schedules pods onto fake
//! Nodes and marks them Running and Ready, but runs nothing. The pod runner watches those pods
//! and, for every Ready pod whose container runs the pusher image (its repository's last path
//! segment is `wxpush-pusher`), starts one real `wxpush-pusher` process the way the kubelet
//! would start the container:
//!
//! - Each volume the container mounts is materialised as files under the pod's folder,
//!   `<state>/<namespace>/<pod>/<mountPath>`: the ConfigMap's keys (or its `items`), the
//!   Secret's keys (with the volume's file modes), an empty folder for an `emptyDir`. A
//!   `persistentVolumeClaim` is a folder `<state>/<namespace>/volumes/<claim>` that outlives the
//!   pod, as a claim would.
//! - The container's `args` run with `HOSTNAME` set to the pod's name (as in a pod).
//!
//! Only what must change to run several pods on one host is rewritten, in the arguments and in
//! the config file the `--config` argument names:
//! - every path under a mount is moved to where that mount was materialised;
//! - `listen` and `metricsListen` become free ports on 127.0.0.1;
//! - an embedded store whose folder is not a mounted volume goes to `<pod folder>/store`.
//!
//! Everything else (the WeChat base URL, the Redis URL from the Secret, timeouts …) is what the
//! operator wrote. For each running pusher the runner writes a Prometheus `file_sd` target,
//! `<prometheus-sd>/<namespace>_<pod>.json`, labelled the way the operator's PodMonitor relabels
//! its targets (`namespace`, `pod`, and `channel` from the pod's `wxpush.io/channel` label), and
//! `<pod folder>/runner.json` with the process's addresses and pid, for tests. The process gets
//! SIGTERM (then SIGKILL after the pod's grace period) when the pod is deleted or stops being
//! Ready, and is started again if it exits while the pod is Ready.

pub mod run;
pub mod spec;
