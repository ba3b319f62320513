//! The operator's interface: account lifecycle, invites, the audit log and the operator key.
//!
//! Every operator action is a [`Request`], carried out by [`execute`] on the store and the
//! data directory. The `sotto-server` subcommands send it to the running server's admin API
//! (its own listener, loopback only, with the token in `DATA/admin.token`), which executes it
//! and then puts the change in service at once: devices of a suspended account are cut off,
//! a deleted address is tombstoned in the key directory, a new operator key is used. When no
//! server runs, the subcommands execute it on the data directory themselves, and the server
//! picks the change up when it starts.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{AccountChange, AccountRecord, AuditRecord, Barred, Store, StoreError};
use crate::{Config, Error};

/// One thing the operator asks of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every account.
    AccountsList {},
    /// One account and its devices.
    AccountsShow {
        /// The address.
        address: String,
    },
    /// Cut an account's devices off until it is resumed.
    AccountsSuspend {
        /// The address.
        address: String,
    },
    /// Undo a suspension.
    AccountsResume {
        /// The address.
        address: String,
    },
    /// Delete an account: its queues, key packages, files and device list. The address stays
    /// taken, and the key directory records that it is gone.
    AccountsDelete {
        /// The address.
        address: String,
    },
    /// Give an account a term of `valid_for` seconds from now, or (with `None`) no term.
    AccountsTerm {
        /// The address.
        address: String,
        /// Seconds from now.
        valid_for: Option<u64>,
    },
    /// Extend an account's term by `by` seconds (from its end, or from now if it ended).
    AccountsRenew {
        /// The address.
        address: String,
        /// Seconds.
        by: u64,
    },
    /// Mint an invite.
    InviteCreate {
        /// Seconds it stays valid.
        expires_in: u64,
        /// Accounts it can create.
        uses: u32,
        /// The term of the accounts it creates, seconds.
        valid_for: Option<u64>,
    },
    /// The invites not used up.
    InviteList {},
    /// Withdraw an invite by the start of its id.
    InviteRevoke {
        /// Hex.
        id: String,
    },
    /// The newest lines of the audit log.
    Audit {
        /// How many.
        limit: u32,
    },
    /// Create the operator key if there is none; answer its public half.
    OperatorKey {},
}

/// The latest time a term can end (what the database holds).
const MAX_TIME: u64 = i64::MAX as u64;

/// A request as the admin API takes it: the operator's name (for the audit log) and the
/// request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// Who asks (the operator's login name, as the command saw it).
    pub operator: String,
    /// What.
    pub request: Request,
}

/// What a running server must do after a request, to put its change in service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Read which devices are barred again.
    Rebar,
    /// These devices were revoked (an account's deletion).
    Revoke(Vec<u64>),
    /// Record in the key directory that this address is gone.
    Tombstone(String),
    /// Put this operator key (its public half) in service.
    OperatorKey(Vec<u8>),
}

/// A request's answer and what the server must do next.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) answer: Value,
    pub(crate) effects: Vec<Effect>,
}

/// Errors an operator's request can meet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The request names something that does not exist or is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The server failed.
    #[error(transparent)]
    Server(#[from] Error),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoAccount => AdminError::Invalid("no such account on this server".into()),
            StoreError::AccountDeleted => {
                AdminError::Invalid("that account was deleted; only its address is kept".into())
            }
            other => AdminError::Server(Error::Store(other)),
        }
    }
}

/// A name for the audit log, from what the operator's command says about its user: printable
/// characters only, at most 64.
pub fn actor_name(name: &str) -> String {
    let clean: String =
        name.chars().filter(|c| !c.is_control()).take(64).collect::<String>().trim().to_string();
    if clean.is_empty() { "unknown".into() } else { clean }
}

fn account_json(a: &AccountRecord, grace: u64, now: u64) -> Value {
    let state = match a.barred(grace, now) {
        Some(Barred::Deleted) => "deleted",
        Some(Barred::Suspended) => "suspended",
        Some(Barred::Expired) => "expired",
        None if a.valid_until.is_some_and(|end| end <= now) => "grace",
        None => "active",
    };
    json!({
        "address": a.address, "state": state, "created_at": a.created_at,
        "devices": a.devices, "revoked_devices": a.revoked, "last_seen": a.last_seen,
        "suspended_at": a.suspended_at, "valid_until": a.valid_until,
        "deleted_at": a.deleted_at,
    })
}

