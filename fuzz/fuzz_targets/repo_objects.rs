//! strata-repo's objects, read from a repository anyone may have written
//! to (a shared bucket): the config, a chunk, an index, a manifest. Any
//! bytes get an error, never a panic; the first byte picks the object
//! (bits 1-2) and whether the repository is encrypted (bit 0), with fixed
//! keys so that seeds made with them pass the MACs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_repo::config::Config;
use strata_repo::index::Index;
use strata_repo::keys::Keys;
use strata_repo::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let keys = Keys::from_parts([1; 32], [2; 32], (sel & 1 == 1).then_some([3; 32]));
    match (sel >> 1) & 3 {
        // Not the keys: a sealed config derives a key with Argon2 (by
        // design slow); its parameters are checked before that.
        0 => {
            let _ = Config::parse(rest, "config");
        }
        1 if rest.len() >= 32 => {
            let mut id = [0u8; 32];
            id.copy_from_slice(&rest[..32]);
            if let Ok(d) = strata_repo::chunk::decode(&keys, &id, &rest[32..], 4 << 20) {
                assert_eq!(keys.chunk_id(&d), id);
            }
        }
        2 => {
            if let Ok(ix) = Index::decode(&keys, rest, "i") {
                assert_eq!(ix.chunks.len() as u64, strata_repo::index::count(ix.size, ix.chunk_size));
            }
        }
        3 => {
            let _ = Manifest::decode(&keys, rest, "backups/x");
        }
        _ => {}
    }
});
