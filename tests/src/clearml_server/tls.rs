//! HTTPS for the test server: a private CA made in the test (with the `openssl` CLI, as an
//! on-premise operator would), a server certificate it signs, and a listener that hands axum
//! TLS streams. Clients trust the server through [`TestCa::ca_pem`], e.g. `SSL_VERIFY=<path>`
//! for the daemon or `CLEARML_API_HOST_VERIFY_CERT=<path>` for the SDK.

use anyhow::{Context, Result, bail};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A CA and one server certificate it signed, in a temporary directory removed on drop.
pub struct TestCa {
    dir: tempfile::TempDir,
    /// The server's subjectAltName entries.
    pub names: Vec<String>,
}

impl TestCa {
    /// Makes a CA (EC P-256, valid two days) and a server certificate for `names` (IP literals
    /// or DNS names). A second `TestCa` is an unrelated CA: its bundle does not trust this one's
    /// server.
    pub fn generate(names: &[String]) -> Result<TestCa> {
        if names.is_empty() {
            bail!("a server certificate needs at least one name");
        }
        let dir = tempfile::tempdir().context("a directory for the test CA")?;
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        let config = format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = task-router-test\n\
             [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [server]\nbasicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n\
             subjectAltName = {}\nauthorityKeyIdentifier = keyid\n",
            san.join(", ")
        );
        std::fs::write(dir.path().join("openssl.cnf"), config).context("write openssl.cnf")?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -config openssl.cnf";
        let serial = rand::random::<u32>();
        for args in [
            format!(
                "req -x509 {ec} -extensions ca -subj /CN=task-router-test-CA -days 2 -keyout ca.key -out ca.pem"
            ),
            format!(
                "req -new {ec} -subj /CN=clearml-test-server -keyout server.key -out server.csr"
            ),
            format!(
                "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 2 -extfile openssl.cnf -extensions server -out server.pem"
            ),
            "x509 -in server.pem -outform DER -out server.der".to_string(),
            "pkcs8 -topk8 -nocrypt -in server.key -outform DER -out server.key.der".to_string(),
        ] {
            openssl(dir.path(), &args)?;
        }
        Ok(TestCa {
            dir,
            names: names.to_vec(),
        })
    }

    /// The CA certificate (PEM): the bundle a client trusts the server with.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate (PEM), e.g. for a test that pins it.
    pub fn server_pem(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The rustls configuration serving the certificate (TLS 1.2 and 1.3, no client auth).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let cert = std::fs::read(self.dir.path().join("server.der")).context("server.der")?;
        let key = std::fs::read(self.dir.path().join("server.key.der")).context("server key")?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![cert.into()], key)
            .context("the server certificate and key")?;
        Ok(Arc::new(config))
    }
}

/// Runs `openssl` in `dir` with `args` (split on whitespace), failing with its stderr.
fn openssl(dir: &Path, args: &str) -> Result<()> {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .context("cannot run openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Accepts TCP connections and hands axum those whose TLS handshake succeeded. Handshakes run
/// in tasks of their own, so a client that connects and stalls (or refuses the certificate)
/// holds up nobody.
pub struct TlsListener {
    streams: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    /// Starts accepting on `tcp` (inside the current tokio runtime).
    pub fn new(tcp: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> Result<Self> {
        let local = tcp.local_addr().context("listener address")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, streams) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp_stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // As axum's own listener does: out of descriptors and the like pass.
                        eprintln!("clearml test server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let handshaken = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp_stream)).await
                    {
                        let _ = handshaken.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener { streams, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.streams.recv().await {
            Some(conn) => conn,
            // The accepting task only ends when this receiver is gone: never while it waits.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
