//! The saved login session and the trust decisions around it.
//!
//! `cradle login` writes `<config-dir>/config.json` (file 0600, directory
//! 0700): the endpoint, the pinned cluster CA and its fingerprint, the bearer
//! token and the user. Every other verb reads it; `--endpoint`, `--token` and
//! `--ca-file` (or their `CRADLE_*` variables) override its fields.
//!
//! A server's CA is trusted only when the user vouched for it: its
//! fingerprint equals `--ca-hash`, or it is the certificate in `--ca-file`.
//! [`check_pin`] makes that decision and never says yes by default.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls;

/// The session file inside the config directory.
pub const CONFIG_FILE: &str = "config.json";

/// Largest session file read (a CA certificate and a token are a few KiB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What `cradle login` saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// `https://host:port` of the member logged in to.
    pub endpoint: String,
    pub user: String,
    /// The bearer token.
    pub token: String,
    /// The token's id, for revoking it on logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at_unix: Option<u64>,
    /// `sha256:<hex>` of the CA certificate's DER.
    pub ca_fingerprint: String,
    /// The pinned cluster CA certificate (PEM).
    pub ca_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("no home directory to keep the session in; set --config-dir or CRADLE_CONFIG_DIR")]
    NoConfigDir,
    #[error("reading {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("writing {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a valid Cradle session ({reason}); run `cradle login` again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("not logged in (no {missing} known): run `cradle login <endpoint> --user <name>`, or set CRADLE_ENDPOINT, CRADLE_CA_FILE and CRADLE_TOKEN")]
    NotLoggedIn { missing: &'static str },
}

/// `~/.config/cradle` (or `$XDG_CONFIG_HOME/cradle`).
pub fn default_config_dir() -> Result<PathBuf, SessionError> {
    dirs::config_dir()
        .map(|dir| dir.join("cradle"))
        .ok_or(SessionError::NoConfigDir)
}

/// Why a session file's permissions are unsafe, if they are: it holds a
/// bearer token, so nobody but its owner may read it.
pub fn permission_problem(mode: u32) -> Option<String> {
    if mode & 0o077 != 0 {
        Some(format!(
            "it is readable or writable by others (mode {:o}); run chmod 600 on it",
            mode & 0o777
        ))
    } else {
        None
    }
}

impl Session {
    /// The session in `dir`, or `None` if nobody logged in.
    pub fn load(dir: &Path) -> Result<Option<Session>, SessionError> {
        let path = dir.join(CONFIG_FILE);
        let read_error = |cause| SessionError::Read {
            path: path.clone(),
            cause,
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        let mode = file.metadata().map_err(read_error)?.permissions().mode();
        if let Some(problem) = permission_problem(mode) {
            eprintln!("warning: {}: {problem}", path.display());
        }
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(SessionError::Corrupt {
                path,
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        Self::decode(&bytes)
            .map(Some)
            .map_err(|reason| SessionError::Corrupt { path, reason })
    }

    /// Parses a session and checks that the CA matches its fingerprint.
    fn decode(bytes: &[u8]) -> Result<Session, String> {
        let session: Session = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let actual = tls::fingerprint_pem(&session.ca_pem).map_err(|e| format!("ca_pem: {e}"))?;
        if !actual.eq_ignore_ascii_case(&session.ca_fingerprint) {
            return Err(format!(
                "ca_pem has fingerprint {actual}, not the recorded {}",
                session.ca_fingerprint
            ));
        }
        Ok(session)
    }

    /// Writes the session to `dir` (created 0700 if missing), replacing any
    /// previous one atomically; the file is 0600 whatever the umask or the
    /// old file's mode. Returns the file's path.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, SessionError> {
        let path = dir.join(CONFIG_FILE);
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |cause| SessionError::Write { path, cause }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_error(dir))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| SessionError::Write {
            path: path.clone(),
            cause: std::io::Error::other(e),
        })?;
        let temporary = dir.join(format!(".{CONFIG_FILE}.tmp"));
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(write_error(&temporary)(e))
            }
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(write_error(&temporary))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(write_error(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(write_error(&path))?;
        Ok(path)
    }

    /// Deletes the session in `dir`. Returns whether there was one.
    pub fn remove(dir: &Path) -> Result<bool, SessionError> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(cause) => Err(SessionError::Write { path, cause }),
        }
    }
}

