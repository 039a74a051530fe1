use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use toru_plugin_api::protocol::{KV_LIST_MAX, error_code};

use super::*;
use crate::events::EventKind;

mod commit;

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("data").join("toru.redb")
}

fn open(path: &Path) -> Store {
    Store::open(path, KvLimits::default()).expect("open the store")
}

fn small_quota(max_bytes_per_plugin: u64) -> KvLimits {
    KvLimits {
        max_key_len: 16,
        max_value_len: 64,
        max_bytes_per_plugin,
    }
}

#[tokio::test]
async fn instance_id_is_made_once_and_kept_across_reopen() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let id = store.instance_id();
    assert_eq!(id.get_version_num(), 4, "instance id {id} is not a UUID v4");
    assert_eq!(
        store.setting(settings::INSTANCE_ID).unwrap(),
        Some(id.to_string())
    );
    within("close", store.close()).await.unwrap();

    let store = open(&path);
    assert_eq!(store.instance_id(), id, "instance id changed on reopen");
    within("close", store.close()).await.unwrap();

    let other = TempDir::new().unwrap();
    let store = open(&db_path(&other));
    assert_ne!(
        store.instance_id(),
        id,
        "two databases share an instance id"
    );
}

#[tokio::test]
async fn settings_are_stored_and_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    assert_eq!(store.setting("admin_secret_hash").unwrap(), None);
    store
        .set_setting("admin_secret_hash", "$argon2id$x")
        .await
        .unwrap();
    store
        .set_setting("admin_secret_hash", "$argon2id$y")
        .await
        .unwrap();
    assert_eq!(
        store.setting("admin_secret_hash").unwrap().as_deref(),
        Some("$argon2id$y")
    );
    drop(store);
    // Dropping the last handle releases the file, so it can be opened again at once.
    let store = open(&path);
    assert_eq!(
        store.setting("admin_secret_hash").unwrap().as_deref(),
        Some("$argon2id$y")
    );
}

#[tokio::test]
async fn set_get_delete() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    let kv = store.kv("hello");
    assert_eq!(kv.plugin_id(), "hello");
    assert_eq!(kv.get("greeting").await.unwrap(), None);
    kv.set("greeting", "hi").await.unwrap();
    assert_eq!(kv.get("greeting").await.unwrap().as_deref(), Some("hi"));
    kv.set("greeting", "hello, world").await.unwrap();
    assert_eq!(
        kv.get("greeting").await.unwrap().as_deref(),
        Some("hello, world")
    );
    kv.set("empty", "").await.unwrap();
    assert_eq!(kv.get("empty").await.unwrap().as_deref(), Some(""));
    assert!(kv.delete("greeting").await.unwrap(), "greeting existed");
    assert!(
        !kv.delete("greeting").await.unwrap(),
        "greeting was deleted"
    );
    assert_eq!(kv.get("greeting").await.unwrap(), None);
}

