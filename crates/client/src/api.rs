//! The server's HTTP API as typed calls, over a [`Transport`], with device authentication.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sotto_core::auth;
use sotto_core::mls::DeviceKey;
use sotto_proto as proto;
use zeroize::Zeroizing;

use crate::Error;
use crate::transport::{Body, Clock, Failed, Method, Request, Response, Transport};

/// A connection to one server.
pub(crate) struct Api {
    transport: Box<dyn Transport>,
    clock: Arc<dyn Clock>,
    /// The CA file the server is pinned to, remembered in the account.
    ca_path: Option<String>,
    /// The bearer token and when to renew it (Unix milliseconds).
    token: Option<(Zeroizing<String>, u64)>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base()).finish_non_exhaustive()
    }
}

/// How long a submission whose fate is unknown is retried.
const SUBMIT_RETRY_WINDOW: Duration = Duration::from_secs(30);

impl Api {
    pub(crate) fn new(
        transport: Box<dyn Transport>,
        clock: Arc<dyn Clock>,
        ca_path: Option<&str>,
    ) -> Self {
        Api { transport, clock, ca_path: ca_path.map(str::to_owned), token: None }
    }

    pub(crate) fn base(&self) -> &str {
        self.transport.base()
    }

    pub(crate) fn ca_path(&self) -> Option<&str> {
        self.ca_path.as_deref()
    }

    pub(crate) fn transport(&self) -> &dyn Transport {
        &*self.transport
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
        self.token = None;
    }

    pub(crate) fn unreachable(&self, e: Failed) -> Error {
        Error::Unreachable { url: self.base().to_string(), reason: e.reason }
    }

    /// Submits a message, idempotently: it gets a random submission id (unless it has one),
    /// and if the request may have reached the server but no answer came back (connection
    /// reset, timeout), the identical request is sent again with backoff for up to
    /// [`SUBMIT_RETRY_WINDOW`]. The server answers a repeat with its first answer, so nothing
    /// is queued twice and the caller learns the true outcome. A request that surely never
    /// arrived fails at once.
    pub(crate) fn submit(
        &self,
        mut request: proto::SubmitRequest,
        token: Option<&str>,
    ) -> Result<proto::SubmitResponse, Error> {
        if request.submission_id.is_none() {
            request.submission_id = Some(proto::Bytes(sotto_core::random_bytes(16)?));
        }
        let body = serde_json::to_vec(&request).map_err(|e| Error::Protocol(e.to_string()))?;
        let call =
            Request { method: Method::Post, path: "/v1/messages", token, body: Body::Json(&body) };
        let deadline = self.clock.now_ms() + SUBMIT_RETRY_WINDOW.as_millis() as u64;
        let mut delay = Duration::from_millis(100);
        let mut uncertain = false;
        loop {
            match self.transport.call(&call) {
                Ok(resp) => return self.finish(resp),
                Err(e) => {
                    uncertain |= !e.not_sent;
                    if !uncertain || self.clock.now_ms() >= deadline {
                        return Err(self.unreachable(e));
                    }
                    let jitter = Duration::from_millis(u64::from(
                        sotto_core::random_bytes(1).map(|b| b[0]).unwrap_or(0) / 4,
                    ));
                    self.clock.sleep(delay + jitter);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The answer as `R`, or the server's refusal as [`Error::Server`].
    pub(crate) fn finish<R: DeserializeOwned>(&self, resp: Response) -> Result<R, Error> {
        if (200..300).contains(&resp.status) {
            return serde_json::from_slice(&resp.body)
                .map_err(|e| Error::Protocol(format!("bad response body: {e}")));
        }
        Err(self.refusal(resp.status, &resp.body))
    }

    /// The error a non-2xx answer stands for.
    pub(crate) fn refusal(&self, status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<proto::ErrorBody>(body) {
            Ok(body) => Error::Server {
                status,
                code: crate::error::code_name(body.error.code),
                message: body.error.message,
                epoch: body.error.epoch,
            },
            Err(_) => Error::Protocol(format!(
                "HTTP {status} without a Sotto error body; is {} a Sotto server?",
                self.base()
            )),
        }
    }

    fn call<R: DeserializeOwned>(&self, request: &Request<'_>) -> Result<R, Error> {
        let resp = self.transport.call(request).map_err(|e| self.unreachable(e))?;
        self.finish(resp)
    }

    pub(crate) fn get<R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<R, Error> {
        self.call(&Request { method: Method::Get, path, token, body: Body::Empty })
    }

    /// A page of this device's queue, asked for in binary ([`proto::live::PAGE_MEDIA_TYPE`]);
    /// a server that answers in JSON (one from before the binary page) is read as well.
    pub(crate) fn queue_page(
        &self,
        after: u64,
        limit: u32,
        token: &str,
    ) -> Result<proto::QueueResponse, Error> {
        let path = format!("/v1/queue?after={after}&limit={limit}");
        let resp = self
            .transport
            .get_accepting(&path, Some(token), proto::live::PAGE_MEDIA_TYPE)
            .map_err(|e| self.unreachable(e))?;
        // A JSON answer starts with `{`; a binary page with its kind byte, which never is.
        // Either way, its positions must increase.
        let bad = |e: proto::live::FrameError| Error::Protocol(format!("bad queue page: {e}"));
        if !(200..300).contains(&resp.status) || resp.body.first() == Some(&b'{') {
            let page: proto::QueueResponse = self.finish(resp)?;
            page.check_order().map_err(bad)?;
            return Ok(page);
        }
        proto::QueueResponse::from_binary(&resp.body).map_err(bad)
    }

    pub(crate) fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        token: Option<&str>,
    ) -> Result<R, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(&Request { method: Method::Post, path, token, body: Body::Json(&json) })
    }

    pub(crate) fn put<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        token: &str,
    ) -> Result<R, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.call(&Request {
            method: Method::Put,
            path,
            token: Some(token),
            body: Body::Json(&json),
        })
    }

