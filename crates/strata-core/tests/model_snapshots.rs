//! Model test of a domain's snapshot tree: random writes to the disks,
//! snapshot creates (internal, external, mixed per disk, some disks left
//! out), reverts and deletes on a domain of three disks. After every step
//! the current contents of every disk and the contents of every snapshot,
//! read back with qemu-img (not strata), match the model; `qemu-img check`
//! is clean on every image; the tree (parents, current) matches; and every
//! refusal the model predicts (an internal revert under newer overlays, a
//! delete of an external snapshot with its disks) happens and changes
//! nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use strata_core::snapshot::{DiskMode, SnapshotDef};
use strata_core::snapshot_create::{self, CreateRequest, DiskSpec};
use strata_core::snapshot_delete::{self, DeleteRequest};
use strata_core::snapshot_revert;
use strata_core::{Domain, Store};
use strata_image::ChainOptions;

const SIZE: usize = 2 << 20;
const DISKS: [&str; 3] = ["vda", "vdb", "vdc"];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

use common::qemu_img as qemu;

/// Guest contents of an image chain (or of an internal snapshot in it), by qemu-img.
fn read(dir: &Path, file: &Path, snapshot: Option<&str>) -> Vec<u8> {
    let out = dir.join("read.raw");
    let _ = std::fs::remove_file(&out);
    let (f, o) = (file.to_str().unwrap(), out.to_str().unwrap());
    let l = snapshot.map(|s| format!("snapshot.name={s}"));
    let mut args = vec!["convert", "-U", "-O", "raw"];
    if let Some(l) = &l {
        args.extend(["-l", l.as_str()]);
    }
    args.extend([f, o]);
    qemu(&args);
    std::fs::read(&out).unwrap()
}

/// One snapshot in the model.
#[derive(Clone, Debug)]
struct Snap {
    parent: Option<String>,
    /// Per disk: how it took part, the image holding the snapshot, contents.
    disks: BTreeMap<String, (DiskMode, PathBuf, Vec<u8>)>,
}

struct Model {
    current: BTreeMap<String, Vec<u8>>,
    source: BTreeMap<String, PathBuf>,
    snaps: BTreeMap<String, Snap>,
    current_snap: Option<String>,
}

fn sources(store: &Store) -> BTreeMap<String, PathBuf> {
    store
        .domain("vm")
        .unwrap()
        .disks()
        .into_iter()
        .map(|d| (d.target, d.source.unwrap()))
        .collect()
}

/// Checks the model; snapshot contents and image checks only when `deep`
/// (they cost a qemu-img run per snapshot disk).
fn check(dir: &Path, store: &Store, m: &Model, step: &str, deep: bool) {
    assert_eq!(sources(store), m.source, "{step}: disk sources");
    for d in DISKS {
        assert!(
            read(dir, &m.source[d], None) == m.current[d],
            "{step}: current contents of {d}"
        );
    }
    let rows = store.snapshots("vm").unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
            .len(),
        m.snaps.len(),
        "{step}: snapshot count"
    );
    for r in &rows {
        let s = &m.snaps[&r.name];
        assert_eq!(r.parent, s.parent, "{step}: parent of {}", r.name);
        assert_eq!(
            r.current,
            m.current_snap.as_deref() == Some(&r.name),
            "{step}: current {}",
            r.name
        );
        if !deep {
            continue;
        }
        for (d, (mode, img, data)) in &s.disks {
            let got = match mode {
                DiskMode::Internal => read(dir, img, Some(&r.name)),
                _ => read(dir, img, None),
            };
            assert!(
                got == *data,
                "{step}: snapshot {} disk {d} ({mode:?})",
                r.name
            );
        }
    }
    if !deep {
        return;
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("vd") {
            qemu(&["check", "-U", p.to_str().unwrap()]);
        }
    }
}

