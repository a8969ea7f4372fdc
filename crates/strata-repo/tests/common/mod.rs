//! Helpers of strata-repo's tests: raw disk images, repositories, and
//! backups of one disk checked against a model of its bytes.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::Rng;
use strata_image::{ChainOptions, Image};
use strata_repo::backend::LocalDir;
use strata_repo::index::Index;
use strata_repo::manifest::Manifest;
use strata_repo::repo::new_backup_id;
use strata_repo::write::{restore_disk, write_disk, DiskSource};
use strata_repo::{Error, Repo};

pub const CHUNK: u64 = 1 << 20;
/// Five chunks and a short one (whole sectors, as a raw image's size is).
pub const SIZE: u64 = 5 * CHUNK + 12_288;

pub fn raw(path: &Path, size: u64) -> Arc<dyn Image> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    strata_image::open(
        path,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap()
}

pub fn repo_at(dir: &Path, key: Option<&[u8]>, init: bool) -> Repo {
    let b = Box::new(LocalDir::new(dir).unwrap());
    if init {
        Repo::init(b, key).unwrap()
    } else {
        Repo::open(b, key).unwrap()
    }
}

/// One backup of `image` (`vda`) after `parent` with chunks `changed`.
pub fn back_up(
    repo: &Repo,
    image: &dyn Image,
    n: u64,
    parent: Option<&Manifest>,
    changed: &[bool],
) -> Manifest {
    back_up_as(repo, "vm", image, (n, Duration::ZERO), parent, changed)
}

/// [`back_up`] as backup group (domain) `label`, pausing `pace` after
/// each chunk (a slower disk).
pub fn back_up_as(
    repo: &Repo,
    label: &str,
    image: &dyn Image,
    (n, pace): (u64, Duration),
    parent: Option<&Manifest>,
    changed: &[bool],
) -> Manifest {
    let id = new_backup_id(UNIX_EPOCH + Duration::from_secs(1_800_000_000 + n));
    let pix: Option<Index> = parent.map(|p| repo.get_index(&p.disks[0]).unwrap());
    let pred = |k: u64| changed[k as usize];
    let src = DiskSource {
        name: "vda",
        image,
        since: pix
            .as_ref()
            .map(|p| (p, &pred as &(dyn Fn(u64) -> bool + Sync))),
        skipped: None,
        stop: None,
    };
    let disk = write_disk(repo, &id, &src, &|_| std::thread::sleep(pace)).unwrap();
    let m = Manifest {
        id,
        time: n,
        host: "test".into(),
        label: label.into(),
        parent: parent.map(|p| p.id.clone()),
        disks: vec![disk],
        meta: serde_json::json!({"round": n}),
    };
    repo.commit(&m).unwrap();
    m
}

pub fn restored(repo: &Repo, m: &Manifest, dir: &Path) -> Result<Vec<u8>, Error> {
    let path = dir.join(format!("r-{}", m.id));
    let img = raw(&path, m.disks[0].size);
    let r = restore_disk(repo, &m.disks[0], img.as_ref(), &|_| {});
    img.close().unwrap();
    drop(img);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    r.map(|()| bytes)
}

/// Random guest-like writes into `image` and `model`: a few runs of
/// random or zero bytes; which chunks they touched.
pub fn scribble(rng: &mut impl Rng, image: &dyn Image, model: &mut [u8]) -> Vec<bool> {
    let mut changed = vec![false; SIZE.div_ceil(CHUNK) as usize];
    for _ in 0..rng.gen_range(1..6) {
        let len = rng.gen_range(1..300_000u64);
        let off = rng.gen_range(0..SIZE - len);
        let zero = rng.gen_bool(0.2);
        let data: Vec<u8> = (0..len).map(|_| if zero { 0 } else { rng.gen() }).collect();
        image.write_at(&data, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        for c in off / CHUNK..=(off + len - 1) / CHUNK {
            changed[c as usize] = true;
        }
    }
    changed
}

/// The chunk ids a disk holding `model` names: a model of its index
/// (the repository's id key on each chunk that is not all zeros).
pub fn ids_of(repo: &Repo, model: &[u8]) -> std::collections::BTreeSet<String> {
    model
        .chunks(CHUNK as usize)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(|c| strata_repo::chunk::name(&repo.keys().chunk_id(c)))
        .collect()
}