fn normal_address(config: &Config, address: &str) -> Result<String, AdminError> {
    let address: sotto_core::Address = address
        .trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|e: sotto_core::Error| AdminError::Invalid(e.to_string()))?;
    if address.domain() != config.domain {
        return Err(AdminError::Invalid(format!(
            "this server hosts @{} addresses, not @{}",
            config.domain,
            address.domain()
        )));
    }
    Ok(address.to_string())
}

/// How an invite is named: the start of its code's hash (the code itself is not kept).
pub fn invite_id(code_hash: &[u8]) -> String {
    hex::encode(code_hash.get(..6).unwrap_or(code_hash))
}

/// Carries out `request` on the store and data directory, recording lifecycle changes in the
/// audit log under `actor`.
pub(crate) fn execute(
    config: &Config,
    store: &dyn Store,
    request: Request,
    actor: &str,
) -> Result<Outcome, AdminError> {
    let now = config.clock.now_secs();
    let grace = config.account_grace_secs;
    let audit = |action: &str, subject: &str, detail: String| AuditRecord {
        at: now,
        actor: actor.to_string(),
        action: action.to_string(),
        subject: subject.to_string(),
        detail,
    };
    let done = |answer: Value, effects: Vec<Effect>| Ok(Outcome { answer, effects });
    let change = |address: &str, change: AccountChange, action: &str, detail: String| {
        let address = normal_address(config, address)?;
        let files = store.change_account(&address, change, &audit(action, &address, detail))?;
        for id in &files {
            let _ = std::fs::remove_file(config.data_dir.join("blobs").join(hex::encode(id)));
        }
        let account = store.account(&address)?.ok_or(StoreError::NoAccount)?;
        let mut effects = vec![Effect::Rebar];
        if change == AccountChange::Delete {
            let devices = store.devices(&address)?.into_iter().map(|d| d.device_id).collect();
            effects.push(Effect::Revoke(devices));
            effects.push(Effect::Tombstone(address));
        }
        Ok::<_, AdminError>(Outcome { answer: account_json(&account, grace, now), effects })
    };
    let current = |address: &str| {
        let address = normal_address(config, address)?;
        match store.account(&address)? {
            Some(a) if a.deleted_at.is_some() => Err(AdminError::from(StoreError::AccountDeleted)),
            Some(a) => Ok(a),
            None => Err(AdminError::from(StoreError::NoAccount)),
        }
    };
    match request {
        Request::AccountsList {} => {
            let list: Vec<Value> =
                store.accounts()?.iter().map(|a| account_json(a, grace, now)).collect();
            done(Value::Array(list), vec![])
        }
        Request::AccountsShow { address } => {
            let address = normal_address(config, &address)?;
            let account = store.account(&address)?.ok_or(StoreError::NoAccount)?;
            let managed = store.device_list(&address)?.and_then(|l| l.operator_key).is_some();
            let devices: Vec<Value> = store
                .devices(&address)?
                .iter()
                .map(|d| {
                    json!({
                        "device_id": d.device_id, "created_at": d.created_at,
                        "revoked_at": d.revoked_at, "last_seen": d.last_seen,
                        "device_key": hex::encode(&d.device_key),
                    })
                })
                .collect();
            let mut answer = account_json(&account, grace, now);
            answer["managed"] = json!(managed);
            answer["device_list"] = Value::Array(devices);
            done(answer, vec![])
        }
        Request::AccountsSuspend { address } => {
            let account = current(&address)?;
            if account.suspended_at.is_some() {
                return Err(AdminError::Invalid(format!(
                    "{} is suspended already",
                    account.address
                )));
            }
            change(&address, AccountChange::Suspend, "account.suspend", String::new())
        }
        Request::AccountsResume { address } => {
            let account = current(&address)?;
            if account.suspended_at.is_none() {
                return Err(AdminError::Invalid(format!("{} is not suspended", account.address)));
            }
            change(&address, AccountChange::Resume, "account.resume", String::new())
        }
        Request::AccountsDelete { address } => {
            change(&address, AccountChange::Delete, "account.delete", String::new())
        }
        Request::AccountsTerm { address, valid_for } => {
            if valid_for == Some(0) {
                return Err(AdminError::Invalid("a term must last some time".into()));
            }
            let until = valid_for.map(|v| now.saturating_add(v).min(MAX_TIME));
            let detail = until.map(|u| format!("valid until {u}")).unwrap_or("no term".into());
            change(&address, AccountChange::Term(until), "account.term", detail)
        }
        Request::AccountsRenew { address, by } => {
            let normal = normal_address(config, &address)?;
            let account = store.account(&normal)?.ok_or(StoreError::NoAccount)?;
            let from = account.valid_until.unwrap_or(now).max(now);
            let until = from.saturating_add(by).min(MAX_TIME);
            change(&normal, AccountChange::Term(Some(until)), "account.renew", {
                format!("valid until {until}")
            })
        }
        Request::InviteCreate { expires_in, uses, valid_for } => {
            if uses == 0 {
                return Err(AdminError::Invalid("an invite needs at least one use".into()));
            }
            if expires_in == 0 {
                return Err(AdminError::Invalid("an invite must stay valid for some time".into()));
            }
            if valid_for == Some(0) {
                return Err(AdminError::Invalid("a term must last some time".into()));
            }
            let invite = crate::create_invite(store, expires_in, uses, valid_for)?;
            let hash = crate::invite_hash(&invite.code);
            let detail = format!(
                "{uses} use(s), expires {}{}",
                invite.expires_at,
                valid_for.map(|v| format!(", term {v} s")).unwrap_or_default()
            );
            store.record_audit(&audit("invite.create", &invite_id(&hash), detail))?;
            done(
                json!({
                    "id": invite_id(&hash), "code": invite.code,
                    "expires_at": invite.expires_at, "uses": invite.uses, "valid_for": valid_for,
                }),
                vec![],
            )
        }
        Request::InviteList {} => {
            let list: Vec<Value> = store
                .invites()?
                .iter()
                .map(|i| {
                    json!({
                        "id": invite_id(&i.code_hash), "created_at": i.created_at,
                        "expires_at": i.expires_at, "uses_left": i.uses_left,
                        "expired": i.expires_at <= now, "valid_for": i.valid_for,
                    })
                })
                .collect();
            done(Value::Array(list), vec![])
        }
        Request::InviteRevoke { id } => {
            let prefix =
                hex::decode(id.trim()).ok().filter(|p| !p.is_empty()).ok_or_else(|| {
                    AdminError::Invalid(
                        "an invite id is hex, from `sotto-server invite list`".into(),
                    )
                })?;
            match store.revoke_invite(&prefix)? {
                0 => Err(AdminError::Invalid(format!("no invite has the id {id}"))),
                1 => {
                    store.record_audit(&audit("invite.revoke", id.trim(), String::new()))?;
                    done(json!({ "revoked": id.trim() }), vec![])
                }
                _ => Err(AdminError::Invalid(format!(
                    "several invites start with {id}: give more of the id"
                ))),
            }
        }
        Request::Audit { limit } => {
            let lines: Vec<Value> = store
                .audit_log(limit.clamp(1, 100_000))?
                .into_iter()
                .map(|a| {
                    json!({
                        "at": a.at, "actor": a.actor, "action": a.action,
                        "subject": a.subject, "detail": a.detail,
                    })
                })
                .collect();
            done(Value::Array(lines), vec![])
        }
        Request::OperatorKey {} => {
            let existed = crate::load_operator_key(config)?.is_some();
            let key = crate::create_operator_key(config)?.public();
            let public = hex::encode(&key);
            if !existed {
                store.record_audit(&audit("operator_key.create", &public, String::new()))?;
            }
            done(
                json!({ "operator_key": public, "created": !existed }),
                vec![Effect::OperatorKey(key)],
            )
        }
    }
}

