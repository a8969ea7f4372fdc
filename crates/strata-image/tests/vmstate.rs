//! The VM state of internal snapshots, with QEMU as the oracle: a state
//! strata stores is listed by `qemu-img snapshot -l` with its size and
//! loaded by QEMU's `loadvm`; a state QEMU's `savevm` stored is read back
//! by strata byte for byte; `qemu-img check` is clean after every step,
//! through apply and delete, and the guest data is untouched by it.

mod common;
use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use strata_image::qcow2::CreateOptions;

const SIZE: u64 = 8 << 20;

/// `qemu-img snapshot -l` as (name, VM size column).
fn listed_sizes(path: &Path) -> Vec<(String, String)> {
    run("qemu-img", &["snapshot", "-l", s(path)])
        .lines()
        .skip(2)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 4).then(|| (w[1].to_string(), format!("{} {}", w[2], w[3])))
        })
        .collect()
}

/// Runs QEMU (machine `none`: no devices, so a tiny state) on `disk`
/// with the human monitor on stdin; returns what the monitor printed.
fn qemu_monitor(disk: &Path, commands: &str) -> Option<String> {
    let spawned = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "none",
            "-nodefaults",
            "-nographic",
            "-monitor",
            "stdio",
        ])
        .arg("-drive")
        .arg(format!("file={},if=none,id=d0,format=qcow2", s(disk)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(_) if std::env::var_os("CI").is_none() => return None,
        Err(e) => panic!("qemu-system-x86_64: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{commands}\nquit\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[test]
fn a_state_strata_stores_is_listed_read_back_and_goes_with_its_snapshot() {
    let d = tmp();
    let img = at(&d, "s.qcow2");
    create(
        &img,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng(17);
    // Not a whole number of clusters, and more than one L2 table's worth
    // would be too big here: 3.5 MiB and a bit.
    let state = pattern((7 << 19) + 1234, 99);
    let at_snapshot;
    {
        let i = open_rw(&img);
        random_writes(i.as_ref(), &mut model, &mut rng, 30, 200_000);
        let info = qcow2(&i)
            .snapshot_create_with_state(Some("with-state"), 5_000_000_000, &state)
            .unwrap();
        assert_eq!(info.vm_state_size, state.len() as u64);
        at_snapshot = model.clone();
        random_writes(i.as_ref(), &mut model, &mut rng, 30, 200_000);
        // A plain snapshot beside it.
        qcow2(&i).snapshot_create(Some("plain"), 0).unwrap();
        assert!(read_all(i.as_ref()) == model, "the guest data is untouched");
    }
    assert_qemu_clean(&img);
    let listed = listed_sizes(&img);
    assert_eq!(
        listed[0],
        ("with-state".into(), "3.5 MiB".into()),
        "{listed:?}"
    );
    assert_eq!(listed[1].1, "0 B", "{listed:?}");
    assert!(qemu_read_snapshot(&img, "with-state", d.path()) == at_snapshot);
    {
        let i = open_rw(&img);
        let q = qcow2(&i);
        let mut back = vec![0u8; state.len()];
        q.read_vmstate("with-state", &mut back, 0).unwrap();
        assert!(back == state, "the state reads back");
        let mut part = vec![0u8; 5000];
        q.read_vmstate("1", &mut part, 1 << 20).unwrap();
        assert!(part[..] == state[1 << 20..(1 << 20) + 5000]);
        let e = q
            .read_vmstate("with-state", &mut part, state.len() as u64 - 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("past its VM state") && e.contains("with-state"),
            "{e}"
        );
        assert!(q.read_vmstate("plain", &mut [0u8; 1], 0).is_err());
        assert_eq!(q.vmstate_extent("plain").unwrap(), None, "no state");
        // Applied: the guest data is the snapshot's, the state stays with it.
        q.snapshot_apply("with-state").unwrap();
        assert!(read_all(i.as_ref()) == at_snapshot);
        q.read_vmstate("with-state", &mut back, 0).unwrap();
        assert!(back == state);
    }
    assert_qemu_clean(&img);
    assert_eq!(listed_sizes(&img)[0].1, "3.5 MiB");
    // Deleted: every cluster of the state goes (check finds no leak).
    {
        let i = open_rw(&img);
        qcow2(&i).snapshot_delete("with-state").unwrap();
        assert!(read_all(i.as_ref()) == at_snapshot);
    }
    assert_qemu_clean(&img);
    let before = std::fs::metadata(&img).unwrap().len();
    // A new one reuses the freed space rather than growing the file much.
    {
        let i = open_rw(&img);
        qcow2(&i)
            .snapshot_create_with_state(Some("again"), 0, &state)
            .unwrap();
    }
    assert_qemu_clean(&img);
    assert!(std::fs::metadata(&img).unwrap().len() <= before + (1 << 20));
}

#[test]
fn qemu_loads_a_state_strata_stored_and_strata_reads_one_qemu_saved() {
    let d = tmp();
    let theirs = at(&d, "theirs.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", s(&theirs), "64M"],
    );
    let Some(out) = qemu_monitor(&theirs, "savevm qs") else {
        return;
    };
    assert!(!out.contains("Error"), "{out}");
    assert_qemu_clean(&theirs);
    // QEMU's state, read by strata: its migration stream's magic first.
    let state = {
        let i = open_rw(&theirs);
        let q = qcow2(&i);
        let info = q.snapshots().unwrap();
        let len = info[0].vm_state_size as usize;
        assert!(len > 0, "{info:?}");
        let mut st = vec![0u8; len];
        q.read_vmstate("qs", &mut st, 0).unwrap();
        assert_eq!(&st[..4], b"QEVM", "QEMU's stream starts with its magic");
        st
    };
    // The same state stored by strata in another image, larger than the
    // first (the state starts past its disk): QEMU loads it.
    let ours = at(&d, "ours.qcow2");
    create(
        &ours,
        CreateOptions {
            size: 100 << 20,
            ..Default::default()
        },
    );
    {
        let i = open_rw(&ours);
        i.write_at(&pattern(1 << 20, 3), 5 << 20).unwrap();
        qcow2(&i)
            .snapshot_create_with_state(Some("ss"), 0, &state)
            .unwrap();
    }
    assert_qemu_clean(&ours);
    let out = qemu_monitor(&ours, "loadvm ss\ninfo snapshots").unwrap();
    assert!(!out.contains("Error") && !out.contains("error"), "{out}");
    assert!(out.contains("ss"), "{out}");
    // A damaged stream is refused by QEMU: the state is really read.
    {
        let i = open_rw(&ours);
        let mut bad = state.clone();
        bad[..4].copy_from_slice(b"XXXX");
        qcow2(&i)
            .snapshot_create_with_state(Some("bad"), 0, &bad)
            .unwrap();
    }
    let out = qemu_monitor(&ours, "loadvm bad").unwrap();
    assert!(out.contains("Not a migration stream"), "{out}");
    assert_qemu_clean(&ours);
}

#[test]
fn a_state_attached_to_a_snapshot_afterwards_is_as_one_made_with_it() {
    let d = tmp();
    let img = at(&d, "a.qcow2");
    create(
        &img,
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    );
    let mut model = vec![0u8; SIZE as usize];
    let mut rng = Rng(23);
    let state = pattern(200_000, 5);
    let at_snapshot;
    {
        let i = open_rw(&img);
        random_writes(i.as_ref(), &mut model, &mut rng, 30, 200_000);
        qcow2(&i).snapshot_create(Some("s"), 0).unwrap();
        at_snapshot = model.clone();
        random_writes(i.as_ref(), &mut model, &mut rng, 30, 200_000);
        let info = qcow2(&i).snapshot_attach_state("s", &state).unwrap();
        assert_eq!(info.vm_state_size, state.len() as u64);
        let e = qcow2(&i)
            .snapshot_attach_state("s", &state)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has a VM state already"), "{e}");
        assert!(read_all(i.as_ref()) == model, "the guest data is untouched");
        let mut back = vec![0u8; state.len()];
        qcow2(&i).read_vmstate("s", &mut back, 0).unwrap();
        assert!(back == state);
        // It lies in the file in one piece: a reader (QEMU loading it) can
        // take it from there.
        let at = qcow2(&i).vmstate_extent("s").unwrap().expect("one piece");
        let mut raw = vec![0u8; state.len()];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&img).unwrap(),
            &mut raw,
            at,
        )
        .unwrap();
        assert!(raw == state, "the file holds the state at {at}");
    }
    assert_qemu_clean(&img);
    assert_eq!(listed_sizes(&img)[0].1, "195 KiB");
    assert!(qemu_read_snapshot(&img, "s", d.path()) == at_snapshot);
    {
        let i = open_rw(&img);
        qcow2(&i).snapshot_delete("s").unwrap();
    }
    assert_qemu_clean(&img);
}
