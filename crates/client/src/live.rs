//! Live delivery over the WebSocket: messages are processed as they arrive, a page at a time,
//! and each page is acknowledged at once; the connection is re-established with backoff and
//! jitter when it drops.

use std::time::{Duration, Instant};

use sotto_proto as proto;

use crate::transport::{LiveLink, Received};
use crate::{Client, Error, MessageView};

/// How often a blocked read wakes up to check whether to stop.
const POLL: Duration = Duration::from_millis(250);

impl Client {
    /// Opens the live connection.
    pub(crate) fn connect_live(&mut self) -> Result<Box<dyn LiveLink>, Error> {
        let token = self.token()?;
        self.api.transport().connect_live(&token)
    }

    /// Catches up, then receives live until `stop` says so, calling `on_message` for every
    /// new message. Connects, and reconnects when the connection drops, with backoff and
    /// jitter while the server is down or busy; returns an error if the server refuses for
    /// good (a revoked device first looks for a wipe command and obeys it).
    pub fn listen(
        &mut self,
        mut on_message: impl FnMut(&MessageView),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(250);
        // The first catch-up is retried like every later connection: a server that is down
        // or busy when listening starts is waited for.
        loop {
            match self.sync() {
                Ok(report) => {
                    report.messages.iter().for_each(&mut on_message);
                    break;
                }
                Err(e) if transient(&e) => {
                    if !wait(backoff, stop) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
        backoff = Duration::from_millis(250);
        // Pages that could not be taken (a message kept by reference the server would not
        // hand out) are taken again after a wait that grows while they keep failing.
        let mut failing = Duration::from_millis(250);
        while !stop() {
            let mut socket = match self.connect_live() {
                Ok(s) => s,
                Err(e) if e.server_code() == Some("device_revoked") => {
                    return Err(self.obey_revocation());
                }
                Err(e) => {
                    if e.server_code() == Some("unauthorized") {
                        // A token the server no longer knows (it lost its sessions): log in
                        // again on the next attempt.
                        self.api.forget_token();
                    } else if !transient(&e) {
                        // A refusal that waiting will not change ends the loop.
                        return Err(e);
                    }
                    if !wait(backoff, stop) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            backoff = Duration::from_millis(250);
            // Anything queued between the catch-up and the connection comes first on the socket.
            match self.receive(&mut *socket, &mut on_message, stop) {
                Err(e) if e.server_code() == Some("device_revoked") => {
                    return Err(self.obey_revocation());
                }
                Err(e) if transient(&e) || e.server_code() == Some("unauthorized") => {
                    // Fetching a file a reference names can find the token expired: log in
                    // again on the next connection.
                    if e.server_code() == Some("unauthorized") {
                        self.api.forget_token();
                    }
                    socket.close();
                    if !wait(failing, stop) {
                        return Ok(());
                    }
                    failing = (failing * 2).min(Duration::from_secs(30));
                    continue;
                }
                Err(e) => return Err(e),
                Ok(()) => failing = Duration::from_millis(250),
            }
            socket.close();
        }
        Ok(())
    }

    /// Reads frames until the connection drops or `stop`; local failures are returned.
    fn receive(
        &mut self,
        socket: &mut dyn LiveLink,
        on_message: &mut impl FnMut(&MessageView),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), Error> {
        while !stop() {
            let frame = match socket.recv(POLL) {
                Received::Frame(t) => t,
                Received::Idle => continue,
                Received::Closed => return Ok(()),
            };
            match frame {
                Ok(proto::live::Down::Messages(page)) => {
                    // A message kept by reference that could not be fetched fails the page: the
                    // connection is given up, and the page comes again on the next one.
                    let Some((processed, up_to)) = self.process_page(&page)? else { continue };
                    if !socket.send(&proto::live::Up::Ack(proto::AckRequest { up_to })) {
                        return Ok(());
                    }
                    let report = self.finish_batch(processed, false)?;
                    report.messages.iter().for_each(&mut *on_message);
                    // Receipts (after a short gathering) and anything else due go now.
                    if let Err(e) = self.flush_outbox(None, false)
                        && !crate::outbox::transient(&e)
                    {
                        return Err(e);
                    }
                }
                Ok(proto::live::Down::Acked(a)) => crate::db::set_last_acked(&self.conn, a.up_to)?,
                Ok(proto::live::Down::Error(e)) => {
                    return Err(Error::Server {
                        status: 0,
                        code: crate::error::code_name(e.error.code),
                        message: e.error.message,
                        epoch: None,
                    });
                }
                Err(e) => return Err(Error::Protocol(format!("bad frame: {e}"))),
            }
        }
        Ok(())
    }
}

/// Waits `backoff` and a random jitter of up to a quarter second; false if `stop` said to
/// stop meanwhile.
fn wait(backoff: Duration, stop: &dyn Fn() -> bool) -> bool {
    let jitter =
        Duration::from_millis(u64::from(sotto_core::random_bytes(1).map(|b| b[0]).unwrap_or(0)));
    let until = Instant::now() + backoff + jitter;
    while Instant::now() < until {
        if stop() {
            return false;
        }
        std::thread::sleep(POLL.min(until - Instant::now()));
    }
    !stop()
}

/// Whether retrying later may succeed: the server is down or busy, not refusing.
fn transient(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Server { status, code, .. } => {
            *status >= 500 || code == "rate_limited" || code == "storage_full"
        }
        _ => false,
    }
}
