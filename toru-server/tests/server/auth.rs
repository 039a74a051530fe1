//! Authentication: on by default, bearer and session cookie, logout, wrong secrets slowed and
//! limited while the right one always gets in, cross-site requests refused, credentials never
//! forwarded, and the generated secret.

use reqwest::Method;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use crate::routes::{echoed_header, echoed_header_names};
use crate::util::{Env, SECRET, Server};

async fn code(r: reqwest::Response) -> String {
    let body: Value = r.json().await.expect("JSON error");
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Logs in and returns the `toru_session=...` cookie pair and the whole Set-Cookie header.
async fn login(server: &Server, secret: &str) -> (String, String) {
    let r = server
        .anon(Method::POST, "/api/login")
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login");
    let set_cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    assert_eq!(r.json::<Value>().await.unwrap()["ok"], true);
    (pair, set_cookie)
}

#[tokio::test]
async fn without_credentials_or_with_a_wrong_secret_everything_but_the_open_routes_is_401() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let closed = [
        (Method::GET, "/api/plugins"),
        (Method::GET, "/api/plugins/hello-rust"),
        (Method::POST, "/api/plugins/hello-rust/disable"),
        (Method::GET, "/api/plugins/hello-rust/bundle.js"),
        (Method::GET, "/api/plugins/hello-rust/logs"),
        (Method::GET, "/api/events"),
        (Method::GET, "/api/instance"),
        (Method::GET, "/metrics"),
        (Method::GET, "/plugins/hello-rust/"),
        (Method::POST, "/plugins/hello-rust/count"),
    ];
    for (method, path) in &closed {
        let r = server.anon(method.clone(), path).send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without credentials");
        assert_eq!(code(r).await, "unauthorized", "{path}");
        let r = server
            .anon(method.clone(), path)
            .header(COOKIE, "toru_session=forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a forged session");
    }
    // A wrong secret counts as a failed login: 401 up to the limit of 5 a minute.
    for path in [
        "/api/plugins",
        "/plugins/hello-rust/",
        "/metrics",
        "/api/events",
    ] {
        let r = server
            .anon(Method::GET, path)
            .bearer_auth("not-the-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong secret");
        assert_eq!(code(r).await, "unauthorized", "{path}");
    }
    for path in ["/healthz", "/", "/login", "/api/session"] {
        let r = server.anon(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} needs no credentials");
    }
    let session: Value = server
        .anon(Method::GET, "/api/session")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["authenticated"], false);
    assert_eq!(
        server.plugin("hello-rust").await["enabled"],
        true,
        "nothing changed"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_login_session_cookie_works_until_logout() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    let r = server
        .anon(Method::POST, "/api/login")
        .json(&json!({"secret": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(code(r).await, "wrong_secret");

    let (cookie, set_cookie) = login(&server, SECRET).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{attr} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let with_cookie =
        |method: Method, path: &str| server.anon(method, path).header(COOKIE, cookie.clone());
    let r = with_cookie(Method::GET, "/api/plugins")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = with_cookie(Method::GET, "/api/session")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["authenticated"], true);

    let r = with_cookie(Method::POST, "/api/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let r = with_cookie(Method::GET, "/api/plugins")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the session ended");

    // Behind TLS the cookie is Secure.
    let r = server
        .anon(Method::POST, "/api/login")
        .header("X-Forwarded-Proto", "https")
        .json(&json!({ "secret": SECRET }))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    server.stop().await;

    let server = Server::start(&env, &["--secure-cookies"]).await;
    let (_, set_cookie) = login(&server, SECRET).await;
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    server.stop().await;
}

/// A login attempt from this test's address; the status and, for a 429, its `Retry-After`.
async fn try_login(server: &Server, secret: &str) -> (u16, Option<u64>) {
    let r = server
        .anon(Method::POST, "/api/login")
        .json(&json!({ "secret": secret }))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (r.status().as_u16(), retry)
}

/// An attacker hammers wrong secrets from the admin's own address (as every client behind a
/// reverse proxy shares the proxy's): they are answered 401, then 429, never faster; the admin
/// then logs in at once, with the secret from `TORU_ADMIN_SECRET` and with a stored one.
#[tokio::test]
async fn wrong_secrets_are_slowed_and_limited_but_the_right_one_always_gets_in() {
    for stored in [false, true] {
        let env = Env::new();
        let server = if stored {
            Server::start_with(&env, &[], None).await
        } else {
            Server::start(&env, &[]).await
        };
        let secret = if stored {
            let line = server
                .banner
                .iter()
                .find_map(|l| l.strip_prefix("admin secret (shown only now; keep it): "))
                .expect("the generated secret");
            line.to_owned()
        } else {
            SECRET.to_owned()
        };
        let attempts = (0..20).map(|i| {
            let server = &server;
            async move {
                if i % 2 == 0 {
                    try_login(server, &format!("guess-{i}")).await
                } else {
                    let r = server
                        .anon(Method::GET, "/api/plugins")
                        .bearer_auth(format!("guess-{i}"))
                        .send()
                        .await
                        .unwrap();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().parse().unwrap());
                    (r.status().as_u16(), retry)
                }
            }
        });
        let answers = futures_util::future::join_all(attempts).await;
        let refused = answers.iter().filter(|(status, _)| *status == 401).count();
        assert_eq!(
            refused, 5,
            "five wrong secrets a minute are 401: {answers:?}"
        );
        for (status, retry) in &answers {
            match status {
                401 => assert_eq!(*retry, None),
                429 => assert!(
                    retry.is_some_and(|r| (1..=60).contains(&r)),
                    "Retry-After {retry:?}"
                ),
                other => panic!("a wrong secret answered {other}"),
            }
        }
        // The admin, from the same address, at once.
        let (cookie, _) = login(&server, &secret).await;
        let r = server
            .anon(Method::GET, "/api/plugins")
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the bearer secret works during the attack");
        let r = server
            .anon(Method::GET, "/api/plugins")
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "so does the session");
        // The attacker is still limited.
        let (status, retry) = try_login(&server, "guess-again").await;
        assert_eq!(status, 429);
        assert!(retry.is_some());
        let r = server
            .anon(Method::POST, "/api/login")
            .json(&json!({"secret": "guess-again"}))
            .send()
            .await
            .unwrap();
        assert_eq!(code(r).await, "too_many_attempts");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_short_admin_secret_in_the_environment_is_refused_at_start() {
    let env = Env::new();
    let out = tokio::process::Command::new(crate::util::server_bin())
        .arg("serve")
        .args(env.args())
        .env("TORU_ADMIN_SECRET", "short-secret")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TORU_ADMIN_SECRET is 12 characters long; it must be at least 16"),
        "{stderr}"
    );
}

#[tokio::test]
async fn cross_site_state_changes_are_refused() {
    let env = Env::new();
    env.install_rust_example();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust"]).await;
    let host = server.url.trim_start_matches("http://").to_owned();
    let refused = [
        ("Sec-Fetch-Site", "cross-site".to_owned()),
        ("Sec-Fetch-Site", "same-site".to_owned()),
        ("Origin", "http://evil.example".to_owned()),
        ("Origin", "null".to_owned()),
    ];
    for (header, value) in &refused {
        for path in [
            "/api/plugins/hello-rust/disable",
            "/plugins/hello-rust/count",
        ] {
            let r = server
                .req(Method::POST, path)
                .header(*header, value)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path} with {header}: {value}");
            assert_eq!(code(r).await, "cross_origin");
        }
        let r = server
            .anon(Method::POST, "/api/login")
            .header(*header, value)
            .json(&json!({ "secret": SECRET }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "login with {header}: {value}");
    }
    assert_eq!(server.plugin("hello-rust").await["state"], "running");

    // The same requests from this origin, and reads from anywhere, go through.
    let r = server
        .req(Method::POST, "/plugins/hello-rust/count")
        .header("Origin", format!("http://{host}"))
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .req(Method::GET, "/plugins/hello-rust/")
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn plugins_never_see_the_servers_cookie_authorization_or_hop_by_hop_headers() {
    let env = Env::new();
    env.install_examples();
    let server = Server::start(&env, &[]).await;
    server.wait_running(&["hello-rust", "hello-python"]).await;
    let (cookie, _) = login(&server, SECRET).await;
    for id in ["hello-rust", "hello-python"] {
        for bearer in [true, false] {
            let mut req = server
                .anon(Method::GET, &format!("/plugins/{id}/echo"))
                .header(COOKIE, format!("{cookie}; theme=dark"))
                .header("Connection", "keep-alive, X-Hop")
                .header("X-Hop", "one hop only")
                .header("Keep-Alive", "timeout=5")
                .header("X-Kept", "kept");
            if bearer {
                req = req.bearer_auth(SECRET);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{id}");
            let echo: Value = r.json().await.unwrap();
            let names = echoed_header_names(&echo);
            for gone in [
                "cookie",
                "authorization",
                "connection",
                "keep-alive",
                "x-hop",
            ] {
                assert!(!names.iter().any(|n| n == gone), "{id} saw {gone}: {echo}");
            }
            assert_eq!(
                echoed_header(&echo, "x-kept").as_deref(),
                Some("kept"),
                "{echo}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_generated_secret_is_shown_once_stored_hashed_and_reset_on_demand() {
    let env = Env::new();
    let server = Server::start_with(&env, &[], None).await;
    let line = server
        .banner
        .iter()
        .find(|l| l.starts_with("admin secret (shown only now"))
        .unwrap_or_else(|| panic!("the new secret is printed: {:?}", server.banner));
    let secret = line.rsplit(' ').next().unwrap().to_owned();
    assert!(secret.len() >= 32, "{secret}");
    let r = server
        .anon(Method::GET, "/api/plugins")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the printed secret works");
    server.stop().await;

    // Stored as an argon2id hash and a SHA-256 digest, never in the clear.
    let sha256 = |text: &str| -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    {
        let store =
            toru_host::Store::open(&env.data().join("toru.redb"), Default::default()).unwrap();
        let settings = store.app_settings();
        let hash = settings.get("admin_secret_hash").unwrap().expect("a hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(&secret));
        let digest = settings.get("admin_secret_sha256").unwrap();
        assert_eq!(digest, Some(sha256(&secret)));
        // As a database written before digests existed: the hash alone.
        settings.set("admin_secret_sha256", "").await.unwrap();
        store.close().await.unwrap();
    }

    // Not shown again, and still the secret (checked with the hash, whose digest is then
    // stored).
    let server = Server::start_with(&env, &[], None).await;
    assert!(
        !server.banner.iter().any(|l| l.contains(&secret)),
        "{:?}",
        server.banner
    );
    let r = server
        .anon(Method::GET, "/api/plugins")
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
    {
        let store =
            toru_host::Store::open(&env.data().join("toru.redb"), Default::default()).unwrap();
        let digest = store.app_settings().get("admin_secret_sha256").unwrap();
        assert_eq!(digest, Some(sha256(&secret)), "learnt from the hash");
        store.close().await.unwrap();
    }

    let out = tokio::process::Command::new(crate::util::server_bin())
        .arg("reset-admin-secret")
        .arg("--data-dir")
        .arg(env.data())
        .env_remove("TORU_ADMIN_SECRET")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new_secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("new admin secret (shown only now; keep it): "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_owned();
    assert_ne!(new_secret, secret);

    let server = Server::start_with(&env, &[], None).await;
    let status = |s: String| {
        let req = server.anon(Method::GET, "/api/plugins").bearer_auth(s);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(status(secret).await, 401, "the old secret no longer works");
    assert_eq!(status(new_secret).await, 200);
    server.stop().await;
}
