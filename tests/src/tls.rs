//! TLS material for the tests' servers: a self-signed certificate for `localhost` made with the
//! `openssl` command in a temporary directory.

use std::io;
use std::process::Command;

use crate::tempdir::TempDir;

/// A self-signed certificate and its key (PEM), removed with their directory on drop.
pub struct Certificate {
    dir: TempDir,
}

impl Certificate {
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::new`], with an error instead of a panic (for `cargo xtask bench`).
    pub fn try_new() -> io::Result<Self> {
        let dir = TempDir::try_new("tls")?;
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(dir.file("key.pem"))
            .arg("-out")
            .arg(dir.file("cert.pem"))
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn openssl: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(Self { dir })
    }

    pub fn cert(&self) -> String {
        self.dir.file("cert.pem")
    }

    pub fn key(&self) -> String {
        self.dir.file("key.pem")
    }
}

impl Default for Certificate {
    fn default() -> Self {
        Self::new()
    }
}