/// Settings given on the command line or in the environment; each wins over
/// the saved session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub endpoint: Option<String>,
    pub token: Option<String>,
    /// The contents of `--ca-file`.
    pub ca_pem: Option<String>,
}

impl Overrides {
    /// Whether the saved session is needed at all.
    pub fn complete(&self) -> bool {
        self.endpoint.is_some() && self.token.is_some() && self.ca_pem.is_some()
    }
}

/// Where to connect, whom to trust and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: String,
    pub ca_pem: String,
    pub token: String,
}

/// Combines overrides with the saved session, field by field.
pub fn resolve(overrides: Overrides, session: Option<Session>) -> Result<Target, SessionError> {
    let (saved_endpoint, saved_token, saved_ca) = match session {
        Some(s) => (Some(s.endpoint), Some(s.token), Some(s.ca_pem)),
        None => (None, None, None),
    };
    let endpoint = overrides
        .endpoint
        .or(saved_endpoint)
        .ok_or(SessionError::NotLoggedIn {
            missing: "endpoint",
        })?;
    let ca_pem = overrides
        .ca_pem
        .or(saved_ca)
        .ok_or(SessionError::NotLoggedIn {
            missing: "cluster CA",
        })?;
    let token = overrides
        .token
        .or(saved_token)
        .ok_or(SessionError::NotLoggedIn { missing: "token" })?;
    Ok(Target {
        endpoint,
        ca_pem,
        token,
    })
}

pub use crate::client::{check_pin, parse_ca_hash, PinError};

#[cfg(test)]
mod tests {
    use super::*;

    fn session(ca_pem: &str) -> Session {
        Session {
            endpoint: "https://node1:8443".into(),
            user: "admin".into(),
            token: "tok".into(),
            token_id: Some("abc".into()),
            token_expires_at_unix: Some(1_800_000_000),
            ca_fingerprint: tls::fingerprint_pem(ca_pem).unwrap(),
            ca_pem: ca_pem.to_string(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn session_round_trips_owner_only() {
        let (ca_pem, _) = tls::generate_ca("test CA").unwrap();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested").join("cradle");
        assert_eq!(Session::load(&dir).unwrap(), None);

        let saved = session(&ca_pem);
        let path = saved.save(&dir).unwrap();
        assert_eq!(path, dir.join(CONFIG_FILE));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(Session::load(&dir).unwrap(), Some(saved.clone()));

        // Replacing a file someone made world-readable leaves it 0600.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut second = saved.clone();
        second.token = "tok2".into();
        second.token_id = None;
        second.save(&dir).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(Session::load(&dir).unwrap(), Some(second));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );

        assert!(Session::remove(&dir).unwrap());
        assert!(!Session::remove(&dir).unwrap());
        assert_eq!(Session::load(&dir).unwrap(), None);
    }

    #[test]
    fn permissions_that_expose_the_token_are_flagged() {
        let check = |mode: u32, flagged: bool| {
            assert_eq!(permission_problem(mode).is_some(), flagged, "{mode:o}")
        };
        check(0o100600, false);
        check(0o400, false);
        check(0o640, true);
        check(0o604, true);
        check(0o620, true);
        let message = permission_problem(0o100644).unwrap();
        assert!(message.contains("mode 644"), "{message}");
    }

    #[test]
    fn damaged_sessions_are_refused() {
        let (ca_pem, _) = tls::generate_ca("test CA").unwrap();
        let (other_pem, _) = tls::generate_ca("other CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let check = |contents: &str, expected: &str| {
            std::fs::write(&path, contents).unwrap();
            let error = Session::load(dir.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("run `cradle login` again"), "{error}");
        };
        check("", "EOF while parsing");
        check("garbage", "expected value");
        check("{\"endpoint\": \"https://x\"}", "missing field");
        let mut swapped = session(&ca_pem);
        swapped.ca_pem = other_pem;
        check(
            &serde_json::to_string(&swapped).unwrap(),
            "not the recorded",
        );
        let mut no_ca = session(&ca_pem);
        no_ca.ca_pem = "not a certificate".into();
        check(&serde_json::to_string(&no_ca).unwrap(), "ca_pem:");
    }

    #[test]
    fn overrides_win_field_by_field() {
        let saved = Session {
            endpoint: "https://saved:8443".into(),
            user: "admin".into(),
            token: "saved-token".into(),
            token_id: None,
            token_expires_at_unix: None,
            ca_fingerprint: "sha256:00".into(),
            ca_pem: "saved-ca".into(),
        };
        let check = |overrides: Overrides,
                     session: Option<Session>,
                     expected: Result<(&str, &str, &str), &str>| {
            let got = resolve(overrides, session);
            match expected {
                Ok((endpoint, ca, token)) => assert_eq!(
                    got.unwrap(),
                    Target {
                        endpoint: endpoint.into(),
                        ca_pem: ca.into(),
                        token: token.into()
                    }
                ),
                Err(wanted) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(wanted), "{e}")
                }
            }
        };
        check(
            Overrides::default(),
            Some(saved.clone()),
            Ok(("https://saved:8443", "saved-ca", "saved-token")),
        );
        check(
            Overrides {
                endpoint: Some("https://other:8443".into()),
                token: Some("env-token".into()),
                ca_pem: None,
            },
            Some(saved.clone()),
            Ok(("https://other:8443", "saved-ca", "env-token")),
        );
        let all = Overrides {
            endpoint: Some("https://e".into()),
            token: Some("t".into()),
            ca_pem: Some("c".into()),
        };
        assert!(all.complete());
        check(all, None, Ok(("https://e", "c", "t")));
        check(Overrides::default(), None, Err("no endpoint known"));
        check(
            Overrides {
                endpoint: Some("https://e".into()),
                ..Overrides::default()
            },
            None,
            Err("no cluster CA known"),
        );
        check(
            Overrides {
                endpoint: Some("https://e".into()),
                ca_pem: Some("c".into()),
                token: None,
            },
            None,
            Err("no token known"),
        );
    }

