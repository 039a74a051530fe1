//! The `settings` table: the instance id and whatever the server keeps there.

use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use uuid::Uuid;

use super::error::{StoreError, storage};
use super::{PLUGIN_EVENTS, PLUGIN_EVENTS_BY_PLUGIN, PLUGIN_KV, PLUGIN_KV_USAGE, SETTINGS};

/// The setting that holds the instance id.
pub(crate) const INSTANCE_ID: &str = "instance_id";

/// Creates every table that is missing, and the instance id on first open; returns the id.
pub(crate) fn init(db: &Database) -> Result<Uuid, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let id = {
        txn.open_table(PLUGIN_KV).map_err(storage)?;
        txn.open_table(PLUGIN_KV_USAGE).map_err(storage)?;
        txn.open_table(PLUGIN_EVENTS).map_err(storage)?;
        txn.open_table(PLUGIN_EVENTS_BY_PLUGIN).map_err(storage)?;
        let mut settings = txn.open_table(SETTINGS).map_err(storage)?;
        let stored = settings
            .get(INSTANCE_ID)
            .map_err(storage)?
            .map(|v| v.value().to_owned());
        match stored {
            Some(text) => Uuid::parse_str(&text).map_err(|e| StoreError::Invalid {
                what: "instance id",
                detail: format!("{text:?}: {e}"),
            })?,
            None => {
                let id = Uuid::new_v4();
                settings
                    .insert(INSTANCE_ID, id.to_string().as_str())
                    .map_err(storage)?;
                tracing::info!(instance_id = %id, "created the instance id");
                id
            }
        }
    };
    txn.commit().map_err(storage)?;
    Ok(id)
}

pub(crate) fn get(db: &Database, key: &str) -> Result<Option<String>, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = txn.open_table(SETTINGS).map_err(storage)?;
    let value = table.get(key).map_err(storage)?;
    Ok(value.map(|v| v.value().to_owned()))
}