#[tokio::test]
async fn list_by_prefix_in_byte_order_with_paging() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    let kv = store.kv("p");
    for key in [
        "user/2", "user/10", "user/1", "users", "user", "b", "a", "é", "z",
    ] {
        kv.set(key, "v").await.unwrap();
    }
    assert_eq!(
        kv.list("", None, 1000).await.unwrap(),
        [
            "a", "b", "user", "user/1", "user/10", "user/2", "users", "z", "é"
        ]
    );
    assert_eq!(
        kv.list("user/", None, 1000).await.unwrap(),
        ["user/1", "user/10", "user/2"]
    );
    assert_eq!(
        kv.list("user", None, 1000).await.unwrap(),
        ["user", "user/1", "user/10", "user/2", "users"]
    );
    assert!(kv.list("nope", None, 1000).await.unwrap().is_empty());
    assert!(kv.list("", None, 0).await.unwrap().is_empty());

    // Page through "user" two at a time.
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = kv.list("user", after.as_deref(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        pages.push(page);
    }
    assert_eq!(
        pages,
        [
            vec!["user", "user/1"],
            vec!["user/10", "user/2"],
            vec!["users"]
        ]
    );
    // An `after` before the prefix starts at the prefix; one past it ends the listing.
    assert_eq!(kv.list("user/", Some("a"), 10).await.unwrap().len(), 3);
    assert!(
        kv.list("user/", Some("user/3"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn list_is_capped_at_the_protocol_maximum() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    let kv = store.kv("many");
    let writes = (0..KV_LIST_MAX + 5).map(|i| {
        let kv = kv.clone();
        async move { kv.set(&format!("k{i:05}"), "").await }
    });
    for result in within("1005 writes", futures_util::future::join_all(writes)).await {
        result.unwrap();
    }
    let keys = kv.list("k", None, u32::MAX).await.unwrap();
    assert_eq!(keys.len(), KV_LIST_MAX as usize);
    let rest = kv
        .list("k", keys.last().map(String::as_str), u32::MAX)
        .await
        .unwrap();
    assert_eq!(rest.len(), 5);
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let dir = TempDir::new().unwrap();
    let store = open(&db_path(&dir));
    // "a" is a prefix of "ab": neither namespace may leak into the other's listing.
    let (a, ab) = (store.kv("a"), store.kv("ab"));
    a.set("key", "from a").await.unwrap();
    ab.set("key", "from ab").await.unwrap();
    a.set("bkey", "a's bkey").await.unwrap();
    assert_eq!(a.get("key").await.unwrap().as_deref(), Some("from a"));
    assert_eq!(ab.get("key").await.unwrap().as_deref(), Some("from ab"));
    assert_eq!(ab.get("bkey").await.unwrap(), None);
    assert_eq!(a.list("", None, 100).await.unwrap(), ["bkey", "key"]);
    assert_eq!(ab.list("", None, 100).await.unwrap(), ["key"]);
    assert!(a.delete("key").await.unwrap());
    assert_eq!(ab.get("key").await.unwrap().as_deref(), Some("from ab"));
    assert_eq!(a.usage().await.unwrap(), "bkey".len() as u64 + 8);
    assert_eq!(ab.usage().await.unwrap(), "key".len() as u64 + 7);
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    store.kv("p").set("k", "v1").await.unwrap();
    store.kv("p").set("gone", "x").await.unwrap();
    store.kv("p").delete("gone").await.unwrap();
    within("close", store.close()).await.unwrap();

    let store = open(&path);
    let kv = store.kv("p");
    assert_eq!(kv.get("k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(kv.get("gone").await.unwrap(), None);
    assert_eq!(kv.usage().await.unwrap(), 3);
}

#[tokio::test]
async fn size_limits_are_enforced_with_clear_errors() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&db_path(&dir), small_quota(1000)).unwrap();
    let kv = store.kv("p");

    let err = kv.set("", "v").await.unwrap_err();
    assert!(matches!(err, KvError::EmptyKey), "{err:?}");
    assert_eq!(err.code(), error_code::BAD_REQUEST);

    let long_key = "k".repeat(17);
    let err = kv.set(&long_key, "v").await.unwrap_err();
    assert!(
        matches!(err, KvError::KeyTooLarge { len: 17, max: 16 }),
        "{err:?}"
    );
    assert_eq!(err.code(), error_code::KV_TOO_LARGE);
    assert_eq!(err.to_string(), "key of 17 bytes exceeds the 16-byte limit");
    assert!(matches!(
        kv.get(&long_key).await,
        Err(KvError::KeyTooLarge { .. })
    ));

    let err = kv.set("k", &"v".repeat(65)).await.unwrap_err();
    assert!(
        matches!(err, KvError::ValueTooLarge { len: 65, max: 64 }),
        "{err:?}"
    );
    assert_eq!(err.code(), error_code::KV_TOO_LARGE);

    kv.set(&"k".repeat(16), &"v".repeat(64)).await.unwrap();
    assert_eq!(kv.list("", None, 10).await.unwrap(), ["k".repeat(16)]);
}

#[tokio::test]
async fn quota_counts_keys_and_values_and_a_replaced_value_frees_its_size() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(&db_path(&dir), small_quota(100)).unwrap();
    let kv = store.kv("p");
    kv.set("a", &"x".repeat(49)).await.unwrap(); // 50 bytes
    kv.set("b", &"x".repeat(39)).await.unwrap(); // 40 bytes
    assert_eq!(kv.usage().await.unwrap(), 90);

    let err = kv.set("c", &"x".repeat(10)).await.unwrap_err();
    match &err {
        KvError::QuotaExceeded {
            plugin,
            used,
            requested,
            max,
        } => assert_eq!(
            (plugin.as_str(), *used, *requested, *max),
            ("p", 90, 11, 100)
        ),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(err.code(), error_code::KV_QUOTA_EXCEEDED);
    assert!(err.to_string().contains("\"p\""), "{err}");
    assert_eq!(
        kv.get("c").await.unwrap(),
        None,
        "a refused write was stored"
    );

    // Replacing "a" (50 bytes) with 60 bytes needs only 10 more: 100 fits exactly.
    kv.set("a", &"y".repeat(59)).await.unwrap();
    assert_eq!(kv.usage().await.unwrap(), 100);
    // Shrinking frees room for another key.
    kv.set("a", "y").await.unwrap();
    assert_eq!(kv.usage().await.unwrap(), 42);
    kv.set("c", &"x".repeat(10)).await.unwrap();
    assert!(kv.delete("b").await.unwrap());
    assert_eq!(kv.usage().await.unwrap(), 13);

    // Another plugin's quota is its own.
    store.kv("q").set("a", &"x".repeat(64)).await.unwrap();
    assert_eq!(store.kv("q").usage().await.unwrap(), 65);
}

#[tokio::test]
async fn a_refused_write_does_not_fail_the_rest_of_its_batch() {
    let dir = TempDir::new().unwrap();
    // 64 writes of 10 bytes each against a 320-byte quota: whatever the batching, exactly 32
    // are stored, the others are refused, and none fails for another reason.
    let store = Store::open(&db_path(&dir), small_quota(320)).unwrap();
    let kv = store.kv("p");
    let writes = (0..64).map(|i| {
        let kv = kv.clone();
        async move { kv.set(&format!("k{i:02}"), "1234567").await }
    });
    let results = within("64 writes", futures_util::future::join_all(writes)).await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(KvError::QuotaExceeded { .. })))
        .count();
    assert_eq!((stored, refused), (32, 32), "{results:?}");
    assert_eq!(kv.usage().await.unwrap(), 320);
    assert_eq!(kv.list("", None, 100).await.unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_all_durable() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let kv = store.kv(&format!("plugin{}", i % 4));
            tokio::spawn(async move { kv.set(&format!("key{i}"), &format!("value{i}")).await })
        })
        .collect();
    for task in tasks {
        within("a concurrent write", task).await.unwrap().unwrap();
    }
    drop(store);

    let store = open(&path);
    for i in 0..64 {
        let kv = store.kv(&format!("plugin{}", i % 4));
        assert_eq!(
            kv.get(&format!("key{i}")).await.unwrap(),
            Some(format!("value{i}")),
            "key{i} lost after reopen"
        );
    }
}

