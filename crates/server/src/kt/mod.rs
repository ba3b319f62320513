//! Key transparency: an append-only, verifiable directory (AKD, the library behind
//! WhatsApp's key transparency) mapping each address to its identity key and device-list
//! commitment ([`sotto_core::kt::commitment`]).
//!
//! Every change of a device list is published; changes arriving together share one epoch
//! (the publisher drains everything waiting before it publishes, as the store's writer does
//! with submissions). Each epoch's root hash is signed with the server's KT key, naming the
//! previous root. Clients verify lookup proofs against signed roots, monitor their own key
//! history, and anyone can audit that the directory only ever grew.
//!
//! AKD's API is async but this storage is SQLite, so every directory operation runs on a
//! blocking thread.

mod storage;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, Directory, HistoryParams};
use sotto_core::account::IdentityKey;
use sotto_core::kt::{Config, Root};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

pub use storage::{KtStorage, RootRow};

use crate::Error;

/// The VRF key that hides labels in the tree.
#[derive(Clone)]
struct Vrf(Arc<Zeroizing<Vec<u8>>>);

#[async_trait::async_trait]
impl VRFKeyStorage for Vrf {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

type Dir = Directory<Config, KtStorage, Vrf>;

/// A change waiting to be published, and who waits for its epoch.
type Pending = (Vec<u8>, Vec<u8>, oneshot::Sender<Result<u64, String>>);

/// Most epochs one audit proof may span.
pub const MAX_AUDIT_SPAN: u64 = 32;

/// The server's key directory.
#[derive(Clone)]
pub struct KeyDirectory {
    dir: Dir,
    storage: KtStorage,
    key: Arc<IdentityKey>,
    vrf_public: Vec<u8>,
    clock: crate::Clock,
    publish: mpsc::UnboundedSender<Pending>,
    /// Held for writing while an epoch is published and its root signed, so a proof is never
    /// made for an epoch whose signed root is not stored yet.
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectory").field("key", &self.key).finish_non_exhaustive()
    }
}

fn kt_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("key transparency: {e}"))
}

/// Runs a directory future on a blocking thread (the storage blocks).
async fn blocking<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Error> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(f)).await.map_err(kt_err)
}

impl KeyDirectory {
    /// Opens the directory in `data_dir` (`kt.db`, with the VRF key `kt-vrf.key` and the
    /// signing key `kt.key`, created on first use) and starts its publisher.
    pub async fn open(data_dir: &Path, clock: crate::Clock) -> Result<Self, Error> {
        let key = IdentityKey::from_secret(&crate::secret_file(&data_dir.join("kt.key"))?)
            .map_err(kt_err)?;
        let vrf = Vrf(Arc::new(crate::secret_file(&data_dir.join("kt-vrf.key"))?));
        crate::private_file(&data_dir.join("kt.db"))?;
        let storage = KtStorage::open(&data_dir.join("kt.db")).map_err(kt_err)?;
        let manager = StorageManager::new_no_cache(storage.clone());
        let (dir, vrf_public) = blocking(async move {
            let public = vrf.get_vrf_public_key().await.map_err(kt_err)?;
            let dir =
                Dir::new(manager, vrf, AzksParallelismConfig::disabled()).await.map_err(kt_err)?;
            Ok::<_, Error>((dir, public.as_bytes().to_vec()))
        })
        .await??;
        let (publish, queue) = mpsc::unbounded_channel();
        let kd = KeyDirectory {
            dir,
            storage,
            key: Arc::new(key),
            vrf_public,
            clock,
            publish,
            gate: Arc::new(tokio::sync::RwLock::new(())),
        };
        let storage = kd.storage.clone();
        if blocking(async move { storage.roots(0, 1) }).await?.map_err(kt_err)?.is_empty() {
            kd.record_root().await?;
        }
        tokio::spawn(kd.clone().publisher(queue));
        Ok(kd)
    }

