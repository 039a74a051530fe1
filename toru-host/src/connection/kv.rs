//! The plugin's own `kv` requests, served in tasks of their own so a slow write never stalls the
//! reader.

use toru_plugin_api::protocol::{CowStr, KV_LIST_MAX, KvRequest, KvResult};

use crate::store::PluginKv;

/// Owned copies of a KV request's strings, so the operation can run in its own task.
pub(crate) enum KvOp {
    Get(String),
    Set(String, String),
    Delete(String),
    List {
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
}

pub(crate) trait IntoOwnedKv {
    fn into_owned_kv(self) -> KvOp;
}

impl IntoOwnedKv for KvRequest<'_> {
    fn into_owned_kv(self) -> KvOp {
        match self {
            KvRequest::Get { key } => KvOp::Get(key.into_string()),
            KvRequest::Set { key, value } => KvOp::Set(key.into_string(), value.into_string()),
            KvRequest::Delete { key } => KvOp::Delete(key.into_string()),
            KvRequest::List {
                prefix,
                after,
                limit,
            } => KvOp::List {
                prefix: prefix.into_string(),
                after: after.map(CowStr::into_string),
                limit: limit.unwrap_or(KV_LIST_MAX).min(KV_LIST_MAX),
            },
        }
    }
}

pub(crate) async fn run_kv(
    kv: &PluginKv,
    op: KvOp,
) -> Result<KvResult<'static>, crate::store::KvError> {
    Ok(match op {
        KvOp::Get(key) => KvResult {
            value: kv.get(&key).await?.map(CowStr::from),
            ..KvResult::default()
        },
        KvOp::Set(key, value) => {
            kv.set(&key, &value).await?;
            KvResult::default()
        }
        KvOp::Delete(key) => KvResult {
            existed: Some(kv.delete(&key).await?),
            ..KvResult::default()
        },
        KvOp::List {
            prefix,
            after,
            limit,
        } => KvResult {
            keys: Some(
                kv.list(&prefix, after.as_deref(), limit)
                    .await?
                    .into_iter()
                    .map(CowStr::from)
                    .collect(),
            ),
            ..KvResult::default()
        },
    })
}
