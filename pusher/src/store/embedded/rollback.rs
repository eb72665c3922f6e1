//! The way back to the versions before the binary record: a stopped store's binary records
//! rewritten as the JSON those versions read (`wxpush-pusher store-to-json`).
//!
//! Those versions decode every record in `messages` as JSON, so a store holding binary
//! records ([`super::stored`]) is not theirs to read, even after a clean stop. This rewrite
//! leaves a store that they read whole: opening it lists the messages pending without a
//! `schedule` entry and removes their mark (what a clean stop does), and each binary record
//! becomes the JSON of the record as accepted. It writes in transactions of
//! [`BATCH`] records; run again after an interruption, it goes on with what is left.

use std::path::Path;

use redb::ReadableTable;

use super::schema::{MESSAGES, load_index, open_db, storage};
use super::stored::{self, FORMAT};
use super::{EmbeddedStore, HEAD, IdMap};
use crate::store::StoreError;

/// Records rewritten per transaction.
const BATCH: usize = 10_000;

impl EmbeddedStore {
    /// Rewrites the binary records of the store in `folder` as JSON, for a rollback to the
    /// versions before them; returns how many. The store must not be open elsewhere (redb
    /// refuses a second opener).
    pub fn write_records_as_json(folder: &Path) -> Result<u64, StoreError> {
        write_records_as_json(folder)
    }
}

fn write_records_as_json(folder: &Path) -> Result<u64, StoreError> {
    let file = EmbeddedStore::file_in(folder);
    if !file.exists() {
        return Err(StoreError::Storage(
            format!("no store at {}", file.display()).into(),
        ));
    }
    let db = open_db(&file)?;
    // Opening lists the messages pending without a `schedule` entry, and removes the mark.
    load_index(&db, HEAD, &IdMap::default())?;
    let mut written = 0;
    let mut from = 0u128;
    loop {
        let txn = db.begin_write().map_err(storage)?;
        let mut last = None;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(storage)?;
            let mut batch = Vec::new();
            for entry in messages.range(from..).map_err(storage)? {
                let (id, bytes) = entry.map_err(storage)?;
                let id = id.value();
                last = Some(id);
                if bytes.value().first() == Some(&FORMAT) {
                    let record = stored::decode(id, bytes.value())?;
                    let json = serde_json::to_vec(&record)
                        .map_err(|e| StoreError::storage(format!("encode record: {e}"), e))?;
                    batch.push((id, json));
                    if batch.len() == BATCH {
                        break;
                    }
                }
            }
            for (id, json) in &batch {
                messages.insert(*id, json.as_slice()).map_err(storage)?;
            }
            written += batch.len() as u64;
        }
        txn.commit().map_err(storage)?;
        match last {
            Some(id) if id < u128::MAX => from = id + 1,
            _ => break,
        }
    }
    Ok(written)
}
