//! The records guest of the live snapshot tests: it appends numbered 4 KiB
//! records to vda and then vdb in turn, each write fsynced and checked, and
//! says on its console which it has written; and the helpers that read the
//! records back from images with qemu-img.

use std::path::Path;

use super::*;

/// Appends record i (its number on a 4 KiB block at block i) to vda and
/// then vdb, fsynced, and says `ACK i`; stops at the first failed write.
pub const RECORDS: &str = "
i=0
while [ $i -lt 15000 ]; do
  i=$((i+1))
  printf 'REC %08d\\n' $i | dd of=/dev/vda bs=4096 seek=$i conv=sync,fsync 2>/dev/null || { echo WRITE-FAILED vda $i; exit 1; }
  printf 'REC %08d\\n' $i | dd of=/dev/vdb bs=4096 seek=$i conv=sync,fsync 2>/dev/null || { echo WRITE-FAILED vdb $i; exit 1; }
  echo ACK $i
done
";

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
/// nothing after them (the prefix is unbroken).
pub fn prefix(raw: &[u8], what: &str) -> u64 {
    let mut n = 0u64;
    for (k, block) in raw.chunks(4096).enumerate().skip(1) {
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
    n
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
    let xml = format!(
        "<domain type='qemu'>
  <name>vm</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{dir}/vm.initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>{disks}
    <serial type='file'><source path='{dir}/vm.console'/><target port='0'/></serial>{devices}
  </devices>
</domain>",
        kernel = kit.kernel.display(),
    );
    std::fs::write(p.join("vm.xml"), xml).unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
}
