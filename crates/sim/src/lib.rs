//! Deterministic simulation: the server's real store and real MLS clients in one process, on
//! a simulated network and clock with seeded faults.
//!
//! One seed decides everything the harness decides: how many members, what they send and
//! when, every delay, lost request or answer, duplicate, partition, server crash and client
//! crash, and each client's clock rate. (MLS draws its own key material, which changes bytes
//! but never a decision.) A run then heals — faults stop — and the invariants are checked:
//!
//! - **nothing acknowledged is lost**: every application message the server stored reaches
//!   every other member;
//! - **nothing is shown twice**: no member records a message twice;
//! - **one order**: every member sees exactly the server's order of the others' messages;
//! - **no fork, and convergence**: every member ends in the server's epoch with the same
//!   epoch authenticator.
//!
//! The server is modelled at its transaction boundary, which is what its durability promise
//! is about: a store call either commits (synchronously, fsync'd, before any answer) or never
//! happened. A server crash loses every request in flight and every answer not yet delivered,
//! never a committed write; requests that arrive while it is down are lost. Clients behave
//! like Sotto's blocking client: one request at a time, retrying a request whose answer was
//! lost with the same submission id, processing their queue in order and acknowledging only
//! what they processed (state and position kept together), catching up and re-encrypting
//! after `stale_epoch`. A client crash loses what it had in flight and its unsent message,
//! never its processed state; clients do not crash with a commit in flight (that case needs
//! the durable outbox of the client engine).

use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt::Write as _;

use openmls_memory_storage::MemoryStorage;
use sotto_core::content::{Body, Message, VERSION};
use sotto_core::mls::{self, DeviceKey, Identity, Incoming, Provider};
use sotto_core::{Address, DeviceRef};
use sotto_server::store::{
    GroupAuth, GroupCredential, ListRecord, NewAccount, Ordering, PAGE_MAX_BYTES, QueueLimits,
    SqliteStore, Store, StoreError, Submission, To,
};

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5eed_5077_0000_0000)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// How hostile the network and the machines are during a run.
#[derive(Debug, Clone)]
pub struct Faults {
    /// A request is lost on its way.
    pub drop_request: f64,
    /// An answer is lost on its way back (the server did the work).
    pub drop_answer: f64,
    /// A request arrives twice.
    pub duplicate: f64,
    /// Longest one-way delay (ms); messages overtake each other within it.
    pub max_delay: u64,
    /// Per client step: the client is cut off for a while.
    pub partition: f64,
    /// Per client step: the server crashes.
    pub server_crash: f64,
    /// Per client step: the client crashes.
    pub client_crash: f64,
}

