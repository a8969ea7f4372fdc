//! Backups of disks that change between rounds, checked against a model
//! (the disk's bytes at each backup's instant): every backup of an
//! incremental-forever series restores exactly its instant; damage to any
//! object is named by `verify` with the backups it affects, refused by a
//! restore of those, and leaves the others restorable; an encrypted
//! repository opens only with its key and shows nothing of the data.

mod common;

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use rand::{Rng, SeedableRng};
use strata_repo::backend::LocalDir;
use strata_repo::manifest::Manifest;
use strata_repo::repo::new_backup_id;
use strata_repo::verify::verify;
use strata_repo::write::{write_disk, DiskSource};
use strata_repo::{Error, Repo};

#[test]
fn ten_incremental_rounds_each_restore_their_instant() {
    for encrypted in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let key: Option<&[u8]> = encrypted.then_some(b"correct horse battery staple");
        let repo = repo_at(&d.path().join("repo"), key, true);
        let img = raw(&d.path().join("vda.raw"), SIZE);
        let mut model = vec![0u8; SIZE as usize];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7 + encrypted as u64);
        let mut backups: Vec<(Manifest, blake3::Hash)> = Vec::new();
        for round in 0..10 {
            let changed = scribble(&mut rng, img.as_ref(), &mut model);
            let parent = backups.last().map(|(m, _)| m);
            let m = back_up(&repo, img.as_ref(), round, parent, &changed);
            let disk = &m.disks[0];
            if round > 0 {
                // Only what changed was read.
                let want = changed.iter().filter(|&&c| c).count() as u64;
                assert!(
                    disk.read_chunks <= want,
                    "round {round}: read {} of {want}",
                    disk.read_chunks
                );
            }
            backups.push((m, blake3::hash(&model)));
            // Every backup so far restores its own instant.
            for (m, want) in &backups {
                let got = restored(&repo, m, d.path()).unwrap();
                assert_eq!(blake3::hash(&got), *want, "round {round}: backup {}", m.id);
            }
        }
        let report = verify(&repo, None, &|_| {}).unwrap();
        assert!(report.sound(), "{report:?}");
        assert_eq!(report.backups, 10);
        // Reopened from the folder, the same backups are listed.
        let again = repo_at(&d.path().join("repo"), key, false);
        let listed: Vec<String> = again.backups().unwrap().into_iter().map(|m| m.id).collect();
        let made: Vec<String> = backups.iter().map(|(m, _)| m.id.clone()).collect();
        assert_eq!(listed, made);
    }
}

/// A repository with three backups of a disk, the third not sharing the
/// first's data chunk 0: (repo folder, backups, their instants).
fn three_backups(dir: &Path) -> (Vec<Manifest>, Vec<blake3::Hash>) {
    let repo = repo_at(&dir.join("repo"), None, true);
    let img = raw(&dir.join("vda.raw"), SIZE);
    let mut model = vec![0u8; SIZE as usize];
    let mut out = (Vec::new(), Vec::new());
    for (n, fill) in [(0u64, 1u8), (1, 1), (2, 2)] {
        let data = vec![fill; CHUNK as usize];
        img.write_at(&data, 0).unwrap();
        model[..CHUNK as usize].copy_from_slice(&data);
        let tail = vec![3u8; 1000];
        img.write_at(&tail, SIZE - 1000).unwrap();
        model[(SIZE - 1000) as usize..].copy_from_slice(&tail);
        let m = back_up(&repo, img.as_ref(), n, None, &[]);
        out.0.push(m);
        out.1.push(blake3::hash(&model));
    }
    out
}

#[test]
fn damage_is_named_with_the_backups_it_affects_and_the_others_restore() {
    type Damage = fn(&Path, &[Manifest]) -> String;
    let cases: [(&str, Damage); 4] = [
        ("a flipped byte in a chunk", |repo, ms| {
            let ix = chunk_of(repo, &ms[0], 0);
            let mut b = std::fs::read(repo.join(&ix)).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 1;
            std::fs::write(repo.join(&ix), b).unwrap();
            ix
        }),
        ("a removed chunk", |repo, ms| {
            let ix = chunk_of(repo, &ms[0], 0);
            std::fs::remove_file(repo.join(&ix)).unwrap();
            ix
        }),
        ("a truncated index", |repo, ms| {
            let ix = ms[1].disks[0].index.clone();
            let b = std::fs::read(repo.join(&ix)).unwrap();
            std::fs::write(repo.join(&ix), &b[..b.len() - 7]).unwrap();
            ix
        }),
        ("a modified manifest", |repo, ms| {
            let name = Manifest::object(&ms[1].id);
            let b = std::fs::read(repo.join(&name)).unwrap();
            let text = String::from_utf8_lossy(&b).replace("\"label\":\"vm\"", "\"label\":\"vx\"");
            std::fs::write(repo.join(&name), text.as_bytes()).unwrap();
            name
        }),
    ];
    for (what, damage) in cases {
        let d = tempfile::tempdir().unwrap();
        let (ms, wants) = three_backups(d.path());
        let root = d.path().join("repo");
        let object = damage(&root, &ms);
        let repo = repo_at(&root, None, false);
        let report = verify(&repo, None, &|_| {}).unwrap();
        assert_eq!(report.problems.len(), 1, "{what}: {report:?}");
        let p = &report.problems[0];
        assert_eq!(p.object, object, "{what}");
        // Chunk 0 of the first two backups is the same chunk; the third's
        // is another. The index and manifest cases damage the second.
        let hit: Vec<String> = if object.starts_with("chunks/") {
            vec![ms[0].id.clone(), ms[1].id.clone()]
        } else {
            vec![ms[1].id.clone()]
        };
        assert_eq!(p.backups, hit, "{what}: {p:?}");
        for (m, want) in ms.iter().zip(&wants) {
            let r = repo
                .backup(&m.id)
                .and_then(|m| restored(&repo, &m, d.path()));
            if hit.contains(&m.id) {
                let e = r.expect_err(what);
                assert!(e.to_string().contains(&object), "{what}: {e}");
            } else {
                assert_eq!(blake3::hash(&r.unwrap()), *want, "{what}: {}", m.id);
            }
        }
    }
}

