//! Homes: registering an account, opening a home, its passphrase and keyring.

use std::path::Path;

use sotto_core::account::{DeviceList, IdentityKey, ListedDevice, RecoveryKey};
use sotto_core::mls::{DeviceKey, Identity};
use sotto_core::{Address, DeviceRef, auth, unix_now};
use sotto_proto::{self as proto, Bytes};

use std::sync::Arc;

use crate::api::Api;
use crate::db::{self, AccountRow};
use crate::http::HttpConnector;
use crate::transport::{Connector, SystemClock};
use crate::*;

impl Client {
    /// Creates an account on `server`: a new identity key and recovery key, this home's device
    /// key, version 1 of the signed device list; then publishes key packages.
    pub fn register(
        home: &Path,
        server: &str,
        address: &str,
        options: &RegisterOptions,
    ) -> Result<Registered, Error> {
        Self::register_via(&HttpConnector, home, server, address, options)
    }

    /// [`Client::register`] through the transports `connector` makes.
    pub fn register_via(
        connector: &dyn Connector,
        home: &Path,
        server: &str,
        address: &str,
        options: &RegisterOptions,
    ) -> Result<Registered, Error> {
        let (address, api, info) =
            Self::prepare_home(connector, home, server, address, options.ca_cert.as_deref())?;
        let operator_key = match (options.managed, info.operator_key.clone()) {
            (false, _) => None,
            (true, Some(k)) if k.0.len() == 32 => Some(k.0),
            (true, _) => {
                return Err(Error::Invalid(format!(
                    "{} has no operator key; an unmanaged account needs no --managed",
                    api.base()
                )));
            }
        };
        let identity = IdentityKey::generate()?;
        let recovery = RecoveryKey::generate()?;
        let key = DeviceKey::generate()?;
        let now = unix_now();
        let name = options.device_name.as_deref().map(|n| identity.seal_name(n)).transpose()?;
        let list = DeviceList::first(
            address.clone(),
            &identity,
            recovery.public(),
            operator_key.clone(),
            ListedDevice { key: key.public().to_vec(), added_at: now, name },
            now,
        );
        let signed = list.sign(&identity);
        let signature = key.sign(&auth::registration_payload(&address, key.public()))?;
        let reg: proto::RegisterResponse = api.post(
            "/v1/register",
            &proto::RegisterRequest {
                address: address.to_string(),
                invite: options.invite.clone(),
                device_key: Bytes(key.public().to_vec()),
                signature: Bytes(signature),
                device_list: devices::to_proto(&signed),
            },
            None,
        )?;
        let client = Self::create_home(
            home,
            api,
            Identity { device: DeviceRef { address, device_id: reg.device_id }, key },
            identity,
            (&signed, list.version),
            kt_keys(&info.kt),
            &options.passphrase,
        )?;
        Ok(Registered {
            client,
            recovery_key: recovery.to_text(),
            operator_key: operator_key.map(hex::encode),
        })
    }

    /// Checks that `home` is free and that `server` hosts `address`.
    pub(crate) fn prepare_home(
        connector: &dyn Connector,
        home: &Path,
        server: &str,
        address: &str,
        ca_cert: Option<&str>,
    ) -> Result<(Address, Api, proto::ServerInfo), Error> {
        if db::exists(home) || vault::exists(home) {
            return Err(Error::AlreadyRegistered(home.display().to_string()));
        }
        let address: Address = address.parse()?;
        let api = Api::new(connector.connect(server, ca_cert)?, Arc::new(SystemClock), ca_cert);
        let info: proto::ServerInfo = api.get("/v1/info", None)?;
        if kt_keys(&info.kt).is_none() {
            // Without a directory to check them against, every key the server hands out
            // would have to be taken on its word: fail closed.
            return Err(Error::Untrusted(format!(
                "{} publishes no key directory (or a malformed one), so the keys it hands out \
                 for other people could not be checked; refusing to set up a home on it",
                api.base()
            )));
        }
        if info.domain != address.domain() {
            return Err(Error::Invalid(format!(
                "{} hosts @{} addresses; {address} belongs elsewhere",
                api.base(),
                info.domain
            )));
        }
        Ok((address, api, info))
    }

    /// Writes a new home for a device the server now knows, and publishes key packages.
    pub(crate) fn create_home(
        home: &Path,
        api: Api,
        me: Identity,
        identity: IdentityKey,
        (list, version): (&sotto_core::account::SignedList, u64),
        kt_keys: Option<(Vec<u8>, Vec<u8>)>,
        passphrase: &str,
    ) -> Result<Client, Error> {
        let key = vault::create(home, passphrase)?;
        let conn = db::open(home, true, &key)?;
        let account = AccountRow {
            address: me.device.address.to_string(),
            device_id: me.device.device_id,
            server: api.base().to_string(),
            ca_cert: api.ca_path().map(str::to_owned),
            device_key: me.key.public().to_vec(),
            identity_secret: Some(identity.secret()),
            linked_at: unix_now(),
            kt_keys,
            kt_since: 0,
        };
        {
            let tx = begin(&conn)?;
            me.key.store(&db::provider(&tx))?;
            db::insert_account(&tx, &account)?;
            db::pin_list(&tx, &account.address, version, list)?;
            tx.commit()?;
        }
        let mut client = Client::assemble(home, conn, account, me, identity, api);
        // The directory must already show this device's list; from this epoch on, every
        // value for this address must carry this identity key.
        let me = client.me.device.address.clone();
        client.verified_list(&me)?;
        client.account.kt_since = client.kt_epoch()?;
        client.conn.execute(
            "UPDATE account SET kt_since = ?1 WHERE id = 1",
            [client.account.kt_since as i64],
        )?;
        client.replenish_key_packages()?;
        Ok(client)
    }

