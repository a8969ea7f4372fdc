//! What a writer does about garbage collections that ran while it wrote
//! (`strata_repo::gc`): one that deleted a chunk the backup names fails
//! the backup clearly and leaves no manifest; one still running is waited
//! for; with none, nothing is looked at again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::SeedableRng;
use strata_repo::manifest::Manifest;
use strata_repo::repo::new_backup_id;
use strata_repo::write::{write_disk, DiskSource};
use strata_repo::{Error, Repo};

/// Writes one disk of a backup (no parent) without committing it.
fn written(repo: &Repo, image: &dyn strata_image::Image) -> Manifest {
    let id = new_backup_id(std::time::SystemTime::now());
    let src = DiskSource {
        name: "vda",
        image,
        since: None,
        skipped: None,
        stop: None,
    };
    let disk = write_disk(repo, &id, &src, &|_| {}).unwrap();
    Manifest {
        id,
        time: 1,
        host: "test".into(),
        label: "vm".into(),
        parent: None,
        disks: vec![disk],
        meta: serde_json::Value::Null,
    }
}

/// A repository with one disk of random data written (not committed),
/// and the name of one of its chunks, deleted behind the writer's back.
fn with_a_chunk_gone(dir: &std::path::Path) -> (Repo, Manifest, String) {
    let repo = repo_at(&dir.join("repo"), None, true);
    let img = raw(&dir.join("d.raw"), SIZE);
    let mut model = vec![0u8; SIZE as usize];
    scribble(
        &mut rand::rngs::StdRng::seed_from_u64(7),
        img.as_ref(),
        &mut model,
    );
    let m = written(&repo, img.as_ref());
    let ix = repo.get_index(&m.disks[0]).unwrap();
    let id = ix.chunks.iter().flatten().next().expect("a chunk of data");
    let name = strata_repo::chunk::name(id);
    repo.backend().delete(&name).unwrap();
    (repo, m, name)
}

#[test]
fn a_collection_that_ran_meanwhile_makes_the_writer_look_again() {
    let d = tempfile::tempdir().unwrap();
    let (repo, m, gone) = with_a_chunk_gone(d.path());
    repo.backend().put("gc/0123456789abcdef.done", b"").unwrap();
    match repo.commit(&m) {
        Err(Error::Collected { object }) => assert_eq!(object, gone),
        other => panic!("{other:?}"),
    }
    assert!(repo.backup_ids().unwrap().is_empty(), "no manifest");
    let e = Error::Collected {
        object: gone.clone(),
    }
    .to_string();
    assert!(e.contains(&gone) && e.contains("run it again"), "{e}");
}

#[test]
fn with_no_collection_since_it_opened_the_writer_looks_at_nothing_again() {
    let d = tempfile::tempdir().unwrap();
    let (repo, m, _) = with_a_chunk_gone(d.path());
    // What it would miss (a chunk deleted by hand, not by a collection)
    // is verify's to find.
    repo.commit(&m).unwrap();
    assert_eq!(repo.backup_ids().unwrap(), vec![m.id.clone()]);
}

#[test]
fn a_collection_running_at_the_commit_is_waited_for() {
    let d = tempfile::tempdir().unwrap();
    let repo = repo_at(&d.path().join("repo"), None, true);
    let img = raw(&d.path().join("d.raw"), SIZE);
    let m = written(&repo, img.as_ref());
    let record = "gc/fedcba9876543210.running";
    repo.backend().put(record, b"").unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            repo.backend().put("gc/fedcba9876543210.done", b"").unwrap();
            repo.backend().delete(record).unwrap();
        });
        repo.commit(&m).unwrap();
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(repo.backup_ids().unwrap(), vec![m.id.clone()]);
}

#[test]
fn a_collection_leaves_a_done_record_and_no_running_one() {
    let d = tempfile::tempdir().unwrap();
    let repo = repo_at(&d.path().join("repo"), None, true);
    strata_repo::gc::collect(&repo, Duration::ZERO, &[], false).unwrap();
    let names = repo.backend().list("gc/").unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".done"), "{names:?}");
    // A dry run leaves none.
    strata_repo::gc::collect(&repo, Duration::ZERO, &[], true).unwrap();
    assert_eq!(repo.backend().list("gc/").unwrap(), names);
}