/// The object name of chunk `k` of backup `m`'s disk.
fn chunk_of(root: &Path, m: &Manifest, k: usize) -> String {
    let repo = repo_at(root, None, false);
    let ix = repo.get_index(&m.disks[0]).unwrap();
    strata_repo::chunk::name(&ix.chunks[k].unwrap())
}

#[test]
fn an_encrypted_repository_opens_only_with_its_key_and_hides_the_data() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = repo_at(&root, Some(b"the key"), true);
    let img = raw(&d.path().join("vda.raw"), SIZE);
    let pattern = b"STRATA-KNOWN-PLAINTEXT-PATTERN!";
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut data = Vec::new();
    while data.len() < CHUNK as usize {
        data.extend_from_slice(pattern);
        data.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>()));
    }
    img.write_at(&data[..CHUNK as usize], 0).unwrap();
    let m = back_up(&repo, img.as_ref(), 0, None, &[]);
    // No key, a wrong one: refused at once.
    let open = |k: Option<&[u8]>| Repo::open(Box::new(LocalDir::new(&root).unwrap()), k);
    assert!(matches!(open(None), Err(Error::NeedKey { .. })));
    assert!(matches!(
        open(Some(b"not the key")),
        Err(Error::WrongKey { .. })
    ));
    let repo = open(Some(b"the key")).unwrap();
    assert_eq!(repo.backups().unwrap(), vec![m]);
    // Nothing in any object shows the pattern, nor the disk's name.
    let mut todo = vec![root.clone()];
    let mut files = 0;
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files += 1;
                let b = std::fs::read(&p).unwrap();
                assert!(
                    !b.windows(pattern.len()).any(|w| w == pattern),
                    "{}",
                    p.display()
                );
                if !p.ends_with("config") && !p.to_string_lossy().contains("indexes/") {
                    assert!(!b.windows(4).any(|w| w == b"\"vda"), "{}", p.display());
                }
            }
        }
    }
    assert!(files >= 4, "{files} objects");
}

/// Sets every object's time under `root` `ago` back.
fn age_all(root: &Path, ago: Duration) {
    let when = std::time::SystemTime::now() - ago;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                let f = std::fs::File::options().write(true).open(e.path()).unwrap();
                f.set_modified(when).unwrap();
            }
        }
    }
}