    pub(crate) fn delete<R: DeserializeOwned>(&self, path: &str, token: &str) -> Result<R, Error> {
        self.call(&Request { method: Method::Delete, path, token: Some(token), body: Body::Empty })
    }

    /// `PUT` the `len` bytes `body` reads (an upload), streamed; the answer as JSON.
    pub(crate) fn put_stream<R: DeserializeOwned>(
        &self,
        path: &str,
        body: &mut dyn std::io::Read,
        len: u64,
        token: Option<&str>,
    ) -> Result<R, Error> {
        let resp =
            self.transport.put_stream(path, token, body, len).map_err(|e| self.unreachable(e))?;
        self.finish(resp)
    }

    /// `GET` a byte stream from `offset` (a `Range` request); the reader of its body, which
    /// fails once `within` has passed if given (see [`Transport::stream`]).
    pub(crate) fn get_stream(
        &self,
        path: &str,
        (offset, within): (u64, Option<Duration>),
        token: &str,
    ) -> Result<impl std::io::Read + use<>, Error> {
        let stream =
            self.transport.stream(path, offset, token, within).map_err(|e| self.unreachable(e))?;
        if !(200..300).contains(&stream.status) {
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut std::io::Read::take(stream.body, 1 << 16),
                &mut body,
            );
            return Err(self.refusal(stream.status, &body));
        }
        Ok(stream.body)
    }

    /// Drops the cached token, so the next request logs in again.
    pub(crate) fn forget_token(&mut self) {
        self.token = None;
    }

    /// A valid bearer token, logging in with the device key when needed.
    pub(crate) fn token(
        &mut self,
        domain: &str,
        device_id: u64,
        key: &DeviceKey,
    ) -> Result<String, Error> {
        if let Some((t, until)) = &self.token
            && self.clock.now_ms() < *until
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
        let until = self.clock.now_ms() + tok.expires_in.saturating_sub(30) * 1000;
        let token = tok.token.clone();
        self.token = Some((Zeroizing::new(tok.token), until));
        Ok(token)
    }
}