/// Executes `request` on the data directory of a server that is not running.
pub fn execute_offline(
    config: &Config,
    store: &dyn Store,
    request: Request,
    actor: &str,
) -> Result<Value, AdminError> {
    execute(config, store, request, &format!("{} (data directory)", actor_name(actor)))
        .map(|o| o.answer)
}

/// The admin API's token (`DATA/admin.token`, owner-only), made on first use: 32 random bytes,
/// hex. It allows every operator request.
pub fn admin_token(config: &Config) -> Result<String, Error> {
    token_file(&config.data_dir.join("admin.token"))
}

/// The token that allows only `GET /metrics` (`DATA/metrics.token`), for a scraper that
/// should not be able to change accounts.
pub fn metrics_token(config: &Config) -> Result<String, Error> {
    token_file(&config.data_dir.join("metrics.token"))
}

fn token_file(path: &std::path::Path) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() == 64 => return Ok(t.trim().to_string()),
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} is not a token; delete it to make a new one",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    }
    let token =
        hex::encode(sotto_core::random_bytes(32).map_err(|e| Error::Internal(e.to_string()))?);
    crate::private_file(path)?;
    std::fs::write(path, &token)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(token)
}

/// Where the running server's admin API listens (`DATA/admin.url`).
pub fn admin_url(config: &Config) -> Option<String> {
    let url = std::fs::read_to_string(config.data_dir.join("admin.url")).ok()?;
    let url = url.trim();
    url.starts_with("http://").then(|| url.to_string())
}

