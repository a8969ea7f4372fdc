//! The records guest of the live snapshot tests: it appends numbered 4 KiB
//! records to vda and then vdb in turn, and after each record overwrites
//! an older block (one of 1000 slots, in turn), each write fsynced and
//! checked, and says on its console which it has written; and the helpers
//! that read the records back from images with qemu-img and check them.

use std::path::Path;

use super::*;

/// Appends record i (its number on a 4 KiB block at block i) to vda,
/// then overwrites slot i mod 1000 (block 15100 + i mod 1000, which held
/// record i - 1000's mark) with `OVR i`, then the same on vdb, each write
/// fsynced; says `ACK i`; stops at the first failed write.
pub const RECORDS: &str = "
i=0
while [ $i -lt 15000 ]; do
  i=$((i+1))
  for d in vda vdb; do
    printf 'REC %08d\\n' $i | dd of=/dev/$d bs=4096 seek=$i conv=sync,fsync 2>/dev/null || { echo WRITE-FAILED $d $i; exit 1; }
    printf 'OVR %08d\\n' $i | dd of=/dev/$d bs=4096 seek=$((15100 + i % 1000)) conv=sync,fsync 2>/dev/null || { echo WRITE-FAILED $d $i; exit 1; }
  done
  echo ACK $i
done
";

/// The first block of the overwritten slots.
const SLOT0: usize = 15100;
/// How many slots the guest overwrites in turn.
const SLOTS: u64 = 1000;

