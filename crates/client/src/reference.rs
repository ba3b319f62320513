//! Messages by reference (`sotto_core::reference`): a commit or welcome too large to copy
//! into every recipient's queue goes to the server once, as an encrypted file, and the queues
//! get a small reference to it. Receiving, the file is fetched and opened before the page's
//! transaction begins, so no request waits inside it.

use std::borrow::Cow;
use std::io::Read as _;

use sotto_core::reference::{self, Reference};
use sotto_core::roster::GroupCredential;
use sotto_proto as proto;

use crate::outbox::transient;
use crate::*;

/// A message longer than this goes by reference (a submission, commit and welcome together,
/// is at most 2 MiB of JSON, base64 inside)...
const INLINE_MAX: usize = 512 << 10;
/// ...and so does one whose copies would together take more than this. A commit in a group
/// of 100 (about 9 KB) is still copied; the welcome that creates such a group is not.
const INLINE_FANOUT: u64 = 1 << 20;

/// What the referenced messages of one page may hold in memory together: a page whose
/// references name more is taken in parts (one message of up to
/// [`reference::MAX_MESSAGE`] always fits).
const READY_BYTES: u64 = 16 << 20;

/// Whether a message of `len` bytes for `copies` queues goes by reference.
pub(crate) fn goes_by_reference(len: usize, copies: usize) -> bool {
    len > INLINE_MAX || (len as u64).saturating_mul(copies as u64) > INLINE_FANOUT
}

/// A queued message made ready for processing: its copy opened (what waits in a queue is
/// sealed to the device's queue key) and, for a reference, the message it names fetched.
pub(crate) struct Ready<'a> {
    pub(crate) seq: u64,
    /// When the server queued it (Unix seconds), if it says.
    pub(crate) at: Option<u64>,
    /// The copy as queued, opened; or why it did not open.
    pub(crate) copy: Result<Cow<'a, [u8]>, String>,
    /// For a reference: the message it names, or why that could not be had.
    pub(crate) referenced: Option<Result<Vec<u8>, String>>,
    /// The file a reference named, once fetched (noted with the message's processing).
    pub(crate) fetched: Option<[u8; 16]>,
}

impl Client {
    /// `message` as it goes into `copies` queues: itself, or — if that is too much to copy —
    /// a reference to it, kept on the server as an encrypted file uploaded now. The file is
    /// made with the group's credential and no token, so the server learns no more about who
    /// sent the message than from the submission itself; a group the server holds no sealed
    /// roster for yet (being created) takes it with this device's token, as its submission.
    pub(crate) fn by_reference(
        &self,
        (group_id, credential): (&[u8], &GroupCredential),
        token: &str,
        message: Vec<u8>,
        copies: usize,
    ) -> Result<Vec<u8>, Error> {
        if !goes_by_reference(message.len(), copies) {
            return Ok(message);
        }
        let size = reference::sealed_len(message.len() as u64);
        let group = proto::BlobGroup {
            group_id: proto::Bytes(group_id.to_vec()),
            credential: proto::Bytes(credential.as_bytes().to_vec()),
        };
        let anonymous = proto::NewBlob { size, expires_in: None, group: Some(group) };
        let (status, token): (proto::BlobStatus, _) =
            match self.api.post("/v1/blobs", &anonymous, None) {
                // A group the server holds no sealed roster for, or whose files fill their
                // quota (which a member could do on purpose), makes it with this device's
                // token instead: the commit is made, though the server sees who made it.
                Err(e) if matches!(e.server_code(), Some("group_unsealed" | "quota_exceeded")) => {
                    let mine = proto::NewBlob { size, expires_in: None, group: None };
                    (self.api.post("/v1/blobs", &mine, Some(token))?, Some(token))
                }
                other => (other?, None),
            };
        let blob: [u8; 16] = status.id.0.as_slice().try_into().map_err(|_| {
            Error::Protocol("the server gave a file id that is not 16 bytes".into())
        })?;
        let (sealed, r) = reference::seal(blob, &message)?;
        let put: proto::BlobStatus = self.api.put_stream(
            &format!("/v1/blobs/{}?offset=0", r.blob_hex()),
            &mut std::io::Cursor::new(&sealed),
            size,
            token,
        )?;
        if put.received != size {
            return Err(Error::Protocol(format!(
                "the server kept {} of the {size} bytes of a message sent by reference",
                put.received
            )));
        }
        Ok(r.encode())
    }

