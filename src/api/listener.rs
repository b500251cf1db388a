//! The REST API's listener: plain HTTP or HTTPS (rustls, the certificate reloaded on
//! SIGHUP), HTTP/1.1 only, with a cap on open connections and deadlines a slow or silent
//! client cannot stretch: the TLS handshake, and each request's headers from the moment
//! the connection is ready for one (an idle keep-alive connection included), must arrive
//! within [`HEADER_TIMEOUT`]; a request body within [`BODY_TIMEOUT`] (the router's layer).
//! HTTP/2 is left out: hyper's version sniffing and h2's idle connections have no such
//! deadline. At the cap the listener stops accepting (the kernel's backlog holds
//! newcomers) rather than reading from more sockets than it can serve.
//!
//! This module must never look inside a request: routing, auth and limits on bodies
//! belong to the router.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::rpc::transport::{provider, read_certs, read_key, TlsFileError};

/// How long a client may take to send a request's headers (and, with TLS, to finish the
/// handshake) before its connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTPS settings: the certificate chain and key, reloaded from the same files on SIGHUP.
pub struct HttpsCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for HttpsCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsCert").field("cert_file", &self.cert_file).finish_non_exhaustive()
    }
}

impl HttpsCert {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<HttpsCert>, TlsFileError> {
        let current = RwLock::new(certified_key(cert_file, key_file)?);
        Ok(Arc::new(HttpsCert { cert_file: cert_file.into(), key_file: key_file.into(), current }))
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let fresh = certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write().expect("certificate lock poisoned") = fresh;
        Ok(())
    }

    fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for HttpsCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock poisoned").clone())
    }
}

fn certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsFileError> {
    let chain = read_certs(cert_file, "node.http_tls_cert_file")?;
    let key = read_key(key_file, "node.http_tls_key_file")?;
    let signing = provider().key_provider.load_private_key(key).map_err(|e| TlsFileError {
        what: "node.http_tls_key_file",
        path: key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsFileError {
        what: "node.http_tls_key_file",
        path: key_file.display().to_string(),
        reason: format!("does not belong to the certificate in node.http_tls_cert_file: {e}"),
    })?;
    Ok(Arc::new(certified))
}

/// Serves `app` until `shutdown` turns true, then lets open requests finish (the caller
/// bounds how long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    https: Option<Arc<HttpsCert>>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = https.as_ref().map(HttpsCert::acceptor);
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stopped(&mut shutdown) => break,
        };
        let (tcp, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most often: back off instead of spinning.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        tcp.set_nodelay(true).ok();
        let service = app.clone().map_request(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let service = TowerToHyperService::new(service);
        let (builder, acceptor, watcher) = (builder.clone(), acceptor.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _slot = slot;
            let result = match acceptor {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned();
                        watcher.watch(conn).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Reloads the HTTPS certificate on every SIGHUP, for as long as the process runs.
pub fn reload_on_sighup(cert: Arc<HttpsCert>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the HTTPS certificate will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => tracing::info!(file = %cert.cert_file.display(), "HTTPS certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "HTTPS certificate not reloaded; the previous one stays"),
            }
        }
    })
}