fn event(plugin_id: &str, kind: EventKind, time_ms: u64) -> PluginEvent {
    PluginEvent {
        time_ms,
        ..PluginEvent::new(plugin_id, kind)
    }
}

fn kinds(events: &[PluginEvent]) -> Vec<(&str, EventKind, u64)> {
    events
        .iter()
        .map(|e| (e.plugin_id.as_str(), e.kind, e.time_ms))
        .collect()
}

#[tokio::test]
async fn events_are_newest_first_paged_and_per_plugin() {
    use EventKind::*;
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let failed = event("b", Failed, 300).with_reason("exit code 78");
    for e in [
        event("a", Enabled, 100),
        event("a", Started, 200),
        event("b", Started, 200),
        failed.clone(),
        event("a", Stopped, 400),
    ] {
        store.record_event(&e).await.unwrap();
    }
    let all = |page, page_size| EventQuery {
        plugin_id: None,
        page,
        page_size,
    };
    let of = |id: &str, page, page_size| EventQuery {
        plugin_id: Some(id.into()),
        page,
        page_size,
    };

    let newest = store.events(&all(0, 0)).await.unwrap();
    assert_eq!(
        kinds(&newest),
        [
            ("a", Stopped, 400),
            ("b", Failed, 300),
            ("b", Started, 200),
            ("a", Started, 200),
            ("a", Enabled, 100)
        ]
    );
    assert_eq!(newest[1], failed, "an event reads back as it was recorded");
    assert_eq!(
        kinds(&store.events(&all(1, 2)).await.unwrap()),
        [("b", Started, 200), ("a", Started, 200)]
    );
    assert_eq!(
        kinds(&store.events(&all(2, 2)).await.unwrap()),
        [("a", Enabled, 100)]
    );
    assert!(store.events(&all(3, 2)).await.unwrap().is_empty());
    assert_eq!(
        kinds(&store.events(&of("a", 0, 2)).await.unwrap()),
        [("a", Stopped, 400), ("a", Started, 200)]
    );
    assert_eq!(
        kinds(&store.events(&of("a", 1, 2)).await.unwrap()),
        [("a", Enabled, 100)]
    );
    assert_eq!(store.events(&of("b", 0, 10)).await.unwrap().len(), 2);
    assert!(store.events(&of("nobody", 0, 10)).await.unwrap().is_empty());

    // Cleanup removes events older than the cut, from both the table and the index.
    assert_eq!(store.cleanup_events(300).await.unwrap(), 3);
    assert_eq!(store.cleanup_events(300).await.unwrap(), 0);
    assert_eq!(
        kinds(&store.events(&all(0, 0)).await.unwrap()),
        [("a", Stopped, 400), ("b", Failed, 300)]
    );
    assert_eq!(
        kinds(&store.events(&of("a", 0, 0)).await.unwrap()),
        [("a", Stopped, 400)]
    );
    within("close", store.close()).await.unwrap();

    let store = open(&path);
    assert_eq!(
        store.events(&all(0, 0)).await.unwrap().len(),
        2,
        "events lost on reopen"
    );
}

