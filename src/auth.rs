//! Who may do what: password hashing, bearer tokens and scope checks.
//!
//! Passwords are stored as argon2id PHC strings. A bearer token is a JWT
//! (HS256) signed with a key held in the replicated state, so every member can
//! verify any token; its id is also recorded as a `TokenInfo` object so it
//! can be listed and revoked.
//!
//! Argon2id parameters are the argon2 crate's defaults, OWASP's recommended
//! minimum: m = 19,456 KiB (19 MiB of memory per hash), t = 2 passes, p = 1
//! lane; one hash or check costs about 19 MiB and some tens of milliseconds
//! of one core. Every hash and check runs on a [`HashPool`]: a fixed set of
//! threads and a short queue, each thread reusing one buffer of argon2
//! memory, so memory for password work is bounded by `threads × 19 MiB`
//! however many logins arrive at once.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::model::{ObjectKind, Scope, ScopeLevel};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("token is malformed or its signature is wrong")]
    BadToken,
    #[error("token has expired")]
    Expired,
    #[error("token signing failed: {0}")]
    Sign(String),
}

/// Largest argon2 memory cost a stored hash may ask for when checked (64
/// MiB): a hash is checked on a login anyone can attempt, so its cost is
/// bounded whatever the stored string says.
const MAX_VERIFY_M_COST_KIB: u32 = 64 * 1024;