/// Records the console has acknowledged so far.
pub fn acked(p: &Path) -> u64 {
    let text = std::fs::read_to_string(p.join("vm.console")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ACK ")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Waits for `n` more records than the console has acknowledged now.
pub fn writes_on(p: &Path, n: u64) {
    let seen = acked(p);
    wait_for_records(p, seen + n, 60);
}

/// Waits up to `secs` seconds until the console has acknowledged `n`
/// records; the console is in the panic message if it does not.
pub fn wait_for_records(p: &Path, n: u64, secs: u64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while acked(p) < n {
        if std::time::Instant::now() > until {
            let console = std::fs::read_to_string(p.join("vm.console")).unwrap_or_default();
            let tail: String = console
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "the guest acknowledged {} of {n} records in {secs} s; its console ends:\n{tail}",
                acked(p)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Destroys domain `vm` and checks that its guest never saw a failed
/// write.
pub fn stop_and_check_console(p: &Path) {
    ok(p, &st(&["domain", "destroy", "vm"]));
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(!console.contains("WRITE-FAILED"), "{console}");
    assert!(!console.contains("I/O error"), "{console}");
}

/// The records a raw disk image holds: 1..=n, each where it belongs, and
/// nothing after them (the prefix is unbroken); and each overwritten slot
/// holds the newest mark of a record up to n (record n's own mark may not
/// be written yet): an image from one instant holds no older mark.
pub fn prefix(raw: &[u8], what: &str) -> u64 {
    let mut n = 0u64;
    for (k, block) in raw.chunks(4096).enumerate().skip(1).take(SLOT0 - 1) {
        let want = format!("REC {k:08}\n");
        if block.starts_with(want.as_bytes()) {
            assert_eq!(
                n + 1,
                k as u64,
                "{what}: record {k} after a gap at {}",
                n + 1
            );
            n = k as u64;
        } else {
            assert!(
                block.iter().all(|&b| b == 0),
                "{what}: block {k} holds neither record {k} nor zeros"
            );
        }
    }
    for s in 0..SLOTS {
        let block = &raw[(SLOT0 + s as usize) * 4096..][..4096];
        let mark = std::str::from_utf8(&block[..13])
            .ok()
            .and_then(|t| t.strip_prefix("OVR ")?.trim_end().parse::<u64>().ok());
        if mark.is_none() {
            assert!(
                block.iter().all(|&b| b == 0),
                "{what}: slot {s} holds neither a mark nor zeros"
            );
        }
        let ok =
            mark == newest_mark(n, s) || (n > 0 && n % SLOTS == s && mark == newest_mark(n - 1, s));
        assert!(
            ok,
            "{what}: slot {s} holds mark {mark:?} with {n} records (want {:?})",
            newest_mark(n, s)
        );
    }
    n
}

/// The newest record up to `upto` whose mark goes to slot `s`.
fn newest_mark(upto: u64, s: u64) -> Option<u64> {
    if upto < s {
        return None;
    }
    let j = upto - (upto - s) % SLOTS;
    (j > 0).then_some(j)
}

/// The guest data of `file` (its snapshot `snap`, or its current state),
/// read by qemu-img with shared locks.
pub fn read_raw(p: &Path, file: &str, snap: Option<&str>) -> Vec<u8> {
    let out = p.join("read.raw");
    let mut args = vec!["convert", "-U", "-O", "raw"];
    let l;
    if let Some(s) = snap {
        l = format!("snapshot.name={s}");
        args.extend(["-l", &l]);
    }
    args.extend([file, out.to_str().unwrap()]);
    qemu_img(p, &args);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// The files of the chain under `top`, top first.
pub fn chain(p: &Path, top: &str) -> Vec<String> {
    let info = qemu_img(p, &["info", "-U", "--backing-chain", "--output=json", top]).json();
    info.as_array()
        .unwrap()
        .iter()
        .map(|l| l["filename"].as_str().unwrap().to_string())
        .collect()
}

/// The file of `chain` that holds internal snapshot `name`.
pub fn holder(p: &Path, chain: &[String], name: &str) -> String {
    for f in chain {
        let list = qemu_img(p, &["snapshot", "-U", "-l", f]).stdout;
        if list
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(name))
        {
            return f.clone();
        }
    }
    panic!("no file of {chain:?} holds snapshot {name}");
}

/// Every dirty extent of bitmap `name` in `file`, if it has one.
pub fn extents(p: &Path, file: &str, name: &str) -> Vec<(u64, u64)> {
    let listed = ok(p, &["--output", "json", "img", "bitmap", "list", file]).json();
    if !listed.as_array().unwrap().iter().any(|b| b["name"] == name) {
        return Vec::new();
    }
    let dump = ok(
        p,
        &["--output", "json", "img", "bitmap", "dump", file, name],
    )
    .json();
    dump.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// Defines domain `vm` in `p`: the records guest on two empty 64 MiB
/// qcow2 disks (`a.qcow2` as vda, `b.qcow2` as vdb), its console in
/// `vm.console`; `devices` is added to its devices.
pub fn define_records_guest(p: &Path, kit: &strata_testguest::Kit, devices: &str) {
    for disk in ["a.qcow2", "b.qcow2"] {
        qemu_img(p, &["create", "-q", "-f", "qcow2", disk, "64M"]);
    }
    define_vm(p, kit, RECORDS, &["a.qcow2", "b.qcow2"], devices);
}

/// Defines the records guest as domain `vm` in `p` and starts it under a
/// daemon of its own (returned), once it has written a few records.
pub fn start_records_guest(p: &Path, kit: &strata_testguest::Kit) -> super::daemon::DaemonProc {
    define_records_guest(p, kit, "");
    let daemon = super::daemon::DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_for_records(p, 11, 120);
    daemon
}

/// Defines domain `vm` in `p`: a direct-boot guest running `workload`,
/// with the qcow2 `disks` of `p` as vda, vdb, …, its console in
/// `vm.console`, and `devices` added to its devices.
pub fn define_vm(
    p: &Path,
    kit: &strata_testguest::Kit,
    workload: &str,
    disks: &[&str],
    devices: &str,
) {
    kit.initrd(workload, &[], &p.join("vm.initrd.gz"))
        .expect("building the initrd");
    let dir = p.display();
    let disks: String = disks
        .iter()
        .enumerate()
        .map(|(k, f)| {
            format!(
                "
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{dir}/{f}'/>
      <target dev='vd{}' bus='virtio'/>
    </disk>",
                (b'a' + k as u8) as char
            )
        })
        .collect();
    let xml = direct_boot_domain(p, kit, "vm", "vm.initrd.gz", &disks, devices);
    std::fs::write(p.join("vm.xml"), xml).unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
}

/// The XML of domain `name`, which boots the kit's kernel with `initrd`
/// (a file in `p`), with `disks`, its console in `NAME.console`, and
/// `devices` after it.
pub fn direct_boot_domain(
    p: &Path,
    kit: &strata_testguest::Kit,
    name: &str,
    initrd: &str,
    disks: &str,
    devices: &str,
) -> String {
    let dir = p.display();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{dir}/{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>{disks}
    <serial type='file'><source path='{dir}/{name}.console'/><target port='0'/></serial>{devices}
  </devices>
</domain>",
        kernel = kit.kernel.display(),
    )
}

/// Reads the dirty extents of export `disk` (its `backup-DISK` bitmap) over
/// the copy in `file`, with libnbd from Python.
pub fn read_dirty(p: &Path, disk: &str, file: &str) -> String {
    let script = format!(
        r#"
import nbd
CTX = "qemu:dirty-bitmap:backup-{disk}"
h = nbd.NBD()
h.add_meta_context(CTX)
h.connect_uri("nbd+unix:///{disk}?socket={sock}")
size = h.get_size()
dirty = []
off = 0
while off < size:
    got = []
    def cb(ctx, o, entries, err):
        if ctx == CTX:
            got.extend(zip(entries[0::2], entries[1::2]))
    h.block_status(min(size - off, 1 << 30), off, cb)
    for (l, flags) in got:
        if flags & 1:
            dirty.append((off, l))
        off += l
total = 0
with open("{file}", "r+b") as f:
    for (o, l) in dirty:
        while l > 0:
            n = min(l, 4 << 20)
            f.seek(o)
            f.write(h.pread(n, o))
            total += n
            o += n
            l -= n
print(total)
"#,
        sock = p.join("nbd.sock").display(),
    );
    std::fs::write(p.join("read.py"), script).unwrap();
    run_in(p, "/usr/bin/python3", &["read.py"]).expect(0).stdout
}

/// Writes `xml` as `p/b.xml` and a checkpoint `cp` as `p/c.xml`; the
/// arguments of `backup begin vm` with both.
pub fn backup_files(p: &Path, xml: &str, cp: &str) -> [&'static str; 7] {
    std::fs::write(p.join("b.xml"), xml).unwrap();
    std::fs::write(
        p.join("c.xml"),
        format!("<domaincheckpoint><name>{cp}</name></domaincheckpoint>"),
    )
    .unwrap();
    [
        "backup",
        "begin",
        "vm",
        "--backupxml",
        "b.xml",
        "--checkpointxml",
        "c.xml",
    ]
}

/// `backup begin vm` of `xml` with a checkpoint `cp`, from files in `p`:
/// the job it started (as JSON).
pub fn begin_backup(p: &Path, xml: &str, cp: &str) -> serde_json::Value {
    let mut args = vec!["--output", "json"];
    args.extend(backup_files(p, xml, cp));
    ok(p, &st(&args)).json()
}

/// The records of a copy of both disks, checked against the instant.
pub fn check_copy(a: &[u8], b: &[u8], before: u64, after: u64, what: &str) {
    let (na, nb) = (
        prefix(a, &format!("{what} vda")),
        prefix(b, &format!("{what} vdb")),
    );
    assert!(
        nb == na || nb + 1 == na,
        "{what}: vda {na} records, vdb {nb}"
    );
    assert!(
        nb >= before,
        "{what}: {nb} records, {before} acknowledged before"
    );
    assert!(
        na <= after + 1,
        "{what}: {na} records, {after} when begin returned"
    );
}

/// `backup status vm` as JSON.
pub fn job_state(p: &Path) -> serde_json::Value {
    ok(p, &st(&["--output", "json", "backup", "status", "vm"])).json()
}

/// The scratch files left in the state folder.
pub fn scratch_files(p: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(p.join("state/scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