fn assert_refused_untouched(dir: &TempDir, contents: &[u8]) {
    let path = dir.path().join("toru.redb");
    std::fs::write(&path, contents).unwrap();
    let err = Store::open(&path, KvLimits::default()).expect_err("a non-database file opened");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error does not name the file: {err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        contents,
        "the file was changed"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = TempDir::new().unwrap();
    assert_refused_untouched(&dir, b"not a database\n");
    // Big enough to hold a header, with bytes that are not one.
    let noise: Vec<u8> = (0..16384u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_refused_untouched(&dir, &noise);
}

#[test]
fn an_empty_file_is_refused_as_damaged_not_made_a_new_database() {
    let dir = TempDir::new().unwrap();
    assert_refused_untouched(&dir, b"");
    let err = Store::open(&dir.path().join("toru.redb"), KvLimits::default()).unwrap_err();
    assert!(
        std::error::Error::source(&err)
            .is_some_and(|e| e.to_string().contains("the file is empty")),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_file_is_made_private_and_an_existing_one_is_tightened() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    assert_eq!(mode(&path), 0o600, "a new database is the owner's only");
    within("close", store.close()).await.unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = open(&path);
    assert_eq!(mode(&path), 0o600, "an existing one is tightened");
    within("close", store.close()).await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let _store = open(&path);
    let err = Store::open(&path, KvLimits::default()).expect_err("opened twice");
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_closed_store_refuses_calls() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    let kv = store.kv("p");
    kv.set("k", "v").await.unwrap();
    within("close", store.close()).await.unwrap();
    within("a second close", store.close()).await.unwrap();

    let err = kv.set("k", "w").await.unwrap_err();
    assert!(matches!(err, KvError::Closed), "{err:?}");
    assert_eq!(err.code(), error_code::SHUTTING_DOWN);
    assert!(matches!(kv.get("k").await, Err(KvError::Closed)));
    assert!(matches!(store.setting("x"), Err(StoreError::Closed)));
    assert!(matches!(
        store.record_event(&event("p", EventKind::Started, 1)).await,
        Err(StoreError::Closed)
    ));
    // The file is released although handles remain.
    let reopened = open(&path);
    assert_eq!(
        reopened.kv("p").get("k").await.unwrap().as_deref(),
        Some("v")
    );
}

#[tokio::test]
async fn a_damaged_database_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&path);
    for i in 0..200 {
        store
            .kv("p")
            .set(&format!("key{i}"), &"v".repeat(500))
            .await
            .unwrap();
    }
    within("close", store.close()).await.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 4..len / 2] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path, KvLimits::default()).expect_err("a damaged file opened");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
}
