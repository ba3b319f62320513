//! Fixtures shared by the fuzz targets: fixed keys, so that targets can sign what the fuzzer
//! produces and reach the checks that come after a signature, and one MLS group.
#![forbid(unsafe_code)]

use std::sync::{Mutex, OnceLock};

use openmls_memory_storage::MemoryStorage;
use sotto_core::account::{IdentityKey, LinkSecret};
use sotto_core::mls::{self, DeviceKey, Identity, Provider};
use sotto_core::{Address, DeviceRef};

/// The identity key every signed fixture uses.
pub fn identity() -> IdentityKey {
    IdentityKey::from_secret(&[7u8; 32]).expect("a 32-byte secret")
}

/// The address fixtures belong to.
pub fn address() -> Address {
    "fuzz@example.org".parse().expect("address")
}

/// A fixed link secret.
pub fn link() -> LinkSecret {
    LinkSecret::parse("MFRG-GZDF-MZTW-Q2LK-NNWG-23TO-OA").expect("link code")
}

/// A member of a two-member group, ready to process what arrives for it.
pub struct Member {
    /// Its storage.
    pub provider: Provider<MemoryStorage>,
    /// The group's id.
    pub group: Vec<u8>,
}

fn identity_of(name: &str, id: u64) -> Identity {
    let device = DeviceRef {
        address: format!("{name}@example.org").parse().expect("address"),
        device_id: id,
    };
    Identity { device, key: DeviceKey::generate().expect("key") }
}

/// Bob, in a group alice made, with a spare key package on file (so a welcome can find it).
pub fn bob() -> &'static Mutex<Member> {
    static BOB: OnceLock<Mutex<Member>> = OnceLock::new();
    BOB.get_or_init(|| {
        let alice = identity_of("alice", 1);
        let bob = identity_of("bob", 2);
        let pa = Provider::new(MemoryStorage::default());
        let pb = Provider::new(MemoryStorage::default());
        alice.key.store(&pa).expect("store");
        bob.key.store(&pb).expect("store");
        let kps = mls::key_packages(&pb, &bob, mls::Suite::Classical, 2, false).expect("key packages");
        let group = mls::create_group(&pa, &alice, mls::Suite::Classical).expect("group");
        let kp = mls::validate_key_package(&pa, &kps[0], &bob.device.address, Some(2)).expect("kp");
        let out = mls::add_members(&pa, &group, &alice, &[kp]).expect("add");
        mls::merge_pending_commit(&pa, &group).expect("merge");
        mls::process(&pb, &out.welcome.expect("welcome")).expect("join");
        Mutex::new(Member { provider: pb, group })
    })
}
