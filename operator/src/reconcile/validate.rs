//! *Validate*: what the CRD's schema and CEL rules cannot check (or what a cluster that does not
//! enforce them let through), as a pure function returning every problem at once.

use wxpush_api::config::ConfigError;
use wxpush_api::policy::disk;

use super::build::pusher_config;
use crate::crd::{AutoscalingProvider, PushChannel};

/// Longest PushChannel name: children are `NAME-pusher-data` and Service names are DNS-1035
/// labels of at most 63 characters.
pub const MAX_NAME_LEN: usize = 63 - "-pusher-data".len();

/// One thing wrong with a PushChannel, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a path (`spec.autoscaling.enabled`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Whether `image` is allowed: equal to `default_image`, or to an `allowed` entry, or starting
/// with an entry's text before its trailing `*`. An empty `allowed` allows only the default.
pub fn image_allowed(image: &str, default_image: &str, allowed: &[String]) -> bool {
    image == default_image
        || allowed.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == a,
        })
}

/// The problem with `spec.pod.image`, when it names an image the operator does not allow:
/// whoever may edit a PushChannel could otherwise run any image with its Secrets mounted.
pub fn image(pc: &PushChannel, default_image: &str, allowed: &[String]) -> Option<Problem> {
    let image = pc.spec.pod.image.as_deref()?;
    if image_allowed(image, default_image, allowed) {
        return None;
    }
    let list = if allowed.is_empty() {
        format!("only {default_image}")
    } else {
        allowed.join(", ")
    };
    Some(Problem {
        field: "spec.pod.image".into(),
        message: format!(
            "image {image} is not allowed by the operator (--allowed-images: {list}); remove \
             spec.pod.image or ask the operator's administrator to allow it"
        ),
    })
}

/// Every problem with the PushChannel; empty when it can be built.
pub fn validate(pc: &PushChannel) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |field: &str, message: String| {
        problems.push(Problem {
            field: field.into(),
            message,
        })
    };
    let name = pc.metadata.name.as_deref().unwrap_or_default();
    let dns1035 = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !dns1035 || name.len() > MAX_NAME_LEN {
        bad(
            "metadata.name",
            format!(
                "must start with a letter, hold only a-z, 0-9 and '-', and be at most \
                 {MAX_NAME_LEN} characters (it names the pusher's Service); recreate the \
                 PushChannel under such a name"
            ),
        );
    }
    let spec = &pc.spec;
    let redis = spec.queue.redis.is_some();
    let a = &spec.autoscaling;
    if a.enabled && !redis {
        bad(
            "spec.autoscaling.enabled",
            "autoscaling needs queue.redis: an embedded store belongs to one pod".into(),
        );
    }
    if spec.replicas.is_some_and(|r| r > 1) && !redis {
        bad(
            "spec.replicas",
            "more than one replica needs queue.redis: an embedded store belongs to one pod".into(),
        );
    }
    if a.enabled && a.min_replicas > a.max_replicas {
        bad(
            "spec.autoscaling.minReplicas",
            format!("{} exceeds maxReplicas {}", a.min_replicas, a.max_replicas),
        );
    }
    if a.enabled && a.provider == AutoscalingProvider::Keda {
        let addr = &a.keda.prometheus_server_address;
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            bad(
                "spec.autoscaling.keda.prometheusServerAddress",
                "must be an http(s) URL".into(),
            );
        }
    }
    if let Some(e) = &spec.queue.embedded
        && !e.path.starts_with('/')
    {
        bad(
            "spec.queue.embedded.path",
            "must be an absolute path (the volume is mounted there)".into(),
        );
    }
    if let Some(e) = &spec.queue.embedded {
        disk_budget(e, &spec.rate_limit, &mut bad);
    }
    // The pusher's own checks, on the very config the operator would write.
    if dns1035 {
        match pusher_config(spec, name).validate() {
            Ok(()) => {}
            Err(ConfigError::Invalid(list)) => {
                for p in list {
                    bad(&format!("spec.{}", p.field), p.message);
                }
            }
            Err(other) => bad("spec", other.to_string()),
        }
    }
    problems
}

