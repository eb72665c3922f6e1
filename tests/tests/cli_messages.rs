//! The binaries' own words at their edges: `crdgen --help` is an answer, not a usage error; the
//! operator reports a failed connection to the API server once, with each cause once.

use std::process::Command;

use wxpush_tests::binary;
use wxpush_tests::pusher::tempdir;

#[test]
fn crdgen_help_exits_0_and_a_bad_flag_exits_2() {
    let out = Command::new(binary("crdgen"))
        .arg("--help")
        .output()
        .expect("crdgen runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("usage: crdgen"), "{text}");
    let out = Command::new(binary("crdgen"))
        .arg("--no-such-flag")
        .output()
        .expect("crdgen runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: crdgen"));
}

#[test]
fn the_operator_prints_a_failed_connection_once() {
    let dir = tempdir();
    // A closed loopback port: the connection is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- {{name: c, cluster: {{server: \
             'https://127.0.0.1:{port}'}}}}\ncontexts:\n- {{name: x, context: {{cluster: c, \
             user: u}}}}\ncurrent-context: x\nusers:\n- {{name: u, user: {{token: t}}}}\n"
        ),
    )
    .expect("write the kubeconfig");
    let out = Command::new(binary("wxpush-operator"))
        .args(["--listen", "127.0.0.1:0", "--leader-election", "false"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("the operator runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let reports: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("Connection refused"))
        .collect();
    assert_eq!(reports.len(), 1, "one line reports it: {err}");
    let line = reports[0];
    assert!(line.starts_with("wxpush-operator: "), "{line}");
    for part in line.split(": ") {
        assert_eq!(
            line.matches(part).count(),
            1,
            "`{part}` is repeated in: {line}"
        );
    }
}
