//! The seeds of the `repo_objects` fuzz target (`fuzz/seeds/repo_objects`),
//! made with the target's fixed keys: each is read back by the decoder the
//! target feeds it to. With `STRATA_FUZZ_SEEDS=DIR` they are written there
//! (`fuzz/make-seeds` does).

use strata_repo::config::Config;
use strata_repo::index::Index;
use strata_repo::keys::Keys;
use strata_repo::manifest::{DiskEntry, Manifest};

#[test]
fn fuzz_seeds_are_valid_objects() {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for enc in [0u8, 1] {
        let keys = Keys::from_parts([1; 32], [2; 32], (enc == 1).then_some([3; 32]));
        let plain = Keys::from_parts([1; 32], [2; 32], None);
        let config = Config::new(&plain, None).unwrap().to_bytes();
        assert!(Config::parse(&config, "c").is_ok());
        seeds.push((format!("config-{enc}"), [vec![enc], config].concat()));
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 13) as u8).collect();
        let id = keys.chunk_id(&data);
        let obj = strata_repo::chunk::encode(&keys, &id, &data);
        assert_eq!(
            strata_repo::chunk::decode(&keys, &id, &obj, 4 << 20).unwrap(),
            data
        );
        seeds.push((
            format!("chunk-{enc}"),
            [vec![2 | enc], id.to_vec(), obj].concat(),
        ));
        let ix = Index {
            size: 9 << 20,
            chunk_size: 4 << 20,
            chunks: vec![Some(id), None, Some([5; 32])],
        };
        let b = ix.encode(&keys);
        assert_eq!(Index::decode(&keys, &b, "i").unwrap(), ix);
        seeds.push((format!("index-{enc}"), [vec![4 | enc], b].concat()));
        let m = Manifest {
            id: "x".into(),
            time: 1,
            host: "h".into(),
            label: "vm".into(),
            parent: None,
            disks: vec![DiskEntry {
                name: "vda".into(),
                size: 9 << 20,
                index: "indexes/x/vda".into(),
                index_mac: "00".into(),
                chunks: 3,
                zero_chunks: 1,
                read_chunks: 2,
                new_chunks: 2,
                new_bytes: 100,
            }],
            meta: serde_json::json!({"uuid": "u"}),
        };
        let b = m.encode(&keys);
        assert_eq!(Manifest::decode(&keys, &b, "backups/x").unwrap(), m);
        seeds.push((format!("manifest-{enc}"), [vec![6 | enc], b].concat()));
    }
    if let Ok(dir) = std::env::var("STRATA_FUZZ_SEEDS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
        }
    }
}
