//! The published image names: the one place they are set.
//!
//! The chart's `values.yaml` and `Chart.yaml`, the manifests under `deploy/`, the examples, the
//! README and `scripts/images.sh` repeat these names; `tests/tests/images.rs` fails when one of
//! them disagrees. The tag is the workspace version (`Cargo.toml`), which is also the chart's
//! `appVersion`.

/// The registry and namespace the release images are published under.
pub const REGISTRY: &str = "ghcr.io/wxpush";

/// The release tag: the workspace version.
pub const TAG: &str = env!("CARGO_PKG_VERSION");

/// The operator image's name (after [`REGISTRY`]).
pub const OPERATOR: &str = "wxpush-operator";
/// The pusher image's name (after [`REGISTRY`]).
pub const PUSHER: &str = "wxpush-pusher";
/// The sandbox image's name (after [`REGISTRY`]); only tests and demos run it.
pub const SANDBOX: &str = "wxpush-sandbox";

/// The pusher image the operator runs for PushChannels that name none.
pub const DEFAULT_PUSHER_IMAGE: &str = concat!(
    "ghcr.io/wxpush",
    "/",
    "wxpush-pusher",
    ":",
    env!("CARGO_PKG_VERSION")
);

/// `REGISTRY/name:TAG` for one of the image names above.
pub fn reference(name: &str) -> String {
    format!("{REGISTRY}/{name}:{TAG}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pusher_image_is_built_from_the_parts() {
        // concat! cannot read the consts above; this keeps the literal in step with them.
        assert_eq!(DEFAULT_PUSHER_IMAGE, reference(PUSHER));
    }
}