/// Whether `given` is the admin token, compared in time that does not depend on where they
/// differ (both are hashed first).
pub(crate) fn token_matches(expected: &str, given: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(expected.as_bytes()), Sha256::digest(given.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn register(store: &SqliteStore, address: &str, invite: Option<&str>) -> u64 {
        let list = crate::store::ListRecord {
            version: 1,
            identity_key: vec![1; 32],
            recovery_key: vec![2; 32],
            operator_key: None,
            body: b"{}".to_vec(),
            signature: vec![0; 64],
        };
        let hash = invite.map(crate::invite_hash);
        let account = crate::store::NewAccount {
            address,
            device_key: address.as_bytes(),
            invite_hash: hash.as_deref(),
            list: &list,
        };
        store.register(&account, sotto_core::unix_now()).expect("register")
    }

    #[test]
    fn lifecycle_bars_devices_and_is_audited() {
        let dir = tempfile::tempdir().expect("dir");
        let config = Config { data_dir: dir.path().into(), ..Config::default() };
        let store = SqliteStore::in_memory().expect("store");
        let run = |r: Request| execute(&config, &store, r, "ops").map(|o| o.answer);
        let invite = run(Request::InviteCreate { expires_in: 60, uses: 1, valid_for: Some(100) })
            .expect("invite");
        let alice = register(&store, "alice@localhost", invite["code"].as_str());
        let bob = register(&store, "bob@localhost", None);
        let shown = run(Request::AccountsShow { address: "Alice@localhost".into() }).expect("show");
        let until = shown["valid_until"].as_u64().expect("a term from the invite");
        assert!(until > sotto_core::unix_now() + 90, "{shown}");
        assert_eq!(shown["state"], "active");

        run(Request::AccountsSuspend { address: "bob@localhost".into() }).expect("suspend");
        let now = sotto_core::unix_now();
        let barred = store.barred_devices(0, now).expect("barred");
        assert_eq!(barred, vec![(bob, crate::store::Barred::Suspended)]);
        // Past alice's term (no grace): barred as expired; renewing lifts it.
        let later = store.barred_devices(0, until + 1).expect("barred");
        assert!(later.contains(&(alice, crate::store::Barred::Expired)), "{later:?}");
        run(Request::AccountsRenew { address: "alice@localhost".into(), by: 1000 }).expect("renew");
        assert!(!store.barred_devices(0, until + 1).expect("barred").iter().any(|b| b.0 == alice));
        run(Request::AccountsResume { address: "bob@localhost".into() }).expect("resume");
        assert!(store.barred_devices(0, now).expect("barred").is_empty());

        let deleted = execute(
            &config,
            &store,
            Request::AccountsDelete { address: "bob@localhost".into() },
            "ops",
        )
        .expect("delete");
        assert_eq!(deleted.answer["state"], "deleted");
        assert!(deleted.effects.contains(&Effect::Tombstone("bob@localhost".into())));
        assert!(store.device_list("bob@localhost").expect("list").is_none());
        assert_eq!(
            store.barred_devices(0, now).expect("barred"),
            vec![(bob, crate::store::Barred::Deleted)]
        );
        assert!(matches!(
            run(Request::AccountsSuspend { address: "bob@localhost".into() }),
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            run(Request::AccountsSuspend { address: "nobody@localhost".into() }),
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            run(Request::AccountsShow { address: "bob@elsewhere".into() }),
            Err(AdminError::Invalid(_))
        ));
        let log = run(Request::Audit { limit: 100 }).expect("audit");
        let actions: Vec<&str> =
            log.as_array().expect("lines").iter().filter_map(|l| l["action"].as_str()).collect();
        assert_eq!(
            actions,
            vec![
                "invite.create",
                "account.suspend",
                "account.renew",
                "account.resume",
                "account.delete"
            ]
        );
        assert!(log.as_array().expect("lines").iter().all(|l| l["actor"] == "ops"));
        // The invite's code is never in the log.
        assert!(!log.to_string().contains(invite["code"].as_str().expect("code")));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", ""));
        assert_eq!(actor_name("\u{1b}[31mroot\n"), "[31mroot");
        assert_eq!(actor_name(""), "unknown");
    }
}
