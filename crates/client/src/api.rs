//! HTTP calls to the server (blocking, through ureq), with device authentication.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sotto_core::auth;
use sotto_core::mls::DeviceKey;
use sotto_proto as proto;
use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use zeroize::Zeroizing;

use crate::Error;

/// A connection to one server.
pub(crate) struct Api {
    base: String,
    agent: Agent,
    ca_certs: Vec<Certificate<'static>>,
    /// The CA file the certificates came from, remembered in the account.
    ca_path: Option<String>,
    token: Option<(Zeroizing<String>, Instant)>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Reads the PEM certificates of an extra trusted CA.
pub(crate) fn read_ca(path: &str) -> Result<Vec<Certificate<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {path}: {e}")))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Error::Io(format!("no PEM certificate in {path}")));
    }
    Ok(certs)
}

/// How long a submission whose fate is unknown is retried.
const SUBMIT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Whether a failed request certainly never reached the server (so its outcome is known).
fn surely_not_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::NotFound
        ),
        ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::BadUri(_)
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_) => true,
        _ => false,
    }
}

fn authorize<B>(req: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    }
}

impl Api {
    pub(crate) fn new(server: &str, ca_cert: Option<&str>) -> Result<Self, Error> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "server URL {server:?} must start with http:// or https://"
            )));
        }
        let ca_certs = ca_cert.map(read_ca).transpose()?.unwrap_or_default();
        let mut tls = TlsConfig::builder();
        if !ca_certs.is_empty() {
            // An explicitly given CA replaces the public roots: the server is pinned to it.
            tls = tls.root_certs(RootCerts::new_with_certs(&ca_certs));
        }
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .user_agent(concat!("sotto/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Api { base, agent, ca_certs, ca_path: ca_cert.map(str::to_owned), token: None })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn ca_path(&self) -> Option<&str> {
        self.ca_path.as_deref()
    }

    pub(crate) fn ca_certs(&self) -> &[Certificate<'static>] {
        &self.ca_certs
    }

    fn unreachable(&self, e: ureq::Error) -> Error {
        Error::Unreachable { url: self.base.clone(), reason: e.to_string() }
    }

    /// Submits a message, idempotently: it gets a random submission id, and if the request
    /// may have reached the server but no answer came back (connection reset, timeout), the
    /// identical request is sent again with backoff for up to [`SUBMIT_RETRY_WINDOW`]. The
    /// server answers a repeat with its first answer, so nothing is queued twice and the
    /// caller learns the true outcome. A request that surely never arrived fails at once.
    pub(crate) fn submit(
        &self,
        mut request: proto::SubmitRequest,
        token: &str,
    ) -> Result<proto::SubmitResponse, Error> {
        if request.submission_id.is_none() {
            request.submission_id = Some(proto::Bytes(sotto_core::random_bytes(16)?));
        }
        let url = format!("{}/v1/messages", self.base);
        let deadline = Instant::now() + SUBMIT_RETRY_WINDOW;
        let mut delay = Duration::from_millis(100);
        let mut uncertain = false;
        loop {
            match authorize(self.agent.post(&url), Some(token)).send_json(&request) {
                Ok(resp) => return self.finish(Ok(resp)),
                Err(e) => {
                    uncertain |= !surely_not_sent(&e);
                    if !uncertain || Instant::now() >= deadline {
                        return Err(self.unreachable(e));
                    }
                    let jitter = Duration::from_millis(u64::from(
                        sotto_core::random_bytes(1).map(|b| b[0]).unwrap_or(0) / 4,
                    ));
                    std::thread::sleep(delay + jitter);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn finish<R: DeserializeOwned>(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<R, Error> {
        let mut resp = result.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return resp
                .body_mut()
                .read_json::<R>()
                .map_err(|e| Error::Protocol(format!("bad response body: {e}")));
        }
        match resp.body_mut().read_json::<proto::ErrorBody>() {
            Ok(body) => Err(Error::Server {
                status,
                code: crate::error::code_name(body.error.code),
                message: body.error.message,
                epoch: body.error.epoch,
            }),
            Err(_) => Err(Error::Protocol(format!(
                "HTTP {status} without a Sotto error body; is {} a Sotto server?",
                self.base
            ))),
        }
    }

    pub(crate) fn get<R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<R, Error> {
        self.finish(authorize(self.agent.get(format!("{}{path}", self.base)), token).call())
    }

    pub(crate) fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        token: Option<&str>,
    ) -> Result<R, Error> {
        self.finish(
            authorize(self.agent.post(format!("{}{path}", self.base)), token).send_json(body),
        )
    }

    /// `PUT` raw bytes (an upload piece); the answer as JSON. No overall time limit: a piece
    /// takes what the link allows.
    pub(crate) fn put_bytes<R: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
        token: &str,
    ) -> Result<R, Error> {
        let req = authorize(self.agent.put(format!("{}{path}", self.base)), Some(token))
            .header("Content-Type", "application/octet-stream")
            .config()
            .timeout_global(None)
            .timeout_send_body(Some(Duration::from_secs(120)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .build();
        self.finish(req.send(body))
    }

    /// `GET` a byte stream from `offset` (a `Range` request); the reader of its body.
    pub(crate) fn get_stream(
        &self,
        path: &str,
        offset: u64,
        token: &str,
    ) -> Result<impl std::io::Read + use<>, Error> {
        let mut req = authorize(self.agent.get(format!("{}{path}", self.base)), Some(token));
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        let req = req
            .config()
            .timeout_global(None)
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .build();
        let resp = req.call().map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(self
                .finish::<serde::de::IgnoredAny>(Ok(resp))
                .err()
                .unwrap_or(Error::Protocol(format!("HTTP {status} for a file download"))));
        }
        Ok(resp.into_body().into_reader())
    }

    /// A valid bearer token, logging in with the device key when needed.
    /// Drops the cached token, so the next request logs in again.
    pub(crate) fn forget_token(&mut self) {
        self.token = None;
    }

    pub(crate) fn token(
        &mut self,
        domain: &str,
        device_id: u64,
        key: &DeviceKey,
    ) -> Result<String, Error> {
        if let Some((t, until)) = &self.token
            && Instant::now() < *until
        {
            return Ok(t.to_string());
        }
        let ch: proto::ChallengeResponse =
            self.post("/v1/auth/challenge", &proto::ChallengeRequest { device_id }, None)?;
        let signature = key.sign(&auth::challenge_payload(domain, device_id, &ch.nonce.0))?;
        let tok: proto::TokenResponse = self.post(
            "/v1/auth/token",
            &proto::TokenRequest { device_id, nonce: ch.nonce, signature: proto::Bytes(signature) },
            None,
        )?;
        // Renew a little before the server's expiry.
        let until = Instant::now() + Duration::from_secs(tok.expires_in.saturating_sub(30));
        let token = tok.token.clone();
        self.token = Some((Zeroizing::new(tok.token), until));
        Ok(token)
    }
}
