//! Replays every input kept under `fuzz/regressions/<target>/` (crashes the fuzz targets once
//! found, and seeds) through the same entry points the fuzz targets call
//! (`wxpush_pusher::fuzzing`). Part of the normal test command; fuzzing itself is not
//! (`scripts/fuzz.sh --soak`).

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("read");
            eprintln!("{target}: {}", path.display());
            run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no inputs under {}", dir.display());
}

#[test]
fn message_regressions() {
    replay("message", wxpush_pusher::fuzzing::message);
}

#[test]
fn batch_regressions() {
    replay("batch", wxpush_pusher::fuzzing::batch);
}

#[test]
fn events_xml_regressions() {
    replay("events_xml", wxpush_pusher::fuzzing::events_xml);
}

#[test]
fn aes_regressions() {
    replay("aes", wxpush_pusher::fuzzing::aes);
}

#[test]
fn duration_regressions() {
    replay("duration", wxpush_pusher::fuzzing::duration);
}
