//! Who may use the server: the admin secret, sessions made by logging in, and what happens to
//! wrong secrets.
//!
//! **A correct secret is always accepted, at once.** It is checked against its SHA-256 digest in
//! constant time (microseconds), so no number of wrong attempts, from any address, can keep the
//! admin out: behind a reverse proxy every client has the proxy's address, and a lockout by
//! address would let anyone lock everyone out.
//!
//! **Wrong secrets are slowed and limited** per client address (an IPv6 client by its /64): each
//! one is answered after a delay that grows with the address's recent failures (100 ms for each
//! failure in the last minute, at most 2 s), and past [`MAX_FAILURES`] a minute the answer is 429
//! with `Retry-After` instead of 401. Guessing is hopeless anyway: a stored secret has 192 random
//! bits, and `TORU_ADMIN_SECRET` must have at least 16 characters.
//!
//! A database written before digests were stored has only the argon2id hash: there, until the
//! right secret has been given once (which stores its digest), an address past the limit is
//! refused without a check, as argon2 costs tens of milliseconds of CPU per attempt.
//!
//! Nothing secret is kept in memory in the clear: sessions are found by the SHA-256 of their
//! token.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use toru_host::AppSettings;

use crate::secret::{self, Digest32, SecretCheck, digest, same_digest};

/// How long a session lasts after login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed attempts per client address in [`FAILURE_WINDOW`] answered 401; past them, 429.
pub(crate) const MAX_FAILURES: usize = 5;
/// The window failed attempts are counted in.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The delay before answering a wrong secret, per failure of its address in the window.
const DELAY_STEP: Duration = Duration::from_millis(100);
/// The longest delay before answering a wrong secret.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// Wrong answers being delayed at once at most; past that, they are answered at once (each one
/// holds a connection).
const MAX_DELAYED: usize = 256;
/// Failures remembered per address (enough to count past the limit and to the longest delay).
const MAX_REMEMBERED: usize = 32;
/// Random bytes in a session token.
const SESSION_TOKEN_BYTES: usize = 32;
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// Client addresses tracked at most by the limiter.
const MAX_TRACKED: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a secret was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The secret is wrong.
    Wrong,
    /// The secret is wrong, and so were too many from this address; try again after this long.
    TooMany(Duration),
}

/// The server's authentication state.
pub(crate) struct Auth {
    /// The secret's digest, once known.
    digest: Mutex<Option<Digest32>>,
    /// The argon2id hash, for a stored secret whose digest is not known yet.
    hash: Option<String>,
    /// Where a digest learnt from the hash is stored.
    settings: Option<AppSettings>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<RateLimiter>,
    /// Bounds the argon2 work running at once.
    hashing: Semaphore,
    /// Bounds the wrong answers being delayed at once.
    delayed: Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Checks secrets with `check`; a digest learnt from the argon2 hash is saved in `settings`.
    pub(crate) fn new(check: SecretCheck, settings: Option<AppSettings>) -> Auth {
        Auth {
            digest: Mutex::new(check.digest),
            hash: check.hash,
            settings,
            sessions: Mutex::new(Sessions::default()),
            limiter: Mutex::new(RateLimiter::default()),
            hashing: Semaphore::new(2),
            delayed: Semaphore::new(MAX_DELAYED),
        }
    }

    /// Checks `secret` for a client at `ip`. A right secret passes at once; a wrong one counts
    /// against the address and is answered after a delay.
    pub(crate) async fn check_secret(
        &self,
        secret: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), Denied> {
        let source = source(ip);
        let attempt = digest(secret);
        let known = *lock(&self.digest);
        let right = match known {
            Some(known) => same_digest(&known, &attempt),
            None => self.check_hash(secret, attempt, source).await?,
        };
        if right {
            return Ok(());
        }
        let (failures, retry_after) = lock(&self.limiter).fail(source, Instant::now());
        if let Ok(_permit) = self.delayed.try_acquire() {
            tokio::time::sleep(delay(failures)).await;
        }
        match retry_after {
            Some(wait) => Err(Denied::TooMany(wait)),
            None => Err(Denied::Wrong),
        }
    }

