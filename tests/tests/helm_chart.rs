//! The Helm chart `charts/wxpush-operator`, checked offline by `tests/helm/check_chart.py`: render
//! with every value set, strict lint, strict Kubernetes 1.30/1.33 schema validation, the values
//! schema refusing bad values, the CRD copy, RBAC, adapter rules and dashboard.
//!
//! It needs the `.venv-helm` interpreter (Python 3.12 with helm-python-sdk and
//! kubernetes-validate) that `scripts/setup.sh` creates; `WXPUSH_HELM_PYTHON` overrides it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

fn helm_python(root: &Path) -> PathBuf {
    match std::env::var_os("WXPUSH_HELM_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => root.join(".venv-helm/bin/python"),
    }
}

#[test]
fn helm_chart_passes_the_offline_checks() {
    let root = workspace_root();
    let python = helm_python(&root);
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it creates .venv-helm with tests/helm/requirements.txt)",
        python.display()
    );
    let output = Command::new(&python)
        .arg(root.join("tests/helm/check_chart.py"))
        .current_dir(&root)
        .output()
        .expect("the .venv-helm Python interpreter starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        output.status.success() && last.ends_with(" passed, 0 failed"),
        "tests/helm/check_chart.py failed ({}): {last}",
        output.status
    );
}
