//! Listening: plain HTTP on loopback, HTTPS (rustls) anywhere, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};
use tower::ServiceExt as _;

use crate::api::{AppState, router};
use crate::kt::KeyDirectory;
use crate::limits::{CappedListener, ConnectionLimits, PeerAddr};
use crate::session::Sessions;
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

/// The API without sockets: the router [`serve`] runs, answering requests handed to it in
/// the same process, as if from a loopback peer. For tests that drive real clients through an
/// in-memory transport; the key directory publishes and the store is real.
#[derive(Debug)]
pub struct InProcess {
    app: axum::Router,
    _stop: watch::Sender<bool>,
}

impl InProcess {
    /// Opens the store and key directory in `config.data_dir`.
    pub async fn start(config: Config) -> Result<InProcess, Error> {
        let store = crate::open_store(&config)?;
        let sessions = Sessions::load_or_create(&config.data_dir.join("session.key"))?;
        let (stop, stopping) = watch::channel(false);
        let operator_key = crate::load_operator_key(&config)?.map(|k| k.public());
        let kt = KeyDirectory::open(&config.data_dir, config.clock.clone()).await?;
        let state = Arc::new(AppState::new(store, config, sessions, stopping, operator_key, kt)?);
        Ok(InProcess { app: router(state), _stop: stop })
    }