    /// The argon2 check, for a stored secret without a digest; an address past the limit is
    /// refused unchecked. A right secret's digest is kept, and stored.
    async fn check_hash(
        &self,
        secret: &str,
        attempt: Digest32,
        source: IpAddr,
    ) -> Result<bool, Denied> {
        if let Some(wait) = lock(&self.limiter).retry_after(source, Instant::now()) {
            return Err(Denied::TooMany(wait));
        }
        let Some(hash) = self.hash.clone() else {
            return Ok(false);
        };
        let right = {
            let _permit = self.hashing.acquire().await.map_err(|_| Denied::Wrong)?;
            let secret = secret.to_owned();
            tokio::task::spawn_blocking(move || secret::verify(&hash, &secret))
                .await
                .unwrap_or(false)
        };
        if right {
            let first = lock(&self.digest).replace(attempt).is_none();
            if first && let Some(settings) = &self.settings {
                match secret::store_digest(settings, &attempt).await {
                    Ok(()) => tracing::info!("stored the admin secret's digest"),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "{e}"),
                }
            }
        }
        Ok(right)
    }

    /// Starts a session and returns its token (for the cookie).
    pub(crate) fn new_session(&self) -> anyhow::Result<String> {
        let token = secret::random_token(SESSION_TOKEN_BYTES)?;
        lock(&self.sessions).insert(digest(&token), Instant::now());
        Ok(token)
    }

    /// Whether `token` names a live session.
    pub(crate) fn session_valid(&self, token: &str) -> bool {
        lock(&self.sessions).valid(&digest(token), Instant::now())
    }

    /// Forgets the session `token` names.
    pub(crate) fn end_session(&self, token: &str) {
        lock(&self.sessions).remove(&digest(token));
    }
}

