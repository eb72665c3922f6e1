//! One-time subscription credits in the embedded store (the `credits` table).

use redb::ReadableTable;

use super::EmbeddedStore;
use super::schema::{CREDITS, storage};
use crate::store::StoreError;

impl EmbeddedStore {
    /// Changes the credits of (`openid`, `template_id`) in one write transaction: `change`
    /// maps the balance to the new one, or `None` to leave it.
    pub(super) async fn change_credits(
        &self,
        openid: &str,
        template_id: &str,
        change: impl FnOnce(u64) -> Option<u64> + Send + 'static,
    ) -> Result<(u64, bool), StoreError> {
        let (openid, template_id) = (openid.to_string(), template_id.to_string());
        self.read(move |shared| {
            let txn = shared.begin_write()?;
            let result = {
                let mut table = txn.open_table(CREDITS).map_err(storage)?;
                let now = table
                    .get((openid.as_str(), template_id.as_str()))
                    .map_err(storage)?
                    .map_or(0, |v| v.value());
                match change(now) {
                    Some(next) => {
                        if next == 0 {
                            table
                                .remove((openid.as_str(), template_id.as_str()))
                                .map_err(storage)?;
                        } else {
                            table
                                .insert((openid.as_str(), template_id.as_str()), next)
                                .map_err(storage)?;
                        }
                        (next, true)
                    }
                    None => (now, false),
                }
            };
            txn.commit().map_err(storage)?;
            Ok(result)
        })
        .await
    }
}
