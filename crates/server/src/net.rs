//! Listening: plain HTTP on loopback, HTTPS (rustls) anywhere, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tower::ServiceExt as _;

use crate::api::{AppState, Notifier, router};
use crate::store::Store;
use crate::{Config, Error, TlsFiles};

/// How long in-flight requests get to finish after shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(10);

fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, Error> {
    use pki_types::pem::PemObject;
    let certs = pki_types::CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("reading {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", files.cert.display())));
    }
    let key = pki_types::PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| Error::Tls(format!("reading {}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds the configured address (after [`Config::check`]).
pub async fn bind(config: &Config) -> Result<TcpListener, Error> {
    config.check()?;
    TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", config.listen)))
}

/// Serves the API on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    // `stopping` tells long-lived tasks (WebSocket deliveries) to wind down.
    let (stop_tx, stopping) = watch::channel(false);
    let mut stopped = stopping.clone();
    let sweeper = tokio::spawn(sweep_periodically(store.clone()));
    let state = Arc::new(AppState { store, config, notifier: Notifier::default(), stopping });
    let app = router(state);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    };
    let Some(acceptor) = tls else {
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
        let result = tokio::select! {
            r = server => r.map_err(|e| Error::Io(e.to_string())),
            () = async {
                let _ = stopped.wait_for(|s| *s).await;
                tokio::time::sleep(DRAIN).await;
            } => {
                tracing::warn!("some requests did not finish in time");
                Ok(())
            }
        };
        sweeper.abort();
        return result;
    };

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => { backoff = Duration::from_millis(5); a }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then try again.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(DRAIN, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish in time");
    }
    sweeper.abort();
    Ok(())
}

/// How often expired rows are swept, and how long submission ids are remembered.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
const KEEP_SUBMISSIONS: u64 = 7 * 86_400;

/// Deletes expired challenges, tokens and old idempotency records, now and every hour.
async fn sweep_periodically(store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let store = store.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = sotto_core::unix_now();
            store.sweep(now, now.saturating_sub(KEEP_SUBMISSIONS))
        })
        .await;
        match swept {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping expired rows failed"),
            Err(e) => tracing::warn!(error = %e, "sweeper task failed"),
        }
    }
}
