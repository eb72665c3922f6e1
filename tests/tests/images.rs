//! The release artifacts: image references agree everywhere with `wxpush_api::images`, and
//! `scripts/images.sh` builds the three images with whichever OCI builder it finds.
//!
//! No Docker engine runs on the test machines, so the build is checked two ways: `--dry-run`
//! prints the exact commands, and a real run (no `--dry-run`) with a recording `buildah` on
//! `PATH` must run exactly those commands.

use std::collections::BTreeSet;
use std::process::Command;

use wxpush_api::images::{OPERATOR, PUSHER, REGISTRY, SANDBOX, TAG, reference};
use wxpush_tests::workspace_root;

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn chart_values_and_manifests_name_the_release_images() {
    let chart = yaml("charts/wxpush-operator/Chart.yaml");
    assert_eq!(chart["appVersion"], TAG, "Chart.yaml appVersion");
    assert_eq!(chart["version"], TAG, "Chart.yaml version");
    let values = yaml("charts/wxpush-operator/values.yaml");
    assert_eq!(
        values["image"]["repository"],
        format!("{REGISTRY}/{OPERATOR}")
    );
    assert_eq!(
        values["pusherImage"]["repository"],
        format!("{REGISTRY}/{PUSHER}")
    );
    // Empty tags mean the chart's appVersion, checked above.
    assert_eq!(values["image"]["tag"], "");
    assert_eq!(values["pusherImage"]["tag"], "");

    let operator = yaml("deploy/operator.yaml");
    let c = &operator["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], reference(OPERATOR), "deploy/operator.yaml");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--pusher-image")
        .expect("--pusher-image");
    assert_eq!(args[at + 1], reference(PUSHER), "deploy/operator.yaml");

    let full = yaml("examples/pushchannel-full.yaml");
    assert_eq!(full["spec"]["pod"]["image"], reference(PUSHER));
    assert_eq!(wxpush_api::crd::DEFAULT_IMAGE, reference(PUSHER));
}

/// Every `ghcr.io/wxpush/...` in the files users read names one of the three images, with the
/// release tag when it has one. No placeholder image is left in a manifest.
#[test]
fn every_image_reference_in_docs_and_manifests_agrees() {
    let root = workspace_root();
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    for dir in [
        "docs",
        "deploy",
        "examples",
        "charts",
        "crds",
        "operator/tests/golden",
    ] {
        wxpush_tests::docs::files_below(
            &root.join(dir),
            &["md", "yaml", "yml", "json", "txt", "tpl"],
            &mut files,
        );
    }
    let names: BTreeSet<String> = [OPERATOR, PUSHER, SANDBOX]
        .iter()
        .map(|n| format!("{REGISTRY}/{n}"))
        .collect();
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (at, _) in text.match_indices(REGISTRY) {
            let rest = &text[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/.:-_".contains(c)))
                .unwrap_or(rest.len());
            let found = rest[..end].trim_end_matches(['.', ':']);
            let (name, tag) = match found.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, Some(t)),
                _ => (found, None),
            };
            assert!(
                names.contains(name),
                "{}: {found} is not one of {names:?}",
                file.display()
            );
            if let Some(tag) = tag {
                assert_eq!(tag, TAG, "{}: {found}", file.display());
            }
            seen += 1;
        }
        if file.starts_with(root.join("deploy")) && file.extension().is_some_and(|e| e == "yaml") {
            assert!(
                !text.contains("image: WXPUSH_"),
                "{} still has a placeholder image",
                file.display()
            );
        }
    }
    assert!(seen >= 8, "expected the image references, found {seen}");
}

fn images_sh(args: &[&str], path: &str) -> std::process::Output {
    Command::new("bash")
        .arg(workspace_root().join("scripts/images.sh"))
        .args(args)
        .env("PATH", path)
        .env_remove("WXPUSH_IMAGE_BUILDER")
        .output()
        .expect("bash runs scripts/images.sh")
}

fn expected_commands(builder: &str, registry: &str, tag: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for part in ["operator", "pusher", "sandbox"] {
        let file = format!("deploy/docker/{part}.Dockerfile");
        let r = format!("{registry}/wxpush-{part}:{tag}");
        lines.push(match builder {
            "docker" => format!("+ env DOCKER_BUILDKIT=1 docker build -f {file} -t {r} ."),
            b => format!("+ {b} build -f {file} --ignorefile {file}.dockerignore -t {r} ."),
        });
        lines.push(format!("+ {builder} push {r}"));
    }
    lines
}

fn helm_line(registry: &str, tag: &str) -> String {
    format!(
        "helm install wxpush-operator charts/wxpush-operator -n wxpush-system --create-namespace \
         --set image.repository={registry}/wxpush-operator,image.tag={tag},\
         pusherImage.repository={registry}/wxpush-pusher,pusherImage.tag={tag}"
    )
}

#[test]
fn images_sh_dry_run_prints_the_builds_and_the_helm_line() {
    let path = "/usr/bin:/bin";
    for builder in ["docker", "podman", "buildah"] {
        let out = images_sh(
            &[
                "--dry-run",
                "--push",
                "--builder",
                builder,
                "reg.example:5000/team",
                "1.2.3",
            ],
            path,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{builder}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let commands: Vec<&str> = stdout.lines().filter(|l| l.starts_with("+ ")).collect();
        assert_eq!(
            commands,
            expected_commands(builder, "reg.example:5000/team", "1.2.3")
        );
        assert_eq!(
            stdout.lines().last(),
            Some(helm_line("reg.example:5000/team", "1.2.3").as_str())
        );
        // The Dockerfiles named exist, with their ignore files.
        for part in ["operator", "pusher", "sandbox"] {
            let f = workspace_root().join(format!("deploy/docker/{part}.Dockerfile"));
            assert!(f.exists() && f.with_extension("Dockerfile.dockerignore").exists());
        }
    }
}

#[test]
fn images_sh_refuses_bad_input_and_a_machine_without_a_builder() {
    let path = "/usr/bin:/bin";
    for args in [
        vec!["reg.example/team"],
        vec!["Reg.Example/team", "1.0"],
        vec!["reg.example/team", "bad tag"],
        vec!["--builder", "kaniko", "reg.example/team", "1.0"],
    ] {
        let out = images_sh(&args, path);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing is built");
    }
    let out = images_sh(&["reg.example/team", "1.0"], path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no OCI builder found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real run: the script finds `buildah` on PATH (a recorder standing in for the builder, since
/// no engine runs here) and runs exactly the commands its dry run prints.
#[test]
fn images_sh_runs_the_builder_it_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("calls");
    let fake = dir.path().join("buildah");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"+ buildah $*\" >> '{}'\n", log.display()),
    )
    .expect("write the recorder");
    let mut perm = std::fs::metadata(&fake).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&fake, perm).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let out = images_sh(&["--push", "reg.example/team", "0.9.0"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&log).expect("the builder ran");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        expected_commands("buildah", "reg.example/team", "0.9.0")
    );
    assert_eq!(
        stdout.lines().last(),
        Some(helm_line("reg.example/team", "0.9.0").as_str())
    );
}
