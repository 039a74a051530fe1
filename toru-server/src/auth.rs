//! Who may use the server: the admin secret (checked with argon2id), sessions made by logging in,
//! and the limit on failed attempts.
//!
//! Nothing secret is kept in memory in the clear: sessions are found by the SHA-256 of their
//! token, and a bearer secret that verified once is remembered by its SHA-256 so that API clients
//! do not pay for argon2 on every request.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::secret;

/// How long a session lasts after login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed attempts allowed per client address in [`FAILURE_WINDOW`].
pub(crate) const MAX_FAILURES: usize = 5;
/// The window failed attempts are counted in.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Random bytes in a session token.
const SESSION_TOKEN_BYTES: usize = 32;
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// Client addresses tracked at most by the limiter.
const MAX_TRACKED: usize = 10_000;

type Digest32 = [u8; 32];

fn sha256(text: &str) -> Digest32 {
    Sha256::digest(text.as_bytes()).into()
}

/// Compares two digests in constant time.
fn same_digest(a: &Digest32, b: &Digest32) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a secret was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The secret is wrong.
    Wrong,
    /// Too many failures from this address; try again after this long.
    TooMany(Duration),
}

/// The server's authentication state.
pub(crate) struct Auth {
    hash: String,
    /// The SHA-256 of the secret once it has verified.
    verified: Mutex<Option<Digest32>>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<RateLimiter>,
    /// Bounds the argon2 work running at once.
    hashing: Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Checks against the admin secret whose argon2id hash is `hash`.
    pub(crate) fn new(hash: String) -> Auth {
        Auth {
            hash,
            verified: Mutex::new(None),
            sessions: Mutex::new(Sessions::default()),
            limiter: Mutex::new(RateLimiter::default()),
            hashing: Semaphore::new(2),
        }
    }

    /// Checks `secret` for a client at `ip`, counting a failure against it.
    pub(crate) async fn check_secret(
        &self,
        secret: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), Denied> {
        // The limit comes first, even for a secret known to be right: otherwise a limited
        // client could still tell a right guess from a wrong one.
        let ip = ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if let Some(wait) = lock(&self.limiter).retry_after(ip, Instant::now()) {
            return Err(Denied::TooMany(wait));
        }
        let digest = sha256(secret);
        if lock(&self.verified)
            .as_ref()
            .is_some_and(|known| same_digest(known, &digest))
        {
            return Ok(());
        }
        let ok = {
            let _permit = self.hashing.acquire().await.map_err(|_| Denied::Wrong)?;
            let hash = self.hash.clone();
            let secret = secret.to_owned();
            tokio::task::spawn_blocking(move || secret::verify(&hash, &secret))
                .await
                .unwrap_or(false)
        };
        let mut limiter = lock(&self.limiter);
        if ok {
            limiter.clear(ip);
            *lock(&self.verified) = Some(digest);
            Ok(())
        } else {
            limiter.fail(ip, Instant::now());
            Err(Denied::Wrong)
        }
    }

    /// Starts a session and returns its token (for the cookie).
    pub(crate) fn new_session(&self) -> anyhow::Result<String> {
        let token = secret::random_token(SESSION_TOKEN_BYTES)?;
        lock(&self.sessions).insert(sha256(&token), Instant::now());
        Ok(token)
    }

    /// Whether `token` names a live session.
    pub(crate) fn session_valid(&self, token: &str) -> bool {
        lock(&self.sessions).valid(&sha256(token), Instant::now())
    }

    /// Forgets the session `token` names.
    pub(crate) fn end_session(&self, token: &str) {
        lock(&self.sessions).remove(&sha256(token));
    }
}

/// Live sessions by the SHA-256 of their token, with their expiry.
#[derive(Debug, Default)]
struct Sessions {
    expiry: HashMap<Digest32, Instant>,
}

impl Sessions {
    fn insert(&mut self, key: Digest32, now: Instant) {
        self.expiry.retain(|_, until| *until > now);
        if self.expiry.len() >= MAX_SESSIONS
            && let Some(oldest) = self.expiry.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            self.expiry.remove(&oldest);
        }
        self.expiry.insert(key, now + SESSION_TTL);
    }

    fn valid(&self, key: &Digest32, now: Instant) -> bool {
        self.expiry.get(key).is_some_and(|until| *until > now)
    }

    fn remove(&mut self, key: &Digest32) {
        self.expiry.remove(key);
    }
}

/// Failed attempts per client address in a sliding window.
#[derive(Debug, Default)]
struct RateLimiter {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl RateLimiter {
    /// `Some(wait)` when `ip` has used up its attempts.
    fn retry_after(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let times = self.failures.get_mut(&ip)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            times.pop_front();
        }
        if times.is_empty() {
            self.failures.remove(&ip);
            return None;
        }
        (times.len() >= MAX_FAILURES)
            .then(|| (times[0] + FAILURE_WINDOW).saturating_duration_since(now))
    }

    fn fail(&mut self, ip: IpAddr, now: Instant) {
        if self.failures.len() >= MAX_TRACKED && !self.failures.contains_key(&ip) {
            self.failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
        }
        let times = self.failures.entry(ip).or_default();
        times.push_back(now);
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }

    fn clear(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn five_failures_a_minute_then_wait() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(limiter.retry_after(IP, t0), None, "attempt {i}");
            limiter.fail(IP, t0 + Duration::from_secs(i as u64));
        }
        let now = t0 + Duration::from_secs(10);
        assert_eq!(limiter.retry_after(IP, now), Some(Duration::from_secs(50)));
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(limiter.retry_after(other, now), None);
        // The oldest failure leaves the window: one more attempt.
        assert_eq!(limiter.retry_after(IP, t0 + FAILURE_WINDOW), None);
        limiter.clear(IP);
        assert_eq!(limiter.retry_after(IP, now), None);
    }

    #[test]
    fn sessions_expire_and_end() {
        let mut sessions = Sessions::default();
        let t0 = Instant::now();
        let key = sha256("token");
        sessions.insert(key, t0);
        assert!(sessions.valid(&key, t0 + Duration::from_secs(60)));
        assert!(!sessions.valid(&sha256("other"), t0));
        assert!(!sessions.valid(&key, t0 + SESSION_TTL));
        sessions.remove(&key);
        assert!(!sessions.valid(&key, t0));
    }

    #[tokio::test]
    async fn the_secret_is_checked_and_failures_are_limited() {
        let auth = Auth::new(secret::hash("s3cret").unwrap());
        let ip = Some(IP);
        assert_eq!(auth.check_secret("s3cret", ip).await, Ok(()));
        // Remembered by digest now: right again without argon2.
        assert_eq!(auth.check_secret("s3cret", ip).await, Ok(()));
        for _ in 0..MAX_FAILURES {
            assert_eq!(auth.check_secret("nope", ip).await, Err(Denied::Wrong));
        }
        // A limited client cannot tell a right guess from a wrong one.
        for guess in ["nope", "s3cret"] {
            assert!(matches!(
                auth.check_secret(guess, ip).await,
                Err(Denied::TooMany(_))
            ));
        }
        let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(auth.check_secret("s3cret", elsewhere).await, Ok(()));
    }

    #[test]
    fn session_tokens_are_random_and_checked() {
        let auth = Auth::new(String::new());
        let a = auth.new_session().unwrap();
        let b = auth.new_session().unwrap();
        assert_ne!(a, b);
        assert!(auth.session_valid(&a));
        auth.end_session(&a);
        assert!(!auth.session_valid(&a));
        assert!(auth.session_valid(&b));
        assert!(!auth.session_valid("forged"));
    }
}