    /// Answers one request.
    pub async fn call(
        &self,
        mut request: axum::http::Request<axum::body::Body>,
    ) -> axum::http::Response<axum::body::Body> {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        request.extensions_mut().insert(axum::extract::ConnectInfo(PeerAddr(peer)));
        match self.app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Binds the configured address (after [`Config::check`]).
pub async fn bind(config: &Config) -> Result<TcpListener, Error> {
    config.check()?;
    TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", config.listen)))
}

/// Binds the admin API's address, if one is configured, and records it in `DATA/admin.url`
/// (with the token in `DATA/admin.token`) for the subcommands.
pub async fn bind_admin(config: &Config) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = config.admin_listen else { return Ok(None) };
    crate::admin::admin_token(config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {addr} for the admin API: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::Io(e.to_string()))?;
    let url_file = config.data_dir.join("admin.url");
    crate::private_file(&url_file)?;
    std::fs::write(&url_file, format!("http://{local}"))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", url_file.display())))?;
    tracing::info!(%local, "admin API listening");
    Ok(Some(listener))
}

/// Serves the API on `listener` (and the admin API, if configured) until `shutdown`
/// completes, then drains in-flight requests.
pub async fn serve(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let admin = bind_admin(&config).await?;
    serve_with_admin(config, store, listener, admin, shutdown).await
}

/// [`serve`], with the admin listener from [`bind_admin`].
pub async fn serve_with_admin(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    crate::check_no_interrupted_restore(&config)?;
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let sessions = Sessions::load_or_create(&config.data_dir.join("session.key"))?;
    // `stopping` tells long-lived tasks (WebSocket deliveries) to wind down.
    let (stop_tx, stopping) = watch::channel(false);
    let listener = CappedListener::new(
        listener,
        ConnectionLimits {
            max: config.max_connections,
            per_ip: config.max_connections_per_ip,
            idle: Duration::from_secs(config.idle_timeout_secs.max(1)),
            first_byte: Duration::from_secs(config.header_timeout_secs.max(1)),
            trusted: config.trusted_proxies.clone().into(),
        },
    );
    let operator_key = crate::load_operator_key(&config)?.map(|k| k.public());
    let kt = crate::kt::KeyDirectory::open(&config.data_dir, config.clock.clone()).await?;
    if let Ok(root) = kt.latest_root().await {
        crate::metrics::METRICS.kt_epoch.store(root.epoch, std::sync::atomic::Ordering::Relaxed);
    }
    reconcile_directory(&store, &kt).await;
    let sweeper = tokio::spawn(sweep_periodically(store.clone(), config.clone(), kt.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client gets this long to send a request's headers; the idle timeout covers the rest.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_timeout_secs.max(1)));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(64);
    let state = Arc::new(AppState::new(store, config, sessions, stopping, operator_key, kt)?);
    let admin = match admin {
        Some(listener) => Some(serve_admin(&state, listener, stop_tx.subscribe())?),
        None => None,
    };
    let rebar = tokio::spawn({
        let state = state.clone();
        let every = Duration::from_secs(state.config.sweep_interval_secs.clamp(1, 60));
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                state.refresh_barred().await;
            }
        }
    });
    let app = router(state);
    let graceful = accept_loop(listener, app, tls, builder, shutdown, true).await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish in time");
    }
    sweeper.abort();
    rebar.abort();
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(DRAIN, admin).await;
    }
    Ok(())
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown` completes;
/// returns the handle that drains them. `public`: counted in the metrics.
async fn accept_loop(
    listener: CappedListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    shutdown: impl Future<Output = ()>,
    public: bool,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept_capped() => accepted,
            () = &mut shutdown => break,
        };
        let abort = stream.abort_handle();
        let open = public.then(|| {
            let metrics = &crate::metrics::METRICS;
            metrics.connections_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::OpenGauge::open(&metrics.connections_open)
        });
        let service = {
            let app = app.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(PeerAddr(peer)));
                req.extensions_mut().insert(abort.clone());
                app.clone().oneshot(req.map(axum::body::Body::new))
            })
        };
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let acceptor = tls.clone();
        // No log line names the peer: client addresses are kept out of logs at every level.
        tokio::spawn(async move {
            let _open = open;
            let result = match acceptor {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(DRAIN, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful
}

/// Serves the admin API on `listener` until `stop` turns true: few connections, short
/// timeouts, so that a local process holding connections open cannot take the server's file
/// descriptors.
fn serve_admin(
    state: &Arc<AppState>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let token = crate::admin::admin_token(&state.config)?;
    let metrics_token = crate::admin::metrics_token(&state.config)?;
    let app = crate::api::admin::router(crate::api::admin::AdminState {
        app: state.clone(),
        token: Arc::new(zeroize::Zeroizing::new(token)),
        metrics_token: Arc::new(zeroize::Zeroizing::new(metrics_token)),
    });
    let listener = CappedListener::new(
        listener,
        ConnectionLimits {
            max: ADMIN_CONNECTIONS,
            per_ip: ADMIN_CONNECTIONS,
            idle: ADMIN_TIMEOUT,
            first_byte: ADMIN_TIMEOUT,
            trusted: Vec::new().into(),
        },
    );
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(ADMIN_TIMEOUT);
    Ok(tokio::spawn(async move {
        let stopped = async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        };
        let graceful = accept_loop(listener, app, None, builder, stopped, false).await;
        let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    }))
}

/// Most connections the admin listener keeps open.
const ADMIN_CONNECTIONS: usize = 16;
/// How long an admin connection may stay silent.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes every device list the key directory does not hold yet (one stored just before
/// a crash, or whose publication failed).
async fn reconcile_directory(store: &Arc<dyn Store>, kt: &KeyDirectory) {
    let store = store.clone();
    let lists = match tokio::task::spawn_blocking(move || {
        let mut lists =
            store.all_device_lists()?.into_iter().map(|(a, l)| (a, Some(l))).collect::<Vec<_>>();
        lists.extend(
            store
                .accounts()?
                .into_iter()
                .filter(|a| a.deleted_at.is_some())
                .map(|a| (a.address, None)),
        );
        Ok::<_, crate::store::StoreError>(lists)
    })
    .await
    {
        Ok(Ok(lists)) => lists,
        Ok(Err(e)) => return tracing::warn!(error = %e, "reading device lists failed"),
        Err(e) => return tracing::warn!(error = %e, "reading device lists failed"),
    };
    let mut wanted = std::collections::HashMap::new();
    for (address, list) in lists {
        let Ok(address) = address.parse::<sotto_core::Address>() else { continue };
        // A deleted account's address is tombstoned.
        let value = match list {
            Some(list) => {
                let signed =
                    sotto_core::account::SignedList { body: list.body, signature: list.signature };
                sotto_core::kt::commitment(&list.identity_key, &signed)
            }
            None => sotto_core::kt::tombstone(),
        };
        wanted.insert(sotto_core::kt::label(&address), value);
    }
    match kt.reconcile(wanted).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(published = n, "the key directory caught up with stored lists"),
        Err(e) => tracing::warn!(error = %e, "reconciling the key directory failed"),
    }
}

/// How long submission ids are remembered for idempotent retries.
const KEEP_SUBMISSIONS: u64 = 7 * 86_400;

/// Deletes old idempotency records and expired queued messages, at start and then every
/// `sweep_interval_secs`.
async fn sweep_periodically(store: Arc<dyn Store>, config: Config, kt: KeyDirectory) {
    let every = Duration::from_secs(config.sweep_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let store1 = store.clone();
        let ttl = config.message_ttl_secs;
        let swept = tokio::task::spawn_blocking(move || {
            let now = sotto_core::unix_now();
            store1.sweep(now.saturating_sub(KEEP_SUBMISSIONS), now.saturating_sub(ttl), now)
        })
        .await;
        let store2 = store.clone();
        let links = tokio::task::spawn_blocking(move || {
            let now = sotto_core::unix_now();
            store2.expire_links(now.saturating_sub(crate::api::LINK_TTL_SECS))
        })
        .await;
        if let Ok(Err(e)) = links {
            tracing::warn!(error = %e, "expiring device links failed");
        }
        reconcile_directory(&store, &kt).await;
        let (store3, data) = (store.clone(), config.data_dir.clone());
        let blobs = tokio::task::spawn_blocking(move || {
            crate::api::sweep_blobs(store3.as_ref(), &data, sotto_core::unix_now())
        })
        .await;
        match blobs {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(deleted = n, "expired files deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deleting expired files failed"),
            Err(e) => tracing::warn!(error = %e, "deleting expired files failed"),
        }
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(expired)) => tracing::info!(expired, "undelivered messages expired"),
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping expired rows failed"),
            Err(e) => tracing::warn!(error = %e, "sweeper task failed"),
        }
    }
}
