//! Test helpers: the key and vectors of cephx.md, a seeded random source.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_core::{CryptoRng, RngCore};

use crate::auth::crypto::CryptoKey;
use crate::encoding::UTime;

/// The result_bl of the live exchange in cephx.md 10 (740 bytes, hex).
pub(crate) const LIVE_RESULT_BL: &str = "
00010000000001010000002000000001300000002663be2b0e1537d860b9603f99a2bb156c5e43a57e44c7947a2190686469f0f6
ce574b2c0465bad8de0d139f027f4c3c006d00000001020000000000000060000000f16094aef4ae94e1d17a9d456200ff876f318f
400e7c7583db5f9c4891c7cf512b53fc5ed79bc378387b1d45089c33e9c8e2fc5818af09260cdad5777db3bba9898181d1d2b47257
889202daa4320a2cc0b26bd34dfe66ee733dfc0f6d73893a00000000260200000103000000010000000130000000f0f4e1801b9cbb
8416c076a233c6294f9a60abce6a27fc8b0a67df2038d23f0a142cfe0b9b9577f6783e8227223d17fb006d00000001020000000000
0000600000001f95247d79096e69f3bc71409c53e9904222cb8655ca295d146362b85dcdbde29ef709b2a8c8b629a6445f7c014861
49a965a2350a9be03679bb6d291950b2b03c0f9de97768e285d2f39f8bede6b31f145bf47b0960101f44df14cf299bc17b04000000
0130000000f0f4e1801b9cbb8416c076a233c6294feb0dd68ba2fc326509acfcadf953eee6cda686c469c7ca342f68e5cf8b266244
007d000000010200000000000000700000005c58672e56c30166150e4d1569639a186273309b826a9c493d53c257e540e7d365d0eb
813f0b1e2c7e4901d234c9b26be5fec836fb57e1331bc2e5b043c723f52054fa617d388f38e02ec44d77775aea2609e53cd8c73fbe
6a4c4d32cf0fceeb03a1e9a9428b2bb0b46aff297e7bff0b100000000130000000f0f4e1801b9cbb8416c076a233c6294fa91eaa92
d0676e60e67c7ae2f669b94be83cb2e1930622f60fa345d24e2e2c70007d0000000102000000000000007000000095c6f82ab9c775
d19584ca3029bfbbadd9f34750e462e3b4c35c31c1560b88e21229c788d3411b010468ac116ce1fca06fe0530f36d81d477cdc0753
df31e2085be4c4df186d0cc7b1f891714894751eb7cd89d3c8c8fc29c800a9f67bc7ba3fe51d6f973b81237da1aeb572a60315d2";

/// Hex (whitespace ignored) to bytes.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0)).collect()
}

/// Key K of cephx.md 11: secret 00..0f, created (0x5f5e1000, 0).
pub(crate) fn key_k() -> CryptoKey {
    let mut secret = [0u8; 16];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = i as u8;
    }
    CryptoKey::new(UTime::new(0x5f5e_1000, 0), secret)
}

/// A seeded (reproducible) random source for tests.
pub(crate) struct TestRng(StdRng);

impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        TestRng(StdRng::seed_from_u64(seed))
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl CryptoRng for TestRng {}

/// A [`super::RngSource`] handing out seeded generators `seed`, `seed + 1`, ...
pub(crate) fn rng_source(seed: u64) -> super::RngSource {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(seed));
    std::sync::Arc::new(move || {
        Box::new(TestRng::new(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))) as _
    })
}