    pub(crate) fn assemble(
        home: &Path,
        conn: Connection,
        account: AccountRow,
        me: Identity,
        identity: IdentityKey,
        api: Api,
    ) -> Client {
        Client {
            home: home.to_path_buf(),
            conn,
            account,
            me,
            identity,
            api,
            touched: Default::default(),
            queue_key: Default::default(),
        }
    }

    /// Opens the account in `home`, unlocking its database with `passphrase`. A home that
    /// keeps its key in the OS keyring and whose keyring lost it (a reboot) gets it back.
    pub fn open(home: &Path, passphrase: &str) -> Result<Client, Error> {
        Client::open_via(&HttpConnector, home, passphrase)
    }

    /// [`Client::open`] through the transports `connector` makes.
    pub fn open_via(
        connector: &dyn Connector,
        home: &Path,
        passphrase: &str,
    ) -> Result<Client, Error> {
        Client::refuse_unencrypted(home)?;
        let key = vault::unlock(home, passphrase)?;
        if let Ok(store) = keyring::system() {
            // A convenience only (and nothing for a home that does not use the keyring): the
            // home is open either way.
            let _ = vault::keyring_refill(home, &key, &*store);
        }
        Client::open_with(connector, home, &key)
    }

    /// Opens the account in `home` with the database key the OS keyring holds for it
    /// (`sotto keyring enable`). `None` if the home does not use the keyring, or the keyring
    /// cannot be reached or no longer holds the key: open it with the passphrase then.
    pub fn open_from_keyring(home: &Path) -> Result<Option<Client>, Error> {
        Client::refuse_unencrypted(home)?;
        if !vault::exists(home) {
            return Err(Error::NotRegistered(home.display().to_string()));
        }
        let Ok(store) = keyring::system() else { return Ok(None) };
        match vault::keyring_unlock(home, &*store) {
            Ok(Some(key)) => Client::open_with(&HttpConnector, home, &key).map(Some),
            Ok(None) | Err(Error::Keyring(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps `home`'s database key in the OS keyring too, so that it opens without the
    /// passphrase (which keeps working). Returns the home's keyring status.
    pub fn enable_keyring(home: &Path, passphrase: &str) -> Result<KeyringStatus, Error> {
        let store = keyring::system()?;
        vault::keyring_enable(home, passphrase, &*store)?;
        Client::keyring_status(home)
    }

    /// Deletes `home`'s key from the OS keyring: the passphrase is needed again. Returns
    /// whether the home used the keyring.
    pub fn disable_keyring(home: &Path) -> Result<bool, Error> {
        let store = keyring::system().ok();
        vault::keyring_disable(home, store.as_deref())
    }

    /// Whether `home` uses the OS keyring, and whether the keyring holds its key now.
    pub fn keyring_status(home: &Path) -> Result<KeyringStatus, Error> {
        let store = keyring::system();
        let (enabled, holds_key) = vault::keyring_state(home, store.as_deref().ok())?;
        Ok(KeyringStatus {
            enabled,
            holds_key,
            keyring: match &store {
                Ok(s) => s.name().to_string(),
                Err(e) => e.to_string(),
            },
        })
    }

    pub(crate) fn refuse_unencrypted(home: &Path) -> Result<(), Error> {
        if db::exists(home) && !vault::exists(home) {
            return Err(Error::Invalid(format!(
                "{} was made by an older sotto that did not encrypt it; register a new home",
                home.display()
            )));
        }
        Ok(())
    }

    pub(crate) fn open_with(
        connector: &dyn Connector,
        home: &Path,
        key: &vault::HomeKey,
    ) -> Result<Client, Error> {
        let conn = db::open(home, false, key)?;
        let account =
            db::account(&conn)?.ok_or_else(|| Error::NotRegistered(home.display().to_string()))?;
        let key = DeviceKey::load(&db::provider(&conn), &account.device_key)
            .ok_or(Error::Io("the device key is missing from the local database".into()))?;
        let identity = match &account.identity_secret {
            Some(secret) => IdentityKey::from_secret(secret)?,
            None => {
                return Err(Error::Invalid(format!(
                    "{} holds an account made before identity keys; register a new one",
                    home.display()
                )));
            }
        };
        let address: Address = account.address.parse()?;
        let me = Identity { device: DeviceRef { address, device_id: account.device_id }, key };
        let api = Api::new(
            connector.connect(&account.server, account.ca_cert.as_deref())?,
            Arc::new(SystemClock),
            account.ca_cert.as_deref(),
        );
        let client = Client::assemble(home, conn, account, me, identity, api);
        client.purge_expired()?;
        Ok(client)
    }

    /// Uses `clock` for everything that waits or stamps (tests drive time with a clock of
    /// their own).
    pub fn with_clock(mut self, clock: Arc<dyn crate::transport::Clock>) -> Client {
        self.api.set_clock(clock);
        self
    }

    /// The time on this client's clock (Unix milliseconds).
    pub(crate) fn now_ms(&self) -> u64 {
        self.api.clock().now_ms()
    }

    /// The account this home holds.
    pub fn account(&self) -> AccountInfo {
        AccountInfo {
            address: self.account.address.clone(),
            device_id: self.account.device_id,
            server: self.account.server.clone(),
            device_key: hex::encode(&self.account.device_key),
            identity_key: hex::encode(self.identity.public()),
            operator_key: self.operator_key().map(hex::encode),
        }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Protects `home`'s database key with a new passphrase. Only the wrapped key is
    /// rewritten; a wrong `old` passphrase changes nothing.
    pub fn change_passphrase(home: &Path, old: &str, new: &str) -> Result<(), Error> {
        vault::change(home, old, new)
    }
}