#[test]
fn random_removals_and_collections_keep_exactly_what_the_rest_name() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = repo_at(&root, None, true);
    let img = raw(&d.path().join("vda.raw"), SIZE);
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    // The backups there: manifest, instant, the chunks it names.
    type Kept = (Manifest, blake3::Hash, std::collections::BTreeSet<String>);
    let mut kept: Vec<Kept> = Vec::new();
    let mut latest: Option<Manifest> = None;
    let (mut removals, mut deleted) = (0, 0);
    for step in 0..40u64 {
        match rng.gen_range(0..4) {
            0 | 1 => {
                let changed = scribble(&mut rng, img.as_ref(), &mut model);
                // Incremental from the latest backup while it is there.
                let parent = latest
                    .as_ref()
                    .filter(|l| kept.iter().any(|(m, ..)| m.id == l.id));
                let all = vec![true; changed.len()];
                let changed = if parent.is_some() { changed } else { all };
                let m = back_up(&repo, img.as_ref(), step, parent, &changed);
                kept.push((m.clone(), blake3::hash(&model), ids_of(&repo, &model)));
                latest = Some(m);
            }
            2 if !kept.is_empty() => {
                let k = rng.gen_range(0..kept.len());
                repo.remove_backup(&kept.remove(k).0.id).unwrap();
                removals += 1;
            }
            _ => {
                let c = strata_repo::gc::collect(&repo, Duration::ZERO, &[], false).unwrap();
                let want: std::collections::BTreeSet<String> = kept
                    .iter()
                    .flat_map(|(_, _, ids)| ids.iter().cloned())
                    .collect();
                let have: std::collections::BTreeSet<String> = repo
                    .backend()
                    .list("chunks/")
                    .unwrap()
                    .into_iter()
                    .collect();
                assert_eq!(have, want, "step {step}: {c:?}");
                assert_eq!(c.chunks_in_use, want.len() as u64);
                deleted += c.chunks_deleted;
                // No index of a removed backup is left.
                let indexes = repo.backend().list("indexes/").unwrap();
                assert_eq!(indexes.len(), kept.len(), "step {step}: {indexes:?}");
                for (m, want, _) in &kept {
                    let got = restored(&repo, m, d.path()).unwrap();
                    assert_eq!(blake3::hash(&got), *want, "step {step}: backup {}", m.id);
                }
            }
        }
    }
    // The run removed backups and collected their chunks.
    assert!(
        removals >= 5 && deleted >= 5,
        "{removals} removals, {deleted} chunks deleted"
    );
    let report = verify(&repo, None, &|_| {}).unwrap();
    assert!(report.sound(), "{report:?}");
}

#[test]
fn collection_spares_what_a_backup_in_progress_uses_within_the_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    let repo = repo_at(&root, None, true);
    let img = raw(&d.path().join("vda.raw"), SIZE);
    img.write_at(&vec![1u8; CHUNK as usize], 0).unwrap();
    let first = back_up(&repo, img.as_ref(), 0, None, &[]);
    img.write_at(&vec![2u8; CHUNK as usize], 0).unwrap();
    let second = back_up(&repo, img.as_ref(), 1, None, &[]);
    age_all(&root, Duration::from_secs(7200));
    repo.remove_backup(&first.id).unwrap();
    // Within the grace period nothing goes; a dry run says what would.
    let hour = Duration::from_secs(3600);
    let c = strata_repo::gc::collect(&repo, Duration::from_secs(3 * 3600), &[], false).unwrap();
    assert_eq!((c.chunks_deleted, c.chunks_in_grace), (0, 1), "{c:?}");
    let dry = strata_repo::gc::collect(&repo, hour, &[], true).unwrap();
    assert_eq!(dry.chunks_deleted, 1, "{dry:?}");
    assert_eq!(repo.backend().list("chunks/").unwrap().len(), 2);
    // A backup in progress finds the removed backup's chunk there and
    // uses it: it is touched, and the collection spares it.
    let reused = repo.put_chunk(&vec![1u8; CHUNK as usize]).unwrap();
    assert_eq!(reused.written, 0);
    let c = strata_repo::gc::collect(&repo, hour, &[], false).unwrap();
    assert_eq!((c.chunks_deleted, c.chunks_in_grace), (0, 1), "{c:?}");
    // So does an incremental one taking a chunk from its parent's index
    // unread, the parent removed meanwhile; the unused one, old now, goes.
    age_all(&root, Duration::from_secs(7200));
    let pix = repo.get_index(&second.disks[0]).unwrap();
    let unchanged = |_: u64| false;
    let src = DiskSource {
        name: "vda",
        image: img.as_ref(),
        since: Some((&pix, &unchanged as &(dyn Fn(u64) -> bool + Sync))),
        skipped: None,
        stop: None,
    };
    let id = new_backup_id(UNIX_EPOCH + Duration::from_secs(1_800_000_002));
    let disk = write_disk(&repo, &id, &src, &|_| {}).unwrap();
    assert_eq!(disk.read_chunks, 0);
    repo.remove_backup(&second.id).unwrap();
    let c = strata_repo::gc::collect(&repo, hour, &[], false).unwrap();
    assert_eq!((c.chunks_deleted, c.chunks_in_grace), (1, 1), "{c:?}");
    let third = Manifest {
        id,
        time: 2,
        host: "test".into(),
        label: "vm".into(),
        parent: None,
        disks: vec![disk],
        meta: serde_json::Value::Null,
    };
    repo.commit(&third).unwrap();
    assert_eq!(
        restored(&repo, &third, d.path()).unwrap()[..CHUNK as usize],
        vec![2u8; CHUNK as usize][..]
    );
    // A killed writer's leftovers go once old; what a backup names stays.
    std::fs::write(root.join("tmp/999.1"), b"half").unwrap();
    age_all(&root, Duration::from_secs(7200));
    let c = strata_repo::gc::collect(&repo, hour, &[], false).unwrap();
    assert_eq!((c.chunks_deleted, c.leftovers_deleted), (0, 1), "{c:?}");
    assert_eq!(repo.backend().list("chunks/").unwrap().len(), 1);
    assert!(verify(&repo, None, &|_| {}).unwrap().sound());
}
