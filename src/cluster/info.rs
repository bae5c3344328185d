//! `cluster.json` in a founding node's data dir: what its first start
//! printed (the CA fingerprint to pin, the API URL, the node id), for
//! scripts that set up a cluster and should not scrape the log.

use std::io::Write as _;
use std::net::Ipv6Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const CLUSTER_INFO_FILE: &str = "cluster.json";
/// Readable by everyone: nothing in it is secret.
const MODE: u32 = 0o644;

/// The contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster CA's fingerprint, `sha256:<hex>`, for `--ca-hash`.
    pub ca_fingerprint: String,
    /// `https://<advertised host>:<API port>`.
    pub api_url: String,
    pub node_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterInfoError {
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding {CLUSTER_INFO_FILE}: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ClusterInfo {
    pub fn new(ca_fingerprint: &str, host: &str, api_port: u16, node_id: u64) -> ClusterInfo {
        let host = match host.parse::<Ipv6Addr>() {
            Ok(ip) => format!("[{ip}]"),
            Err(_) => host.to_string(),
        };
        ClusterInfo {
            ca_fingerprint: ca_fingerprint.to_string(),
            api_url: format!("https://{host}:{api_port}"),
            node_id,
        }
    }

    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(CLUSTER_INFO_FILE).exists()
    }

    /// Writes `<data_dir>/cluster.json` atomically: a reader sees the old
    /// file, no file, or the whole new one, even across a crash.
    pub fn write(&self, data_dir: &Path) -> Result<(), ClusterInfoError> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        let path = data_dir.join(CLUSTER_INFO_FILE);
        let tmp = data_dir.join(format!("{CLUSTER_INFO_FILE}.tmp"));
        let failed = |source| ClusterInfoError::Write {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(MODE)
            .open(&tmp)
            .map_err(failed)?;
        // The umask may have taken bits away from the mode at creation.
        file.set_permissions(std::fs::Permissions::from_mode(MODE))
            .map_err(failed)?;
        file.write_all(&bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(failed)?;
        std::fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_readable_by_all() {
        let dir = tempfile::tempdir().unwrap();
        let info = ClusterInfo::new("sha256:ab", "node1.example", 8443, 1);
        info.write(dir.path()).unwrap();
        let path = dir.path().join(CLUSTER_INFO_FILE);
        let read: ClusterInfo = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read, info);
        assert_eq!(read.api_url, "https://node1.example:8443");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(!dir.path().join("cluster.json.tmp").exists());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let info = ClusterInfo::new("sha256:ab", "fd00::1", 8443, 2);
        assert_eq!(info.api_url, "https://[fd00::1]:8443");
    }
}