    /// The KT signing key (public).
    pub fn signing_key(&self) -> Vec<u8> {
        self.key.public()
    }

    /// The VRF public key.
    pub fn vrf_key(&self) -> &[u8] {
        &self.vrf_public
    }

    /// Signs and stores the current root.
    async fn record_root(&self) -> Result<RootRow, Error> {
        let (dir, storage, key) = (self.dir.clone(), self.storage.clone(), self.key.clone());
        blocking(async move {
            let hash = dir.get_epoch_hash().await.map_err(kt_err)?;
            let previous = match hash.0.checked_sub(1) {
                Some(p) => storage.roots(p, 1).map_err(kt_err)?.pop().map(|r| r.hash),
                None => None,
            }
            .unwrap_or_default();
            let root = Root { epoch: hash.0, hash: hash.1.to_vec(), previous, time: 0 };
            let row = RootRow {
                signature: root.sign(&key),
                epoch: root.epoch,
                hash: root.hash,
                previous: root.previous,
                time: 0,
            };
            storage.put_root(&row, sotto_core::unix_now()).map_err(kt_err)?;
            Ok(row)
        })
        .await?
    }

    /// Publishes `value` for `label` and returns the epoch that holds it. Changes made
    /// meanwhile are published in the same epoch.
    pub async fn publish(&self, label: Vec<u8>, value: Vec<u8>) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        self.publish.send((label, value, reply)).map_err(|_| kt_err("the publisher stopped"))?;
        answer.await.map_err(|_| kt_err("the publisher stopped"))?.map_err(kt_err)
    }

    async fn publisher(self, mut queue: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = queue.try_recv() {
                batch.push(more);
            }
            // One value per label: the last one asked for.
            let mut updates: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for (label, value, _) in &batch {
                updates.insert(label.clone(), value.clone());
            }
            let result = self.publish_now(updates).await.map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "publishing to the key directory failed");
            }
            for (_, _, reply) in batch {
                let _ = reply.send(result.clone());
            }
        }
    }

    async fn publish_now(&self, updates: HashMap<Vec<u8>, Vec<u8>>) -> Result<u64, Error> {
        let _publishing = self.gate.write().await;
        let started = std::time::Instant::now();
        let dir = self.dir.clone();
        let updates: Vec<(AkdLabel, AkdValue)> =
            updates.into_iter().map(|(l, v)| (AkdLabel(l), AkdValue(v))).collect();
        let hash = blocking(async move { dir.publish(updates).await }).await?.map_err(kt_err)?;
        let row = self.record_root().await?;
        debug_assert_eq!(row.epoch, hash.0);
        let metrics = &crate::metrics::METRICS;
        metrics.kt_publish_seconds.observe(started.elapsed().as_secs_f64());
        metrics.kt_epoch.store(hash.0, std::sync::atomic::Ordering::Relaxed);
        Ok(hash.0)
    }

    /// Publishes every label whose latest value differs from `wanted` (after a crash between
    /// storing a device list and publishing it). Returns how many were published.
    pub async fn reconcile(&self, wanted: HashMap<Vec<u8>, Vec<u8>>) -> Result<usize, Error> {
        let storage = self.storage.clone();
        let current = blocking(async move { storage.latest_values() }).await?.map_err(kt_err)?;
        let stale: HashMap<Vec<u8>, Vec<u8>> =
            wanted.into_iter().filter(|(l, v)| current.get(l) != Some(v)).collect();
        let n = stale.len();
        if n > 0 {
            // Through the publisher, so it never runs two publishes at once.
            let mut waits = Vec::new();
            for (label, value) in stale {
                let (reply, answer) = oneshot::channel();
                self.publish
                    .send((label, value, reply))
                    .map_err(|_| kt_err("publisher stopped"))?;
                waits.push(answer);
            }
            for w in waits {
                w.await.map_err(|_| kt_err("publisher stopped"))?.map_err(kt_err)?;
            }
        }
        Ok(n)
    }

    /// The latest signed root.
    pub async fn latest_root(&self) -> Result<RootRow, Error> {
        let storage = self.storage.clone();
        blocking(async move { storage.latest_root() })
            .await?
            .map_err(kt_err)?
            .ok_or_else(|| kt_err("no root yet"))
    }

    /// Signed roots from epoch `from`.
    pub async fn roots(&self, from: u64, limit: u32) -> Result<Vec<RootRow>, Error> {
        let storage = self.storage.clone();
        blocking(async move { storage.roots(from, limit) }).await?.map_err(kt_err)
    }

    /// A lookup proof (JSON) for `label` and the root it verifies against, vouched for as the
    /// newest now; `None` if the label was never published.
    pub async fn lookup(&self, label: Vec<u8>) -> Result<Option<(RootRow, Vec<u8>)>, Error> {
        let _stable = self.gate.read().await;
        let (dir, storage) = (self.dir.clone(), self.storage.clone());
        let found = blocking(async move { with_root(&storage, dir.lookup(AkdLabel(label)).await) })
            .await??;
        Ok(found.map(|(root, proof)| (self.vouch(root), proof)))
    }

    /// A complete key-history proof (JSON) for `label` and its root, vouched for as the
    /// newest now.
    pub async fn history(&self, label: Vec<u8>) -> Result<Option<(RootRow, Vec<u8>)>, Error> {
        let _stable = self.gate.read().await;
        let (dir, storage) = (self.dir.clone(), self.storage.clone());
        let found = blocking(async move {
            with_root(&storage, dir.key_history(&AkdLabel(label), HistoryParams::Complete).await)
        })
        .await??;
        Ok(found.map(|(root, proof)| (self.vouch(root), proof)))
    }

    /// Signs `root` again with the time now: the directory's statement that this was its
    /// newest epoch at that time (taken under the read gate, so no later epoch exists yet).
    /// Clients refuse roots vouched for too long ago, so a view that was frozen or replayed
    /// does not reach them; a root signed this way costs one signature, where publishing an
    /// empty epoch every few minutes would grow the directory (and every audit) forever.
    fn vouch(&self, row: RootRow) -> RootRow {
        let time = self.clock.now_secs().max(1);
        let root = Root { epoch: row.epoch, hash: row.hash, previous: row.previous, time };
        RootRow {
            signature: root.sign(&self.key),
            epoch: root.epoch,
            hash: root.hash,
            previous: root.previous,
            time,
        }
    }

    /// An append-only proof (JSON) from epoch `start` to `end`.
    pub async fn audit(&self, start: u64, end: u64) -> Result<Vec<u8>, Error> {
        let _stable = self.gate.read().await;
        let dir = self.dir.clone();
        let proof = blocking(async move { dir.audit(start, end).await }).await?.map_err(kt_err)?;
        serde_json::to_vec(&proof).map_err(kt_err)
    }
}

/// A proof as JSON with the signed root of its epoch; `None` for an unknown label.
fn with_root<P: serde::Serialize>(
    storage: &KtStorage,
    found: Result<(P, akd::EpochHash), akd::errors::AkdError>,
) -> Result<Option<(RootRow, Vec<u8>)>, Error> {
    let (proof, hash) = match found {
        Ok(found) => found,
        Err(akd::errors::AkdError::Storage(akd::errors::StorageError::NotFound(_))) => {
            return Ok(None);
        }
        Err(e) => return Err(kt_err(e)),
    };
    let root = storage
        .roots(hash.0, 1)
        .map_err(kt_err)?
        .into_iter()
        .find(|r| r.epoch == hash.0)
        .ok_or_else(|| kt_err(format!("no signed root for epoch {}", hash.0)))?;
    Ok(Some((root, serde_json::to_vec(&proof).map_err(kt_err)?)))
}