    #[test]
    fn ca_hash_arguments() {
        let hex = "AB".repeat(32);
        let check = |text: &str, expected: Option<String>| {
            assert_eq!(parse_ca_hash(text).ok(), expected, "{text}")
        };
        check(
            &format!("sha256:{hex}"),
            Some(format!("sha256:{}", hex.to_lowercase())),
        );
        check(&hex, Some(format!("sha256:{}", hex.to_lowercase())));
        check(
            &format!(" sha256:{hex}\n"),
            Some(format!("sha256:{}", hex.to_lowercase())),
        );
        check("sha256:abcd", None);
        check(&format!("sha1:{hex}"), None);
        check(&format!("sha256:{}zz", "ab".repeat(31)), None);
        check("", None);
    }

    #[test]
    fn the_ca_is_trusted_only_when_every_pin_matches() {
        let server = format!("sha256:{}", "ab".repeat(32));
        let other = format!("sha256:{}", "cd".repeat(32));
        let upper = format!("sha256:{}", "AB".repeat(32));
        let check = |hash: Option<&str>, file: Option<&str>, expected: Result<(), &str>| {
            let got = check_pin(&server, hash, file);
            match expected {
                Ok(()) => assert_eq!(got, Ok(()), "{hash:?} {file:?}"),
                Err(wanted) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(wanted), "{hash:?} {file:?}: {e}")
                }
            }
        };
        // No pin: refuse, and show what to pin after checking it.
        check(None, None, Err(&format!("re-run with --ca-hash {server}")));
        assert_eq!(
            check_pin(&server, None, None),
            Err(PinError::Unpinned {
                presented: server.clone()
            })
        );
        check(Some(&server), None, Ok(()));
        check(Some(&upper), None, Ok(()));
        check(
            Some(&other),
            None,
            Err(&format!("not {other} as --ca-hash says")),
        );
        check(Some("sha256:ab"), None, Err("as --ca-hash says"));
        check(None, Some(&server), Ok(()));
        check(None, Some(&other), Err("the CA in --ca-file is"));
        check(Some(&server), Some(&server), Ok(()));
        check(Some(&server), Some(&other), Err("--ca-file"));
        check(Some(&other), Some(&server), Err("--ca-hash"));
    }
}