/// Whose failures an address counts as: an IPv4 address, or an IPv6 address's /64 (one host
/// usually has a whole /64). No address (never the case behind the edge) counts as one client.
fn source(ip: Option<IpAddr>) -> IpAddr {
    match ip {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// How long a wrong answer waits, given its address's failures in the window (this one
/// included).
fn delay(failures: usize) -> Duration {
    DELAY_STEP
        .saturating_mul(u32::try_from(failures).unwrap_or(u32::MAX))
        .min(MAX_DELAY)
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
    /// `Some(wait)` when `ip` has used up its failures: how long until it may fail again
    /// without going past the limit.
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
        // Used up until enough of the oldest failures have left the window.
        let over = times.len().checked_sub(MAX_FAILURES)?;
        Some((times[over] + FAILURE_WINDOW).saturating_duration_since(now))
    }

    /// Records a failure; returns the address's failures in the window (this one included) and,
    /// when it is past the limit, how long until it is not.
    fn fail(&mut self, ip: IpAddr, now: Instant) -> (usize, Option<Duration>) {
        if self.failures.len() >= MAX_TRACKED && !self.failures.contains_key(&ip) {
            self.failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
        }
        let times = self.failures.entry(ip).or_default();
        times.push_back(now);
        while times.len() > MAX_REMEMBERED {
            times.pop_front();
        }
        let count = times.len();
        let retry = if count > MAX_FAILURES {
            self.retry_after(ip, now)
        } else {
            None
        };
        (count, retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn five_failures_a_minute_then_429_until_they_leave_the_window() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            let at = t0 + Duration::from_secs(i as u64);
            assert_eq!(limiter.fail(IP, at), (i + 1, None), "failure {i}");
        }
        let now = t0 + Duration::from_secs(10);
        let (count, retry) = limiter.fail(IP, now);
        assert_eq!(count, MAX_FAILURES + 1);
        // A wrong secret is answered 401 again once two failures (at t0 and t0 + 1 s) have left
        // the window: the next one is then the fifth.
        assert_eq!(retry, Some(Duration::from_secs(51)));
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(limiter.retry_after(other, now), None);
        let later = t0 + Duration::from_secs(1) + FAILURE_WINDOW;
        assert!(
            limiter
                .retry_after(IP, later - Duration::from_millis(1))
                .is_some()
        );
        assert_eq!(limiter.retry_after(IP, later), None);
        assert_eq!(limiter.fail(IP, later), (5, None));
    }

    #[test]
    fn failures_are_remembered_up_to_a_bound() {
        let mut limiter = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            limiter.fail(IP, t0);
        }
        assert_eq!(limiter.failures[&IP].len(), MAX_REMEMBERED);
    }

    #[test]
    fn the_delay_grows_with_failures_up_to_a_bound() {
        assert_eq!(delay(1), Duration::from_millis(100));
        assert_eq!(delay(5), Duration::from_millis(500));
        assert_eq!(delay(20), MAX_DELAY);
        assert_eq!(delay(usize::MAX), MAX_DELAY);
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_by_its_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source(Some(a)), source(Some(b)));
        assert_ne!(source(Some(a)), source(Some(c)));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(source(Some(mapped)), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn sessions_expire_and_end() {
        let mut sessions = Sessions::default();
        let t0 = Instant::now();
        let key = digest("token");
        sessions.insert(key, t0);
        assert!(sessions.valid(&key, t0 + Duration::from_secs(60)));
        assert!(!sessions.valid(&digest("other"), t0));
        assert!(!sessions.valid(&key, t0 + SESSION_TTL));
        sessions.remove(&key);
        assert!(!sessions.valid(&key, t0));
    }

    fn check(secret: &str) -> SecretCheck {
        SecretCheck {
            digest: Some(digest(secret)),
            hash: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_right_secret_always_passes_and_wrong_ones_are_slowed_then_limited() {
        let auth = Auth::new(check("s3cret"), None);
        let ip = Some(IP);
        for i in 0..MAX_FAILURES {
            let start = tokio::time::Instant::now();
            assert_eq!(auth.check_secret("nope", ip).await, Err(Denied::Wrong));
            assert_eq!(start.elapsed(), delay(i + 1), "failure {i} is slowed");
        }
        assert!(matches!(
            auth.check_secret("nope", ip).await,
            Err(Denied::TooMany(_))
        ));
        // The admin, from the same address, gets in at once.
        let start = tokio::time::Instant::now();
        assert_eq!(auth.check_secret("s3cret", ip).await, Ok(()));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stored_hash_without_digest_is_checked_with_argon2_and_then_remembered() {
        let auth = Auth::new(
            SecretCheck {
                digest: None,
                hash: Some(secret::hash("s3cret").unwrap()),
            },
            None,
        );
        let ip = Some(IP);
        assert_eq!(auth.check_secret("nope", ip).await, Err(Denied::Wrong));
        assert_eq!(auth.check_secret("s3cret", ip).await, Ok(()));
        assert_eq!(*lock(&auth.digest), Some(digest("s3cret")));
        // Past the limit, the right secret still passes: its digest is known now.
        for _ in 0..MAX_FAILURES {
            let _ = auth.check_secret("nope", ip).await;
        }
        assert_eq!(auth.check_secret("s3cret", ip).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_digest_an_address_past_the_limit_is_refused_unchecked() {
        let auth = Auth::new(
            SecretCheck {
                digest: None,
                hash: Some(secret::hash("s3cret").unwrap()),
            },
            None,
        );
        let ip = Some(IP);
        for _ in 0..=MAX_FAILURES {
            let _ = auth.check_secret("nope", ip).await;
        }
        assert!(matches!(
            auth.check_secret("s3cret", ip).await,
            Err(Denied::TooMany(_))
        ));
        let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(auth.check_secret("s3cret", elsewhere).await, Ok(()));
    }

    #[test]
    fn session_tokens_are_random_and_checked() {
        let auth = Auth::new(check("x"), None);
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
