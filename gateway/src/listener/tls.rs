//! TLS for the listeners: rustls on aws-lc-rs only, certificates that reload without a restart, and
//! a generated local CA + server certificate when none is configured.
//!
//! The current certificate lives behind an `ArcSwap` read by rustls' resolver on each handshake;
//! a watcher replaces it when the files change. Established connections keep the certificate they
//! were made with; a file pair that fails to load is logged and the old certificate stays.

use crate::config::TlsFiles;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {detail}")]
    Cert { path: PathBuf, detail: String },
    #[error("cannot read private key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("certificate {cert} and key {key} do not match: {detail}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("cannot generate a self-signed certificate in {dir}: {detail}")]
    Generate { dir: PathBuf, detail: String },
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a PEM chain and key and checks that they belong together.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: files.cert.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: files.cert.clone(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: files.key.clone(),
            detail: e.to_string(),
        })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail: e.to_string(),
    })?;
    Ok(ck)
}

/// Hands rustls whatever certificate is current.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn new(ck: CertifiedKey) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(ck),
        })
    }

    pub fn replace(&self, ck: CertifiedKey) {
        self.current.store(Arc::new(ck));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, session tickets for cheap resumption.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Ok(t) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        cfg.ticketer = t;
    }
    Arc::new(cfg)
}

/// Watches the cert and key files and swaps the certificate when they change.
pub fn spawn_reloader(store: Arc<CertStore>, files: TlsFiles, every: Duration) {
    tokio::spawn(async move {
        let mut last = stamp(&files);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&files);
            if now == last {
                continue;
            }
            last = now;
            // Editors and cert managers write the two files one after the other; give the pair a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            match load_certified_key(&files) {
                Ok(ck) => {
                    store.replace(ck);
                    last = stamp(&files);
                    metrics::counter!(crate::telemetry::CERT_RELOADS, "result" => "ok")
                        .increment(1);
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    metrics::counter!(crate::telemetry::CERT_RELOADS, "result" => "rejected")
                        .increment(1);
                    tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous certificate");
                }
            }
        }
    });
}

type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

fn stamp(files: &TlsFiles) -> Stamp {
    let c = std::fs::metadata(&files.cert).ok()?;
    let k = std::fs::metadata(&files.key).ok()?;
    Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
}

/// The files of the generated local CA and server certificate.
pub struct Generated {
    pub ca: PathBuf,
    pub files: TlsFiles,
    pub created: bool,
}

/// Reuses or creates `data_dir/tls/{ca.pem, gw.pem, gw-key.pem}`: a local CA and a server certificate
/// it signed for localhost, 127.0.0.1 and ::1 (plus `extra_names`). Clients trust `ca.pem`.
pub fn ensure_self_signed(data_dir: &Path, extra_names: &[String]) -> Result<Generated, TlsError> {
    let dir = data_dir.join("tls");
    let ca_path = dir.join("ca.pem");
    let files = TlsFiles {
        cert: dir.join("gw.pem"),
        key: dir.join("gw-key.pem"),
    };
    if ca_path.exists() && load_certified_key(&files).is_ok() {
        return Ok(Generated {
            ca: ca_path,
            files,
            created: false,
        });
    }
    let gen_err = |detail: String| TlsError::Generate {
        dir: dir.clone(),
        detail,
    };
    std::fs::create_dir_all(&dir).map_err(|e| gen_err(e.to_string()))?;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().map_err(|e| gen_err(e.to_string()))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err(e.to_string()))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fngate local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| gen_err(e.to_string()))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in extra_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let leaf_key = KeyPair::generate().map_err(|e| gen_err(e.to_string()))?;
    let mut leaf_params = CertificateParams::new(names).map_err(|e| gen_err(e.to_string()))?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "fngate");
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| gen_err(e.to_string()))?;

    write_file(&ca_path, ca_cert.pem().as_bytes(), false).map_err(|e| gen_err(e.to_string()))?;
    write_file(&files.key, leaf_key.serialize_pem().as_bytes(), true)
        .map_err(|e| gen_err(e.to_string()))?;
    write_file(&files.cert, leaf.pem().as_bytes(), false).map_err(|e| gen_err(e.to_string()))?;
    Ok(Generated {
        ca: ca_path,
        files,
        created: true,
    })
}

/// Writes through a temporary file and a rename so a reader never sees half a file.
pub fn write_file(path: &Path, data: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
