//! Three writers, standing for three hosts, back their disks up into one
//! repository at once (each through its own handle on the folder) while a
//! fourth prunes every group to its two newest backups and collects the
//! garbage with a short grace period, over and over. No lock is taken.
//! Afterwards every backup still listed verifies and restores its
//! instant, each writer's newest is there, and a last collection leaves
//! exactly the chunks the remaining backups name (a model: the chunk ids
//! their contents make).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use rand::SeedableRng;
use strata_repo::gc::collect;
use strata_repo::manifest::Manifest;
use strata_repo::prune::{plan, Keep};
use strata_repo::verify::verify;

/// What a writer made: each backup, its instant and the chunks it names.
type Made = Vec<(Manifest, blake3::Hash, BTreeSet<String>)>;

#[test]
fn three_writers_and_a_pruner_at_once_leave_every_kept_backup_whole() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    repo_at(&root, None, true);
    let grace = Duration::from_secs(3);
    let done = AtomicBool::new(false);
    let (made, (removed, deleted)) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let (root, dir) = (&root, d.path());
                s.spawn(move || {
                    let repo = repo_at(root, None, false);
                    let img = raw(&dir.join(format!("w{w}.raw")), SIZE);
                    let mut model = vec![0u8; SIZE as usize];
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + w);
                    let mut made: Made = Vec::new();
                    for round in 0..8 {
                        let changed = scribble(&mut rng, img.as_ref(), &mut model);
                        let parent = made.last().map(|(m, ..)| m);
                        let changed = match parent {
                            Some(_) => changed,
                            None => vec![true; changed.len()],
                        };
                        let label = format!("host{w}");
                        // Slow enough for collections to fall inside.
                        let at = (round, Duration::from_millis(40));
                        let m = back_up_as(&repo, &label, img.as_ref(), at, parent, &changed);
                        made.push((m, blake3::hash(&model), ids_of(&repo, &model)));
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    made
                })
            })
            .collect();
        let pruner = s.spawn(|| {
            let repo = repo_at(&root, None, false);
            let keep = Keep {
                last: Some(2),
                ..Keep::default()
            };
            let (mut removed, mut deleted) = (0, 0);
            let mut last = false;
            loop {
                let all = repo.backups().unwrap();
                for dcs in plan(&all, &keep).iter().filter(|d| !d.kept()) {
                    repo.remove_backup(&dcs.id).unwrap();
                    removed += 1;
                }
                deleted += collect(&repo, grace, &[], false).unwrap().chunks_deleted;
                if last {
                    return (removed, deleted);
                }
                if done.load(Ordering::Relaxed) {
                    // Once more when the last removed chunks are old.
                    std::thread::sleep(grace + Duration::from_millis(500));
                    last = true;
                } else {
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
        });
        let made: Vec<Made> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Relaxed);
        (made, pruner.join().unwrap())
    });
    assert!(
        removed >= 15 && deleted > 0,
        "{removed} removed, {deleted} chunks deleted"
    );
    let repo = repo_at(&root, None, false);
    let listed: BTreeSet<String> = repo.backup_ids().unwrap().into_iter().collect();
    let mut want = BTreeSet::new();
    for (w, m) in made.iter().enumerate() {
        let newest = &m.last().unwrap().0.id;
        assert!(
            listed.contains(newest),
            "writer {w}: its newest backup is gone"
        );
        for (m, hash, ids) in m.iter().filter(|(m, ..)| listed.contains(&m.id)) {
            let got = restored(&repo, m, d.path()).unwrap();
            assert_eq!(blake3::hash(&got), *hash, "writer {w}: backup {}", m.id);
            want.extend(ids.iter().cloned());
        }
    }
    assert_eq!(listed.len(), 6, "{listed:?}");
    let report = verify(&repo, None, &|_| {}).unwrap();
    assert!(report.sound(), "{report:?}");
    collect(&repo, Duration::ZERO, &[], false).unwrap();
    let have: BTreeSet<String> = repo
        .backend()
        .list("chunks/")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(have, want);
}