fn run_model(seed: u64, steps: usize) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut xml = String::from("<domain><name>vm</name><devices>");
    for disk in DISKS {
        let p = dir.join(format!("{disk}.qcow2"));
        qemu(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "2M"]);
        xml.push_str(&format!(
            "<disk type='file' device='disk'><driver type='qcow2'/><source file='{}'/><target dev='{disk}'/></disk>",
            p.display()
        ));
    }
    xml.push_str("</devices></domain>");
    let mut store = Store::open(&dir.join("state")).unwrap();
    store
        .define(&Domain::from_xml(&xml, "vm.xml").unwrap())
        .unwrap();
    let mut m = Model {
        current: DISKS
            .iter()
            .map(|d| (d.to_string(), vec![0u8; SIZE]))
            .collect(),
        source: sources(&store),
        snaps: BTreeMap::new(),
        current_snap: None,
    };
    let mut rng = Rng(seed);
    let mut made = 0;
    for step in 0..steps {
        let ctx;
        match rng.below(10) {
            0..=3 => {
                let disk = DISKS[rng.below(3) as usize];
                let len = 1 + rng.below(200_000) as usize;
                let off = rng.below((SIZE - len) as u64) as usize;
                let byte = 1 + rng.below(250) as u8;
                ctx = format!("write {disk} {off}+{len}");
                let img = strata_image::open(
                    &m.source[disk],
                    &ChainOptions {
                        writable: true,
                        ..Default::default()
                    },
                )
                .unwrap();
                img.write_at(&vec![byte; len], off as u64).unwrap();
                img.close().unwrap();
                m.current.get_mut(disk).unwrap()[off..off + len].fill(byte);
            }
            4..=6 => {
                made += 1;
                let name = format!("s{made}");
                let mut specs = Vec::new();
                let mut disks = BTreeMap::new();
                for disk in DISKS {
                    let mode = [DiskMode::Internal, DiskMode::External, DiskMode::No]
                        [rng.below(3) as usize];
                    specs.push(DiskSpec {
                        target: disk.into(),
                        mode: Some(mode),
                        ..Default::default()
                    });
                    if mode != DiskMode::No {
                        disks.insert(
                            disk.to_string(),
                            (mode, m.source[disk].clone(), m.current[disk].clone()),
                        );
                    }
                }
                ctx = format!(
                    "create {name} {:?}",
                    specs.iter().map(|s| s.mode).collect::<Vec<_>>()
                );
                let req = CreateRequest {
                    name: Some(name.clone()),
                    diskspecs: specs,
                    ..Default::default()
                };
                let r = snapshot_create::create(&mut store, "vm", &req);
                if disks.is_empty() {
                    assert!(r.is_err(), "{ctx}: a snapshot of no disk was accepted");
                    made -= 1;
                } else {
                    r.unwrap_or_else(|e| panic!("step {step} {ctx}: {e}"));
                    m.snaps.insert(
                        name.clone(),
                        Snap {
                            parent: m.current_snap.clone(),
                            disks,
                        },
                    );
                    m.current_snap = Some(name);
                    m.source = sources(&store);
                }
            }
            7 | 8 => {
                let Some(name) = pick(&m, &mut rng) else {
                    continue;
                };
                ctx = format!("revert {name}");
                let s = m.snaps[&name].clone();
                let refused = s
                    .disks
                    .iter()
                    .any(|(d, (mode, img, _))| *mode == DiskMode::Internal && m.source[d] != *img);
                let r = snapshot_revert::revert(&mut store, "vm", &name);
                if refused {
                    assert!(
                        r.is_err(),
                        "step {step} {ctx}: accepted over newer overlays"
                    );
                } else {
                    r.unwrap_or_else(|e| panic!("step {step} {ctx}: {e}"));
                    for (d, (_, _, data)) in &s.disks {
                        m.current.insert(d.clone(), data.clone());
                    }
                    m.current_snap = Some(name);
                    m.source = sources(&store);
                }
            }
            _ => {
                let Some(name) = pick(&m, &mut rng) else {
                    continue;
                };
                ctx = format!("delete {name}");
                let s = m.snaps[&name].clone();
                let external = s
                    .disks
                    .values()
                    .any(|(mode, _, _)| *mode == DiskMode::External);
                let r = snapshot_delete::delete(&mut store, "vm", &name, DeleteRequest::default());
                if external {
                    assert!(r.is_err(), "step {step} {ctx}: external delete accepted");
                } else {
                    r.unwrap_or_else(|e| panic!("step {step} {ctx}: {e}"));
                    m.snaps.remove(&name);
                    for other in m.snaps.values_mut() {
                        if other.parent.as_deref() == Some(&name) {
                            other.parent = s.parent.clone();
                        }
                    }
                    if m.current_snap.as_deref() == Some(&name) {
                        m.current_snap = s.parent.clone();
                    }
                }
            }
        }
        // Every step after a revert or delete is checked deeply, others every 5th.
        let deep = step % 5 == 4 || ctx.starts_with("revert") || ctx.starts_with("delete");
        check(
            dir,
            &store,
            &m,
            &format!("seed {seed} step {step} ({ctx})"),
            deep,
        );
    }
    check(dir, &store, &m, &format!("seed {seed} end"), true);
    // The recorded XML of every snapshot still parses and names its disks.
    for r in store.snapshots("vm").unwrap() {
        let def = SnapshotDef::from_xml(&r.xml, &r.name).unwrap();
        assert_eq!(def.disks.len(), 3);
    }
}

fn pick(m: &Model, rng: &mut Rng) -> Option<String> {
    if m.snaps.is_empty() {
        return None;
    }
    let k = rng.below(m.snaps.len() as u64) as usize;
    m.snaps.keys().nth(k).cloned()
}

#[test]
fn snapshot_tree_follows_the_model() {
    for seed in 1..=3 {
        run_model(seed, 60);
    }
}
