//! The cryptography under the MLS seam: RustCrypto for everything but X-Wing, libcrux for
//! X-Wing's key encapsulation.
//!
//! Why two: the RustCrypto provider (`openmls_rust_crypto`) does not offer the X-Wing suite;
//! libcrux (`openmls_libcrux_crypto`) does, but its portable SHA-256, HKDF and Ed25519 run 2–4×
//! slower than RustCrypto's here (measured: `sotto-bench` crypto figures), and every message
//! hashes and signs. So each primitive goes to the faster library that has it.
//!
//! And a guard: libcrux-kem 0.0.9 (the version `hpke-rs-libcrux` 0.7 pins, which
//! `openmls_libcrux_crypto` 0.4 needs) slices an X-Wing public key at byte 1184 before checking
//! its length, so a shorter key panics. Such keys come from outside — a key package's init key,
//! a leaf or parent node in a commit's update path or a welcome's ratchet tree — and a signed
//! key package or commit from a malicious member can carry one. Every X-Wing public key's
//! length is checked here first. libcrux-kem 0.0.10 checks it itself; once the provider moves
//! to it, the guard only repeats that check.

use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};

/// Length of an X-Wing public key: ML-KEM-768's (1184) and X25519's (32).
const X_WING_PUBLIC_KEY_LEN: usize = 1216;

/// The X-Wing suite, the one thing libcrux does here.
const X_WING: Ciphersuite = Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;

/// RustCrypto, and libcrux for X-Wing with every public key's length checked first.
pub struct Crypto {
    pub(super) rust: RustCrypto,
    libcrux: CryptoProvider,
}

impl Crypto {
    /// Both libraries, their random generators seeded from the operating system.
    pub(super) fn new() -> Result<Crypto, CryptoError> {
        Ok(Crypto { rust: RustCrypto::default(), libcrux: CryptoProvider::new()? })
    }

    /// The library for HPKE with `config`.
    fn hpke(&self, config: &HpkeConfig) -> &dyn OpenMlsCrypto {
        if x_wing(config) { &self.libcrux } else { &self.rust }
    }
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto(RustCrypto, libcrux for X-Wing)")
    }
}

/// Whether `pk` has the length of a public key of `suite`'s KEM.
pub(super) fn public_key_fits(suite: Ciphersuite, pk: &[u8]) -> bool {
    match suite.hpke_kem_algorithm() {
        HpkeKemType::XWingKemDraft6 => pk.len() == X_WING_PUBLIC_KEY_LEN,
        HpkeKemType::DhKem25519 => pk.len() == 32,
        _ => true,
    }
}

fn x_wing(config: &HpkeConfig) -> bool {
    matches!(config.0, HpkeKemType::XWingKemDraft6)
}

/// Whether `pk` can be a public key of `config`'s KEM (only X-Wing needs the check: the other
/// KEMs' decoders check lengths themselves).
fn fits(config: &HpkeConfig, pk: &[u8]) -> bool {
    !x_wing(config) || pk.len() == X_WING_PUBLIC_KEY_LEN
}

impl OpenMlsCrypto for Crypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if ciphersuite == X_WING {
            self.libcrux.supports(ciphersuite)
        } else {
            self.rust.supports(ciphersuite)
        }
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        let mut all = self.rust.supported_ciphersuites();
        all.push(X_WING);
        all
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rust.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.rust.signature_key_gen(alg)
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.rust.verify_signature(alg, data, pk, signature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rust.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        if !fits(&config, pk_r) {
            return Err(CryptoError::SenderSetupError);
        }
        self.hpke(&config).hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.hpke(&config).hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        if !fits(&config, pk_r) {
            return Err(CryptoError::SenderSetupError);
        }
        self.hpke(&config).hpke_setup_sender_and_export(
            config,
            pk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.hpke(&config).hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.hpke(&config).derive_hpke_keypair(config, ikm)
    }
}