/// Refuses a `maxMessages` and `retention` whose messages cannot fit the volume's budget at
/// the measured bytes per message ([`disk::BYTES_PER_MESSAGE`]).
fn disk_budget(
    e: &wxpush_api::policy::EmbeddedQueue,
    rate: &wxpush_api::policy::RateLimit,
    bad: &mut impl FnMut(&str, String),
) {
    let Some(volume) = disk::quantity_bytes(&e.volume_size) else {
        bad(
            "spec.queue.embedded.volumeSize",
            "must be a size such as 2Gi".into(),
        );
        return;
    };
    let budget = match e.max_bytes.as_deref().map(disk::quantity_bytes) {
        Some(Some(b)) if b > volume => {
            bad(
                "spec.queue.embedded.maxBytes",
                format!("{b} bytes exceed the volume ({volume} bytes)"),
            );
            return;
        }
        Some(Some(b)) => b,
        // Reported by the pusher's own checks.
        Some(None) => return,
        None => disk::budget_of(volume),
    };
    let held = disk::messages_held(
        e.max_messages,
        e.retention.get(),
        rate.daily_quota,
        rate.per_second,
    );
    let needed = held.saturating_mul(disk::BYTES_PER_MESSAGE);
    if needed > budget {
        let fits = budget / disk::BYTES_PER_MESSAGE;
        bad(
            "spec.queue.embedded.maxMessages",
            format!(
                "{} pending plus the finished messages kept for retention {} (about {held} \
                 messages at {} bytes each, {} MiB) do not fit the store's budget of {} MiB \
                 ({}% of volumeSize {}): raise volumeSize to at least {}Mi, or lower \
                 maxMessages or retention (about {fits} messages fit)",
                e.max_messages,
                e.retention,
                disk::BYTES_PER_MESSAGE,
                needed >> 20,
                budget >> 20,
                disk::BUDGET_PERCENT,
                e.volume_size,
                ((needed / disk::BUDGET_PERCENT * 100) >> 20) + 1,
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PushChannelSpec;

    fn channel(name: &str, spec_yaml: &str) -> PushChannel {
        let spec: PushChannelSpec = serde_yaml_ng::from_str(spec_yaml).expect("spec parses");
        let mut pc = PushChannel::new(name, spec);
        pc.metadata.namespace = Some("shop".into());
        pc
    }

    const BASE: &str = "
credentials: {secretRef: {name: wx}}
auth: {secretRef: {name: auth, key: token}}
";

    #[test]
    fn minimal_spec_is_valid() {
        assert_eq!(validate(&channel("order-notify", BASE)), vec![]);
    }

    #[test]
    fn problems_name_the_field_and_are_all_reported() {
        let pc = channel(
            "9.bad",
            &format!(
                "{BASE}replicas: 3\nautoscaling: {{enabled: true, minReplicas: 5, maxReplicas: 2}}\n"
            ),
        );
        let fields: Vec<String> = validate(&pc).into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.autoscaling.enabled",
                "spec.replicas",
                "spec.autoscaling.minReplicas"
            ]
        );
    }

    #[test]
    fn pusher_config_checks_are_reported_under_spec() {
        let pc = channel(
            "a",
            &format!("{BASE}retry: {{initialBackoff: 1m, maxBackoff: 1s}}\n"),
        );
        let problems = validate(&pc);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.retry.initialBackoff");
    }

    #[test]
    fn a_backlog_that_cannot_fit_the_volume_is_refused() {
        let pc = channel(
            "a",
            &format!("{BASE}queue: {{embedded: {{volumeSize: 1Gi, maxMessages: 1000000}}}}\n"),
        );
        let problems = validate(&pc);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.queue.embedded.maxMessages");
        assert!(
            problems[0].message.contains("raise volumeSize"),
            "{problems:?}"
        );
        let pc = channel(
            "a",
            &format!("{BASE}queue: {{embedded: {{volumeSize: 4Gi, maxMessages: 1000000}}}}\n"),
        );
        assert!(validate(&pc).is_empty());
    }

    #[test]
    fn events_mode_must_match_the_key() {
        let with_key = "credentials: {secretRef: {name: wx, eventTokenKey: t, encodingAesKeyKey: k}}\n\
                        auth: {secretRef: {name: auth, key: token}}\n";
        let problems = validate(&channel(
            "a",
            &format!("{with_key}events: {{mode: plain}}\n"),
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.events.mode");
        assert!(validate(&channel("a", with_key)).is_empty());
        let problems = validate(&channel(
            "a",
            &format!("{BASE}events: {{mode: compatible}}\n"),
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.events.encodingAesKey");
    }

    #[test]
    fn long_names_are_refused() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(validate(&channel(&long, BASE))[0].field, "metadata.name");
        let ok = "a".repeat(MAX_NAME_LEN);
        assert!(validate(&channel(&ok, BASE)).is_empty());
    }

    #[test]
    fn images_are_allowed_exactly_or_by_prefix() {
        let d = "ghcr.io/wxpush/wxpush-pusher:0.1.0";
        assert!(super::image_allowed(d, d, &[]));
        assert!(!super::image_allowed(
            "ghcr.io/wxpush/wxpush-pusher:0.2.0",
            d,
            &[]
        ));
        let allowed = vec![
            "ghcr.io/wxpush/*".to_string(),
            "mirror.local/pusher:1".to_string(),
        ];
        assert!(super::image_allowed(
            "ghcr.io/wxpush/wxpush-pusher:0.2.0",
            d,
            &allowed
        ));
        assert!(super::image_allowed("mirror.local/pusher:1", d, &allowed));
        assert!(!super::image_allowed("mirror.local/pusher:2", d, &allowed));
        assert!(!super::image_allowed("ghcr.io/wxpushx/evil:1", d, &allowed));
    }
}
