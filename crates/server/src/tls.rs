//! HTTPS (`serve --tls-cert PEM --tls-key PEM`): rustls (its default provider, aws-lc-rs), the certificate
//! chain and key read from PEM files at start and again on SIGHUP (a renewed certificate is
//! served to new connections; files that no longer read keep the one in force).

use std::path::{Path, PathBuf};

use axum_server::tls_rustls::RustlsConfig;

/// Makes `aws-lc-rs` (rustls's default) the process's rustls provider, unless one was chosen.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The server's certificate and key files, and the TLS configuration read from them.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RustlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Reads the PEM certificate chain at `cert` and the PEM private key at `key`.
///
/// # Errors
/// A file that cannot be read, holds no certificate or no key, or a key that does not match the
/// certificate; the message names the file.
pub async fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
    install_provider();
    let config = read(cert, key).await?;
    Ok(Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        config,
    })
}

async fn read(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    use anyhow::Context as _;
    for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
        let text = tokio::fs::read_to_string(path)
            .await
            .with_context(|| format!("cannot read {flag} {}", path.display()))?;
        if !text.contains("-----BEGIN ") {
            anyhow::bail!("{flag} {} is not a PEM file", path.display());
        }
    }
    RustlsConfig::from_pem_file(cert, key).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot use --tls-cert {} with --tls-key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

impl Tls {
    /// What the server serves with.
    pub fn config(&self) -> RustlsConfig {
        self.config.clone()
    }

    /// Reads the files again (SIGHUP): new connections get the new certificate. Files that no
    /// longer read or match keep the one in force.
    ///
    /// # Errors
    /// As [`load`].
    pub async fn reload(&self) -> anyhow::Result<()> {
        let fresh = read(&self.cert, &self.key).await?;
        self.config.reload_from_config(fresh.get_inner());
        Ok(())
    }
}