    /// Deletes the file behind a reference this device made, once the message it carried
    /// will not be sent (its commit was refused). Only a file made with this device's token
    /// can be; one made with the group's credential expires, as failing to delete does.
    pub(crate) fn forget_reference(&self, token: &str, queued: &[u8]) {
        if let Ok(Some(r)) = Reference::decode(queued) {
            let path = format!("/v1/blobs/{}", r.blob_hex());
            let _ = self.api.delete::<proto::Deleted>(&path, token);
        }
    }

    /// Downloads and opens the message a reference names.
    fn dereference(&self, token: &str, r: &Reference) -> Result<Vec<u8>, Error> {
        let expected = r.sealed_len();
        // Up to 64 MiB: two minutes, and then as long as 8 KiB/s takes (a poor mobile link),
        // so that a slow link gets there while a connection that went quiet (half open) is
        // given up on in the end, and the page taken again later.
        let within = std::time::Duration::from_secs(120 + expected / (8 << 10));
        let path = format!("/v1/blobs/{}", r.blob_hex());
        let stream = self.api.get_stream(&path, (0, Some(within)), token)?;
        // A server that sends more than the reference says is cut off one byte past it.
        let mut sealed = Vec::with_capacity(expected as usize);
        stream.take(expected + 1).read_to_end(&mut sealed).map_err(|e| Error::Unreachable {
            url: self.api.base().to_string(),
            reason: format!("reading a message kept by reference: {e}"),
        })?;
        reference::open(r, &sealed).map_err(|e| Error::Tampered(e.to_string()))
    }

    /// Opens the copies of a page's new messages and fetches what references among them name
    /// — those this device sent too, though their copies are then skipped, so that the server
    /// cannot tell the sender as the one member that did not fetch. A fetch that may succeed later
    /// (the server unreachable, busy) fails the page, to be taken again; one that never will
    /// (no such file, a file that is not what its reference says) fails that message alone.
    /// Stops before a reference that would take what it holds past [`READY_BYTES`], and
    /// returns with the messages made ready how many of the page's messages it went through:
    /// the rest is to be made ready, and processed, apart.
    pub(crate) fn ready<'a>(
        &mut self,
        page: &'a [proto::QueuedMessage],
    ) -> Result<(Vec<Ready<'a>>, usize), Error> {
        let done = db::last_seq(&self.conn)?;
        let mut token = None;
        let mut held = 0u64;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(page.len());
        for (i, m) in page.iter().enumerate() {
            if m.seq <= done {
                continue;
            }
            let copy = self.open_copy(&m.message.0)?;
            let mut referenced = None;
            let mut fetched_blob = None;
            if let Ok(c) = &copy
                && reference::is_reference(c)
            {
                let fetched = match Reference::decode(c) {
                    // Refused before anything is fetched or counted.
                    Ok(Some(r))
                        if seen.contains(&r.blob)
                            || db::reference_fetched(&self.conn, &r.blob)? =>
                    {
                        Err("it names a file an earlier reference named".into())
                    }
                    Ok(Some(r)) if held > 0 && held + r.size > READY_BYTES => {
                        return Ok((out, i));
                    }
                    Ok(Some(r)) => {
                        seen.insert(r.blob);
                        fetched_blob = Some(r.blob);
                        let t = match &token {
                            Some(t) => t,
                            None => token.insert(self.token()?),
                        };
                        match self.dereference(t, &r) {
                            Err(e) if transient(&e) => return Err(e),
                            // Only what was fetched is held.
                            Ok(message) => {
                                held += message.len() as u64;
                                Ok(message)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Ok(None) => Err("not a message reference".into()),
                    Err(e) => Err(e.to_string()),
                };
                referenced = Some(fetched);
            }
            let fetched = fetched_blob.filter(|_| matches!(referenced, Some(Ok(_))));
            out.push(Ready { seq: m.seq, at: m.at, copy, referenced, fetched });
        }
        Ok((out, page.len()))
    }

    /// A queued copy opened with this device's queue key (copies queued before it gave the
    /// key are not sealed); the local database failing is the only error.
    fn open_copy<'a>(&self, data: &'a [u8]) -> Result<Result<Cow<'a, [u8]>, String>, Error> {
        if !sotto_core::queue::is_sealed(data) {
            return Ok(Ok(Cow::Borrowed(data)));
        }
        match self.queue_key().and_then(|k| Ok(k.open(self.me.device.device_id, data)?)) {
            Ok(plain) => Ok(Ok(Cow::Owned(plain))),
            Err(e @ Error::Database(_)) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }
}
