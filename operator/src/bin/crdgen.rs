//! Writes the PushChannel CRD generated from the Rust types.
//!
//! `crdgen` writes `crds/pushchannel.yaml` (relative to the current folder, normally the
//! workspace root); `crdgen -` prints it; `crdgen --check [PATH]` exits 1 when PATH differs.

use std::process::ExitCode;

const USAGE: &str = "usage: crdgen [PATH | - | --check [PATH] | --help]

Writes the PushChannel CRD generated from the Rust types.
  crdgen                write crds/pushchannel.yaml
  crdgen PATH           write PATH
  crdgen -              print it
  crdgen --check [PATH] exit 1 when PATH (default crds/pushchannel.yaml) differs";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let yaml = wxpush_operator::crd::crd_yaml();
    let (check, path) = match args.as_slice() {
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [] => (false, "crds/pushchannel.yaml".to_string()),
        [flag] if flag == "--check" => (true, "crds/pushchannel.yaml".to_string()),
        [flag, p] if flag == "--check" => (true, p.clone()),
        [p] if p == "-" => {
            print!("{yaml}");
            return ExitCode::SUCCESS;
        }
        [p] if !p.starts_with('-') => (false, p.clone()),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if check {
        return match std::fs::read_to_string(&path) {
            Ok(current) if current == yaml => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!("{path} is out of date: run `cargo run -p wxpush-operator --bin crdgen`");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("cannot read {path}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match std::fs::write(&path, &yaml) {
        Ok(()) => {
            eprintln!("wrote {path}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
