//! Plugin events in `plugin_events`, keyed by (time ms, sequence), with the index
//! `plugin_events_by_plugin` keyed by (plugin id, time ms, sequence) so one plugin's events are
//! read without scanning the others'.

use std::borrow::Cow;

use redb::{Database, ReadableDatabase, ReadableTable, Table};
use serde::Deserialize;

use super::error::{StoreError, storage};
use super::{PLUGIN_EVENTS, PLUGIN_EVENTS_BY_PLUGIN};
use crate::events::{EventQuery, PluginEvent};

/// Events per page when the query says 0.
const DEFAULT_PAGE_SIZE: u32 = 50;
/// The most events per page.
const MAX_PAGE_SIZE: u32 = 1000;

pub(crate) type Events<'txn> = Table<'txn, (u64, u64), &'static str>;
pub(crate) type Index<'txn> = Table<'txn, (&'static str, u64, u64), ()>;

/// Records an event after the others of its millisecond; returns the sequence number it got.
pub(crate) fn apply_record(
    events: &mut Events<'_>,
    index: &mut Index<'_>,
    plugin_id: &str,
    time_ms: u64,
    json: &str,
) -> Result<u64, StoreError> {
    // The sequence orders events of the same millisecond in recording order.
    let last = events
        .range((time_ms, 0)..=(time_ms, u64::MAX))
        .map_err(storage)?
        .next_back()
        .transpose()
        .map_err(storage)?
        .map(|(k, _)| k.value().1);
    let seq = last.map_or(0, |s| s + 1);
    insert(events, index, plugin_id, time_ms, seq, json)?;
    Ok(seq)
}

/// Stores an event under the sequence number it was given.
pub(crate) fn insert(
    events: &mut Events<'_>,
    index: &mut Index<'_>,
    plugin_id: &str,
    time_ms: u64,
    seq: u64,
    json: &str,
) -> Result<(), StoreError> {
    events.insert((time_ms, seq), json).map_err(storage)?;
    index
        .insert((plugin_id, time_ms, seq), ())
        .map_err(storage)?;
    Ok(())
}

pub(crate) fn apply_cleanup(
    events: &mut Events<'_>,
    index: &mut Index<'_>,
    older_than_ms: u64,
) -> Result<u64, StoreError> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        plugin_id: Cow<'a, str>,
    }
    let mut doomed = Vec::new();
    for entry in events.range(..(older_than_ms, 0)).map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        let plugin_id = serde_json::from_str::<Head<'_>>(v.value())
            .map(|h| h.plugin_id.into_owned())
            .ok();
        doomed.push((k.value(), plugin_id));
    }
    for &((time_ms, seq), ref plugin_id) in &doomed {
        events.remove((time_ms, seq)).map_err(storage)?;
        if let Some(plugin_id) = plugin_id {
            index
                .remove((plugin_id.as_str(), time_ms, seq))
                .map_err(storage)?;
        }
    }
    Ok(doomed.len() as u64)
}

pub(crate) fn query(db: &Database, query: &EventQuery) -> Result<Vec<PluginEvent>, StoreError> {
    let page_size = match query.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    } as usize;
    let skip = (query.page as usize).saturating_mul(page_size);
    let txn = db.begin_read().map_err(storage)?;
    let events = txn.open_table(PLUGIN_EVENTS).map_err(storage)?;
    let mut out = Vec::with_capacity(page_size);
    match &query.plugin_id {
        None => {
            for entry in events.iter().map_err(storage)?.rev().skip(skip) {
                if out.len() >= page_size {
                    break;
                }
                let (_, v) = entry.map_err(storage)?;
                out.extend(parse(v.value()));
            }
        }
        Some(plugin_id) => {
            let index = txn.open_table(PLUGIN_EVENTS_BY_PLUGIN).map_err(storage)?;
            let range = (plugin_id.as_str(), 0, 0)..=(plugin_id.as_str(), u64::MAX, u64::MAX);
            for entry in index.range(range).map_err(storage)?.rev().skip(skip) {
                if out.len() >= page_size {
                    break;
                }
                let (k, _) = entry.map_err(storage)?;
                let (_, time_ms, seq) = k.value();
                if let Some(v) = events.get((time_ms, seq)).map_err(storage)? {
                    out.extend(parse(v.value()));
                }
            }
        }
    }
    Ok(out)
}

fn parse(json: &str) -> Option<PluginEvent> {
    serde_json::from_str(json)
        .inspect_err(
            |e| tracing::warn!(error = %e, "skipping a stored event this version cannot read"),
        )
        .ok()
}