thread_local! {
    /// This thread's argon2 working memory, allocated once and reused, so
    /// password work never returns memory to the allocator to be kept in
    /// some arena: a thread's share stays at one hash's worth.
    static ARGON2_BLOCKS: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `work` with at least `count` argon2 blocks of this thread's memory.
fn with_blocks<T>(count: usize, work: impl FnOnce(&mut [argon2::Block]) -> T) -> T {
    ARGON2_BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, argon2::Block::default());
        }
        work(&mut blocks[..count])
    })
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    let argon2 = Argon2::default();
    let params = argon2.params().clone();
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    let output_len = params
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    let output = with_blocks(params.block_count(), |blocks| {
        argon2::password_hash::Output::init_with(output_len, |out| {
            argon2
                .hash_password_into_with_memory(password.as_bytes(), salt_raw, out, blocks)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
    })
    .map_err(|e| AuthError::Hash(e.to_string()))?;
    let hash = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(&params)
            .map_err(|e| AuthError::Hash(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Checks a password against a stored PHC string. A malformed stored hash,
/// or one asking for more than [`MAX_VERIFY_M_COST_KIB`], never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
        None => argon2::Version::default(),
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    if params.m_cost() > MAX_VERIFY_M_COST_KIB {
        tracing::warn!(
            m_cost_kib = params.m_cost(),
            "a stored password hash asks for more memory than checks may use; refusing it"
        );
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = with_blocks(params.block_count(), |blocks| {
        argon2::password_hash::Output::init_with(expected.len(), |out| {
            argon2
                .hash_password_into_with_memory(password.as_bytes(), salt_raw, out, blocks)
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
    });
    // `Output` compares in constant time.
    computed.is_ok_and(|computed| computed == expected)
}

/// Memory one argon2id hash with this module's parameters uses, in KiB.
pub const ARGON2_MEMORY_KIB: u32 = argon2::Params::DEFAULT_M_COST;

/// Password work waiting for a thread, beyond which callers are told to come
/// back later instead of queueing without end.
const HASH_QUEUE_PER_THREAD: usize = 4;
/// Most hashing threads, whatever the core count: memory is what bounds them.
const MAX_HASH_THREADS: usize = 8;

type HashJob = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads for password hashing and checking.
///
/// Each thread reuses its own allocator arena, so the pool's memory stays at
/// about `threads × ARGON2_MEMORY_KIB` (tokio's blocking pool would start up
/// to 512 threads under a login burst, each keeping its arena's high-water
/// mark).
#[derive(Clone)]
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
    threads: usize,
}

/// The pool's queue is full: retry after a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is busy; retry shortly")]
pub struct HashPoolBusy;

impl HashPool {
    /// One thread per core (at most [`MAX_HASH_THREADS`]).
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(cores.clamp(1, MAX_HASH_THREADS))
    }

    pub fn with_threads(threads: usize) -> Self {
        let threads = threads.max(1);
        let (jobs, queue) =
            std::sync::mpsc::sync_channel::<HashJob>(threads * HASH_QUEUE_PER_THREAD);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cradle-hash-{n}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(receiver) => receiver.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        // Every pool handle is gone.
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        HashPool { jobs, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool and waits for its result, or fails at once
    /// with [`HashPoolBusy`] when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashPoolBusy> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs.try_send(job).map_err(|_| HashPoolBusy)?;
        result.await.map_err(|_| HashPoolBusy)
    }
}

impl HashPool {
    /// [`HashPool::run`] for a pool handle moved into a task.
    pub async fn run_owned<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashPoolBusy> {
        self.run(work).await
    }
}

impl Default for HashPool {
    fn default() -> Self {
        Self::new()
    }
}

/// What a bearer token carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Token id (`TokenInfo.id`), checked against the revocation state.
    pub jti: String,
    /// User name.
    pub sub: String,
    pub scope: Scope,
    pub iat: u64,
    pub exp: u64,
}

pub fn sign(claims: &Claims, key: &[u8]) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .map_err(|e| AuthError::Sign(e.to_string()))
}

/// Verifies signature and expiry against `now_unix`.
pub fn verify(token: &str, key: &[u8], now_unix: u64) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the caller's clock so tests can move it.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|_| AuthError::BadToken)?;
    if data.claims.exp <= now_unix {
        return Err(AuthError::Expired);
    }
    Ok(data.claims)
}

/// A fresh random secret, hex-encoded.
pub fn random_secret(bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Does `scope` allow an operation needing `level` on `kind`/`object`?
pub fn allows(
    scope: &Scope,
    level: ScopeLevel,
    kind: Option<ObjectKind>,
    object: Option<&str>,
) -> bool {
    if scope.level < level {
        return false;
    }
    if let Some(limit) = scope.kind {
        if kind != Some(limit) {
            return false;
        }
    }
    if let Some(limit) = &scope.object {
        if object != Some(limit.as_str()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            jti: "t1".into(),
            sub: "admin".into(),
            scope: Scope {
                level: ScopeLevel::Write,
                kind: None,
                object: None,
            },
            iat: 100,
            exp,
        }
    }

    #[tokio::test]
    async fn hash_pool_runs_work_and_sheds_beyond_its_queue() {
        let pool = HashPool::with_threads(1);
        assert_eq!(pool.run(|| 2 + 2).await, Ok(4));
        // Block the only thread, fill the queue, and the next one is shed.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let blocked = pool.clone().run_owned(move || wait.recv().is_ok());
        let blocked = tokio::spawn(blocked);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let queued: Vec<_> = (0..HASH_QUEUE_PER_THREAD)
            .map(|i| tokio::spawn(pool.clone().run_owned(move || i)))
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(pool.run(|| 0).await, Err(HashPoolBusy));
        release.send(()).unwrap();
        assert_eq!(blocked.await.unwrap(), Ok(true));
        for (i, job) in queued.into_iter().enumerate() {
            assert_eq!(job.await.unwrap(), Ok(i));
        }
    }

    #[test]
    fn password_round_trip() {
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("s3cret", "garbage"));
        // Hashes made by the argon2 crate's own hasher still verify, and
        // ours verify with it: the PHC strings are the same format.
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"other", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password("other", &theirs));
        assert!(!verify_password("s3cret", &theirs));
        let ours = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default().verify_password(b"s3cret", &ours).is_ok());
        // A stored hash asking for a gigabyte is refused, not computed.
        let greedy = phc.replace("m=19456", "m=1048576");
        assert!(!verify_password("s3cret", &greedy));
    }

    #[test]
    fn token_signature_and_expiry() {
        let token = sign(&claims(200), b"key").unwrap();
        assert_eq!(verify(&token, b"key", 150).unwrap(), claims(200));
        assert!(matches!(
            verify(&token, b"key", 200),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            verify(&token, b"other", 150),
            Err(AuthError::BadToken)
        ));
        assert!(matches!(
            verify("a.b.c", b"key", 150),
            Err(AuthError::BadToken)
        ));
        assert!(matches!(verify("", b"key", 150), Err(AuthError::BadToken)));
    }

    #[test]
    fn scope_levels_and_limits() {
        let write = claims(1).scope;
        assert!(allows(
            &write,
            ScopeLevel::Read,
            Some(ObjectKind::Machines),
            None
        ));
        assert!(!allows(&write, ScopeLevel::Admin, None, None));
        let limited = Scope {
            level: ScopeLevel::Write,
            kind: Some(ObjectKind::Machines),
            object: Some("m1".into()),
        };
        assert!(allows(
            &limited,
            ScopeLevel::Write,
            Some(ObjectKind::Machines),
            Some("m1")
        ));
        assert!(!allows(
            &limited,
            ScopeLevel::Write,
            Some(ObjectKind::Machines),
            Some("m2")
        ));
        assert!(!allows(
            &limited,
            ScopeLevel::Read,
            Some(ObjectKind::Profiles),
            None
        ));
    }
}