impl Faults {
    /// Faults drawn for one seed: every kind on, at rates that vary from seed to seed.
    pub fn draw(rng: &mut Rng) -> Self {
        let p = |rng: &mut Rng, max: u64| rng.range(0, max) as f64 / 1000.0;
        Faults {
            drop_request: p(rng, 150),
            drop_answer: p(rng, 150),
            duplicate: p(rng, 100),
            max_delay: rng.range(1, 80),
            partition: p(rng, 20),
            server_crash: p(rng, 15),
            client_crash: p(rng, 15),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Members of the group.
    pub members: usize,
    /// Application messages the server stored.
    pub stored: usize,
    /// Commits the server accepted.
    pub commits: usize,
    /// Requests lost, answers lost, duplicates, server crashes, client crashes, partitions.
    pub faults: [u64; 6],
    /// Simulated milliseconds until everyone converged.
    pub elapsed_ms: u64,
    /// A digest (FNV-1a) of every event the harness traced: equal runs trace equally.
    pub trace_digest: u64,
}

/// A broken invariant, with the end of the run's trace.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed that replays it.
    pub seed: u64,
    /// What broke.
    pub what: String,
    /// The last events before it.
    pub trace: String,
}

#[derive(Debug, Clone)]
enum Request {
    Submit {
        id: Vec<u8>,
        ordering: Ordering,
        message: Vec<u8>,
        credential: GroupCredential,
        next: Option<GroupCredential>,
    },
    Fetch {
        after: u64,
    },
    Ack {
        up_to: u64,
    },
}

#[derive(Debug, Clone)]
enum Answer {
    Submitted(Result<u64, String>),
    Page(Vec<(u64, Vec<u8>)>),
    Acked,
}

#[derive(Debug)]
enum Event {
    Step(usize),
    Arrive { client: usize, req: u64, request: Request },
    Answer { client: usize, req: u64, answer: Answer, life: u64 },
    Restart,
}

struct Scheduled {
    at: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// What a client is doing with its one request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doing {
    Sending,
    Committing,
    Fetching,
    Acking,
}

struct Client {
    provider: Provider<MemoryStorage>,
    me: Identity,
    /// Queue position processed (kept with the MLS state: both are "durable").
    processed: u64,
    /// Position the server confirmed acknowledged; a lost acknowledgement is sent again, as
    /// the real client does on its next sync.
    acked: u64,
    /// Message ids received, in order, with their senders (durable).
    received: Vec<(u64, String)>,
    /// The request in flight: its id, what it is, when it was last sent, the request.
    in_flight: Option<(u64, Doing, u64, Request)>,
    /// Messages still to write, and commits still to make.
    to_send: u32,
    to_commit: u32,
    /// A message refused as stale: re-encrypted after catching up.
    resend: Option<String>,
    /// Cut off from the network until then.
    cut_off_until: u64,
    /// Its clock's rate (timers run this much slower or faster).
    drift: f64,
    next_message: u32,
    /// What it submitted: the server sends the group's messages to every member, the
    /// sender's device too, and those copies are skipped.
    echoes: HashSet<Vec<u8>>,
}

const STEP_MS: u64 = 20;
const RETRY_MS: u64 = 400;
/// Simulated time with faults; after it, the run heals.
const FAULTY_MS: u64 = 60_000;
/// Longest time allowed to converge after healing.
const HEAL_MS: u64 = 120_000;

struct Sim {
    rng: Rng,
    faults: Faults,
    now: u64,
    order: u64,
    events: BinaryHeap<Scheduled>,
    store: SqliteStore,
    server_up: bool,
    /// Incremented at every crash: answers from an older life are lost.
    life: u64,
    clients: Vec<Client>,
    ids: Vec<u64>,
    group: Vec<u8>,
    /// Application messages the server stored, in its order: (sender index, message id).
    stored: Vec<(usize, String)>,
    seen_submissions: HashSet<(u64, Vec<u8>)>,
    next_req: u64,
    stats: Stats,
    trace: Vec<String>,
    healed: bool,
}

fn list() -> ListRecord {
    ListRecord {
        version: 1,
        identity_key: vec![1; 32],
        recovery_key: vec![2; 32],
        operator_key: None,
        body: b"{}".to_vec(),
        signature: vec![0; 64],
    }
}

fn store_error(e: &StoreError) -> String {
    match e {
        StoreError::StaleEpoch { .. } => "stale_epoch".into(),
        StoreError::NotMember => "not_member".into(),
        other => other.to_string(),
    }
}

impl Sim {
    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.trace.len() >= 400 {
            self.trace.drain(..200);
        }
        let line = line();
        for b in line.bytes().chain(self.now.to_le_bytes()) {
            self.stats.trace_digest =
                (self.stats.trace_digest ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.trace.push(format!("{:>7} {line}", self.now));
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.order += 1;
        self.events.push(Scheduled { at: self.now + delay, order: self.order, event });
    }

    fn delay(&mut self) -> u64 {
        let max = self.faults.max_delay;
        self.rng.range(1, max)
    }

    fn faulty(&self) -> bool {
        !self.healed
    }

    /// Sends a client's request (first time or retry).
    fn send(&mut self, c: usize, doing: Doing, request: Request) {
        self.next_req += 1;
        let req = self.next_req;
        let now = self.now;
        self.clients[c].in_flight = Some((req, doing, now, request.clone()));
        if self.clients[c].cut_off_until > now {
            return;
        }
        if self.faulty() && self.rng.chance(self.faults.drop_request) {
            self.stats.faults[0] += 1;
            self.log(|| format!("c{c} request {req} lost"));
            return;
        }
        let d = self.delay();
        self.schedule(d, Event::Arrive { client: c, req, request: request.clone() });
        if self.faulty() && self.rng.chance(self.faults.duplicate) {
            self.stats.faults[2] += 1;
            let d = self.delay();
            self.schedule(d, Event::Arrive { client: c, req, request });
        }
    }

    fn serve(&mut self, c: usize, req: u64, request: Request) {
        if !self.server_up {
            self.log(|| format!("c{c} request {req} hit a down server"));
            return;
        }
        let sender = self.ids[c];
        let answer = match request {
            Request::Submit { id, ordering, message, credential, next } => {
                let submission = Submission {
                    id: Some(&id),
                    digest: [0; 32],
                    group_id: &self.group,
                    ordering,
                    to: To::Group(GroupAuth {
                        credential: &credential,
                        next: next.as_ref(),
                        device: None,
                        roster: None,
                    }),
                    message: &message,
                    welcome: None,
                    removed: &[],
                    limits: QueueLimits::UNLIMITED,
                    expires_at: None,
                };
                let result = self.store.submit(&submission, self.now / 1000).map(|done| done.epoch);
                if result.is_ok() && self.seen_submissions.insert((sender, id.clone())) {
                    match ordering {
                        Ordering::NotBefore(_) => {
                            let msg = String::from_utf8_lossy(&id).into_owned();
                            let msg_id = msg.split('#').next().unwrap_or_default().to_string();
                            self.stored.push((c, msg_id));
                            self.stats.stored += 1;
                        }
                        _ => self.stats.commits += 1,
                    }
                }
                self.log(|| {
                    format!(
                        "c{c} request {req} submit {ordering:?}: {:?}",
                        result.as_ref().map_err(store_error)
                    )
                });
                Answer::Submitted(result.map_err(|e| store_error(&e)))
            }
            Request::Fetch { after } => {
                match self.store.fetch(sender, after, 16, 0, PAGE_MAX_BYTES) {
                    Ok((page, _)) => {
                        Answer::Page(page.into_iter().map(|(s, m, _)| (s, m)).collect())
                    }
                    Err(e) => {
                        self.log(|| format!("c{c} fetch failed: {e}"));
                        return;
                    }
                }
            }
            Request::Ack { up_to } => match self.store.ack(sender, up_to) {
                Ok(_) => Answer::Acked,
                Err(e) => {
                    self.log(|| format!("c{c} ack failed: {e}"));
                    return;
                }
            },
        };
        if self.faulty() && self.rng.chance(self.faults.drop_answer) {
            self.stats.faults[1] += 1;
            self.log(|| format!("c{c} answer {req} lost"));
            return;
        }
        let d = self.delay();
        let life = self.life;
        self.schedule(d, Event::Answer { client: c, req, answer, life });
    }

    fn step(&mut self, c: usize) -> Result<(), String> {
        let drift = self.clients[c].drift;
        let next = ((STEP_MS as f64) * drift) as u64 + 1;
        self.schedule(next, Event::Step(c));
        if self.faulty() {
            if self.rng.chance(self.faults.server_crash) && self.server_up {
                self.stats.faults[3] += 1;
                self.server_up = false;
                self.life += 1;
                self.log(|| "server crashed".into());
                let down = self.rng.range(10, 2000);
                self.schedule(down, Event::Restart);
            }
            if self.rng.chance(self.faults.partition) {
                self.stats.faults[5] += 1;
                let until = self.now + self.rng.range(100, 5000);
                self.clients[c].cut_off_until = until;
                self.log(|| format!("c{c} cut off until {until}"));
            }
            let committing =
                matches!(self.clients[c].in_flight, Some((_, Doing::Committing, _, _)));
            if !committing && self.rng.chance(self.faults.client_crash) {
                self.stats.faults[4] += 1;
                let client = &mut self.clients[c];
                if let Some((_, Doing::Sending, _, _)) = client.in_flight {
                    // The unsent message is lost with the process; its ratchet step is not.
                    client.resend = None;
                }
                client.in_flight = None;
                self.log(|| format!("c{c} crashed"));
                return Ok(());
            }
        }
        if let Some((_, doing, sent_at, request)) = self.clients[c].in_flight.clone() {
            let wait = ((RETRY_MS as f64) * drift) as u64;
            if self.now >= sent_at + wait {
                self.log(|| format!("c{c} retries {doing:?}"));
                self.send(c, doing, request);
            }
            return Ok(());
        }
        // Idle: fetch often, otherwise write or commit while there is something to do.
        let client = &self.clients[c];
        let (to_send, to_commit, resend) =
            (client.to_send, client.to_commit, client.resend.is_some());
        if client.processed > client.acked {
            let up_to = client.processed;
            self.send(c, Doing::Acking, Request::Ack { up_to });
        } else if self.rng.chance(0.5) || (to_send == 0 && to_commit == 0 && !resend) {
            let after = self.clients[c].processed;
            self.send(c, Doing::Fetching, Request::Fetch { after });
        } else if to_commit > 0 && self.rng.chance(0.15) {
            self.commit(c)?;
        } else if resend || to_send > 0 {
            self.write(c)?;
        }
        Ok(())
    }

    fn write(&mut self, c: usize) -> Result<(), String> {
        let group = self.group.clone();
        let client = &mut self.clients[c];
        let msg_id = match client.resend.take() {
            Some(id) => id,
            None => {
                client.to_send -= 1;
                client.next_message += 1;
                format!("c{c}-m{}", client.next_message)
            }
        };
        let message = Message {
            v: VERSION,
            id: msg_id.clone(),
            sent_at: self.now,
            expires_in: None,
            n: None,
            root: None,
            body: Body::text(format!("{msg_id} says hello")),
        };
        let p = &client.provider;
        let ciphertext =
            mls::encrypt(p, &group, &client.me, &message.encode()).map_err(|e| e.to_string())?;
        let epoch = mls::epoch(p, &group).map_err(|e| e.to_string())?;
        let credential = mls::group_credential(p, &group).map_err(|e| e.to_string())?;
        client.echoes.insert(ciphertext.clone());
        // The submission id carries the message id (and a fresh tag): the harness reads it back.
        self.next_req += 1;
        let id = format!("{msg_id}#{}", self.next_req).into_bytes();
        self.clients[c].resend = Some(msg_id);
        let request = Request::Submit {
            id,
            ordering: Ordering::NotBefore(epoch),
            message: ciphertext,
            credential,
            next: None,
        };
        self.send(c, Doing::Sending, request);
        Ok(())
    }

    fn commit(&mut self, c: usize) -> Result<(), String> {
        let client = &mut self.clients[c];
        let credential =
            mls::group_credential(&client.provider, &self.group).map_err(|e| e.to_string())?;
        let out = mls::self_update(&client.provider, &self.group, &client.me)
            .map_err(|e| e.to_string())?;
        let next =
            mls::next_group_credential(&client.provider, &self.group).map_err(|e| e.to_string())?;
        client.echoes.insert(out.commit.clone());
        self.next_req += 1;
        let id = format!("commit-c{c}#{}", self.next_req).into_bytes();
        let request = Request::Submit {
            id,
            ordering: Ordering::Advance(out.epoch),
            message: out.commit,
            credential,
            next,
        };
        self.send(c, Doing::Committing, request);
        Ok(())
    }

    fn answer(&mut self, c: usize, req: u64, answer: Answer, life: u64) -> Result<(), String> {
        if life != self.life && self.faulty() {
            // Sent by a server process that has since crashed: it never left the machine.
            return Ok(());
        }
        let Some((current, doing, _, request)) = self.clients[c].in_flight.clone() else {
            return Ok(());
        };
        if current != req {
            return Ok(());
        }
        self.clients[c].in_flight = None;
        match (doing, answer) {
            (Doing::Sending, Answer::Submitted(Ok(_))) => {
                self.clients[c].resend = None;
            }
            (Doing::Sending, Answer::Submitted(Err(e))) if e == "stale_epoch" => {
                // Kept in `resend`: catch up, then encrypt it again in the new epoch.
                let after = self.clients[c].processed;
                self.send(c, Doing::Fetching, Request::Fetch { after });
            }
            (Doing::Committing, Answer::Submitted(Ok(_))) => {
                let group = self.group.clone();
                let client = &mut self.clients[c];
                client.to_commit -= 1;
                mls::merge_pending_commit(&client.provider, &group).map_err(|e| e.to_string())?;
            }
            (Doing::Committing, Answer::Submitted(Err(e))) if e == "stale_epoch" => {
                mls::clear_pending_commit(&self.clients[c].provider, &self.group)
                    .map_err(|e| e.to_string())?;
            }
            (_, Answer::Submitted(Err(e))) => return Err(format!("c{c}: submission refused: {e}")),
            (Doing::Fetching, Answer::Page(page)) => self.process(c, page)?,
            (_, Answer::Acked) => {
                if let Request::Ack { up_to } = request {
                    let client = &mut self.clients[c];
                    client.acked = client.acked.max(up_to);
                }
            }
            (doing, answer) => return Err(format!("c{c}: {doing:?} got {answer:?}")),
        }
        Ok(())
    }

    fn process(&mut self, c: usize, page: Vec<(u64, Vec<u8>)>) -> Result<(), String> {
        let mut last = None;
        for (seq, bytes) in page {
            let client = &mut self.clients[c];
            if seq <= client.processed {
                continue;
            }
            if client.echoes.remove(&bytes) {
                client.processed = seq;
                last = Some(seq);
                continue;
            }
            match mls::process(&client.provider, &bytes) {
                Ok(Incoming::Application { sender, plaintext, .. }) => {
                    let message = Message::decode(&plaintext).map_err(|e| e.to_string())?;
                    client.received.push((sender.device_id, message.id));
                }
                Ok(Incoming::Commit { .. }) => {}
                Ok(other) => return Err(format!("c{c}: unexpected {other:?}")),
                Err(e) => return Err(format!("c{c}: message {seq} could not be processed: {e}")),
            }
            client.processed = seq;
            last = Some(seq);
        }
        if let Some(up_to) = last {
            self.log(|| format!("c{c} processed up to {up_to}"));
            self.send(c, Doing::Acking, Request::Ack { up_to });
        }
        Ok(())
    }

    /// What every client is doing, for a report.
    fn state(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.clients.iter().enumerate() {
            let queued = self
                .store
                .fetch(self.ids[i], 0, 500, 0, PAGE_MAX_BYTES)
                .map(|p| p.0.len())
                .unwrap_or(usize::MAX);
            let doing = c
                .in_flight
                .as_ref()
                .map(|(req, doing, at, _)| format!("{doing:?} #{req} since {at}"));
            let _ = write!(
                out,
                "\n  c{i}: to send {}, to commit {}, resend {:?}, in flight {doing:?}, processed {}, queued {queued}",
                c.to_send, c.to_commit, c.resend, c.processed
            );
        }
        out
    }

    fn quiet(&self) -> bool {
        let busy =
            |c: &Client| matches!(c.in_flight, Some((_, Doing::Sending | Doing::Committing, _, _)));
        self.clients
            .iter()
            .all(|c| c.to_send == 0 && c.to_commit == 0 && c.resend.is_none() && !busy(c))
            && self.ids.iter().all(|d| {
                self.store
                    .fetch(*d, 0, 1, 0, PAGE_MAX_BYTES)
                    .map(|p| p.0.is_empty())
                    .unwrap_or(false)
            })
    }

    fn check(&self) -> Result<(), String> {
        let epoch = |c: &Client| mls::epoch(&c.provider, &self.group).map_err(|e| e.to_string());
        let auth = |c: &Client| {
            mls::epoch_authenticator(&c.provider, &self.group).map_err(|e| e.to_string())
        };
        let (first_epoch, first_auth) = (epoch(&self.clients[0])?, auth(&self.clients[0])?);
        for (i, client) in self.clients.iter().enumerate() {
            let seen: HashSet<&String> = client.received.iter().map(|(_, m)| m).collect();
            if seen.len() != client.received.len() {
                return Err(format!("c{i} shows a message twice: {:?}", client.received));
            }
            let expected: Vec<&String> =
                self.stored.iter().filter(|(s, _)| *s != i).map(|(_, m)| m).collect();
            let got: Vec<&String> = client.received.iter().map(|(_, m)| m).collect();
            if got != expected {
                let missing: Vec<_> = expected.iter().filter(|m| !seen.contains(**m)).collect();
                return Err(format!(
                    "c{i} saw {} messages, the server stored {} for it (missing {missing:?}); order or content differs",
                    got.len(),
                    expected.len()
                ));
            }
            if epoch(client)? != first_epoch || auth(client)? != first_auth {
                return Err(format!("c{i} forked: epoch {} vs {first_epoch}", epoch(client)?));
            }
        }
        Ok(())
    }
}

/// Runs one seed to the end; `Err` says which invariant broke.
pub fn run(seed: u64) -> Result<Stats, Violation> {
    let mut sim = setup(seed).map_err(|what| Violation { seed, what, trace: String::new() })?;
    let outcome = drive(&mut sim);
    let stats = sim.stats.clone();
    match outcome.and_then(|()| sim.check()) {
        Ok(()) => Ok(Stats { elapsed_ms: sim.now, ..stats }),
        Err(what) => {
            let mut trace = String::new();
            for line in &sim.trace {
                let _ = writeln!(trace, "{line}");
            }
            Err(Violation { seed, what, trace })
        }
    }
}

fn setup(seed: u64) -> Result<Sim, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut rng = Rng::new(seed);
    let faults = Faults::draw(&mut rng);
    let store = SqliteStore::in_memory().map_err(|e| err(&e))?;
    let members = rng.range(2, 5) as usize;
    let first = list();
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for i in 0..members {
        let address: Address = format!("m{i}@sim.example").parse().map_err(|e| err(&e))?;
        let key = DeviceKey::generate().map_err(|e| err(&e))?;
        let text = address.to_string();
        let account = NewAccount {
            address: &text,
            device_key: key.public(),
            invite_hash: None,
            list: &first,
        };
        let id = store.register(&account, 0).map_err(|e| err(&e))?;
        let provider = Provider::new(MemoryStorage::default());
        key.store(&provider).map_err(|e| err(&e))?;
        let me = Identity { device: DeviceRef { address, device_id: id }, key };
        clients.push(Client {
            provider,
            me,
            processed: 0,
            acked: 0,
            received: Vec::new(),
            in_flight: None,
            to_send: rng.range(3, 12) as u32,
            to_commit: rng.range(0, 3) as u32,
            resend: None,
            cut_off_until: 0,
            drift: rng.range(50, 200) as f64 / 100.0,
            next_message: 0,
            echoes: HashSet::new(),
        });
        ids.push(id);
    }
    // The group is made as a creator makes it: a commit whose welcome adds everyone else. The
    // server learns its roster from that commit; the others join from the welcome.
    let creator = &clients[0];
    let group = mls::create_group(&creator.provider, &creator.me, mls::Suite::Classical)
        .map_err(|e| err(&e))?;
    let mut packages = Vec::new();
    for other in &clients[1..] {
        let kp = mls::key_packages(&other.provider, &other.me, mls::Suite::Classical, 1, false)
            .map_err(|e| err(&e))?
            .remove(0);
        let device = &other.me.device;
        packages.push(
            mls::validate_key_package(
                &creator.provider,
                &kp,
                &device.address,
                Some(device.device_id),
            )
            .map_err(|e| err(&e))?,
        );
    }
    let first = mls::group_credential(&creator.provider, &group).map_err(|e| err(&e))?;
    let out =
        mls::add_members(&creator.provider, &group, &creator.me, &packages).map_err(|e| err(&e))?;
    let next = mls::next_group_credential(&creator.provider, &group)
        .map_err(|e| err(&e))?
        .ok_or("no pending commit")?;
    mls::merge_pending_commit(&creator.provider, &group).map_err(|e| err(&e))?;
    let welcome = out.welcome.ok_or("no welcome")?;
    for other in &clients[1..] {
        mls::process(&other.provider, &welcome).map_err(|e| err(&e))?;
    }
    let creation = Submission {
        id: None,
        digest: [0; 32],
        group_id: &group,
        ordering: Ordering::Advance(0),
        to: To::Group(GroupAuth {
            credential: &first,
            next: Some(&next),
            device: Some(ids[0]),
            roster: None,
        }),
        message: &out.commit,
        welcome: Some((&ids[1..], &welcome)),
        removed: &[],
        limits: QueueLimits::UNLIMITED,
        expires_at: None,
    };
    store.submit(&creation, 0).map_err(|e| err(&e))?;
    // Everyone took part in the creation above: its copies are acknowledged at once.
    for &d in &ids {
        let (page, _) = store.fetch(d, 0, 100, 0, PAGE_MAX_BYTES).map_err(|e| err(&e))?;
        if let Some((last, _, _)) = page.last() {
            store.ack(d, *last).map_err(|e| err(&e))?;
        }
    }
    Ok(Sim {
        rng,
        faults,
        now: 0,
        order: 0,
        events: BinaryHeap::new(),
        store,
        server_up: true,
        life: 0,
        clients,
        ids,
        group,
        stored: Vec::new(),
        seen_submissions: HashSet::new(),
        next_req: 0,
        stats: Stats { members, ..Stats::default() },
        trace: Vec::new(),
        healed: false,
    })
}

fn drive(sim: &mut Sim) -> Result<(), String> {
    for c in 0..sim.clients.len() {
        let d = sim.rng.range(0, STEP_MS);
        sim.schedule(d, Event::Step(c));
    }
    while let Some(Scheduled { at, event, .. }) = sim.events.pop() {
        sim.now = at;
        if !sim.healed && sim.now >= FAULTY_MS {
            sim.healed = true;
            sim.server_up = true;
            for client in &mut sim.clients {
                client.cut_off_until = 0;
            }
            sim.log(|| "healed".into());
        }
        match event {
            Event::Step(c) => {
                sim.step(c)?;
                if sim.healed && c == 0 && sim.quiet() {
                    return Ok(());
                }
            }
            Event::Arrive { client, req, request } => sim.serve(client, req, request),
            Event::Answer { client, req, answer, life } => sim.answer(client, req, answer, life)?,
            Event::Restart => {
                sim.server_up = true;
                sim.log(|| "server restarted".into());
            }
        }
        if sim.now > FAULTY_MS + HEAL_MS {
            return Err(format!("no convergence after healing: {}", sim.state()));
        }
    }
    Err("the event queue ran dry".into())
}

/// The seeds to run: `SOTTO_SIM_SEED=N` alone, or `SOTTO_SIM_SEEDS` of them from
/// `SOTTO_SIM_FIRST` (default 0), or `default` of them.
pub fn seeds(default: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = var("SOTTO_SIM_SEED") {
        return vec![seed];
    }
    let first = var("SOTTO_SIM_FIRST").unwrap_or(0);
    (first..first + var("SOTTO_SIM_SEEDS").unwrap_or(default)).collect()
}

/// The kinds of fault counted in [`Stats::faults`], in order.
pub const FAULT_KINDS: [&str; 6] = [
    "requests lost",
    "answers lost",
    "duplicates",
    "server crashes",
    "client crashes",
    "partitions",
];

/// Totals over many runs, by name.
pub fn summary(stats: &[Stats]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    m.insert("runs", stats.len() as u64);
    m.insert("messages stored", stats.iter().map(|s| s.stored as u64).sum());
    m.insert("commits", stats.iter().map(|s| s.commits as u64).sum());
    for (i, name) in FAULT_KINDS.iter().enumerate() {
        m.insert(name, stats.iter().map(|s| s.faults[i]).sum());
    }
    m
}
