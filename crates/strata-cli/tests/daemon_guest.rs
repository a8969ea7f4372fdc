//! Running domains with real guests (the guest kit under TCG): the whole
//! lifecycle through `strata domain …` with data written through strata's
//! served disk and checked with qemu-io/qemu-img, every command in every
//! state, concurrent operations, the daemon's stop policy, a QEMU killed
//! from outside, change tracking through the guest, and SeaBIOS booting a
//! domain from its strata-served disk.

mod common;
use common::daemon::*;
use common::*;
use std::path::Path;
use std::time::Duration;

/// Writes 64 KiB of 0x5a at 1 MiB, says so, then waits forever, unless
/// the kernel command line has `strata.end`, when it ends (and the guest
/// powers off).
const WRITE_AND_WAIT: &str = "
dd if=/dev/zero bs=65536 count=1 2>/dev/null | tr '\\000' '\\132' | dd of=/dev/vda bs=65536 seek=16 conv=fsync 2>&1
sync
echo GUEST-WROTE
grep -q strata.end /proc/cmdline && exit 0
while true; do sleep 1; done
";

/// The 64 KiB the workload writes is in the image, and the image is clean.
fn check_written(p: &Path, disk: &str) {
    qemu_io(p, "qcow2", disk, &["read -P 0x5a 1M 64K", "read -P 0 0 1M"]);
    assert_clean(p, disk);
}

fn json_of(p: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--output", "json"];
    a.extend_from_slice(args);
    ok(p, &st(&a)).json()
}

#[test]
fn a_domain_runs_through_its_lifecycle_as_libvirt_says() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", WRITE_AND_WAIT, "");
    let err = |args: &[&str], needle: &str| strata(p, &st(args)).one_error(1, needle);

    // No daemon yet: start brings one up and says so.
    let _daemon = Autostarted(p);
    let r = ok(p, &st(&["domain", "start", "vm"]));
    assert_eq!(r.stdout, "Domain 'vm' started\n");
    assert!(
        r.stderr.contains("strata: started the daemon for"),
        "{}",
        r.stderr
    );
    assert!(p.join("state/daemon.log").exists());
    assert_eq!(domstate(p, "vm"), "running (booted)");
    assert_eq!(
        ok(p, &st(&["domain", "domstate", "vm"])).stdout,
        "running\n\n"
    );
    err(
        &["domain", "start", "vm"],
        "Requested operation is not valid: domain is already running",
    );
    err(
        &["domain", "resume", "vm"],
        "Requested operation is not valid: domain is not paused",
    );
    // The run folder is private and holds QEMU's files.
    use std::os::unix::fs::PermissionsExt;
    let run = p.join("state/run/vm");
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(run.join("qemu.log").exists() && run.join("qmp.sock").exists());
    wait_console(p, "vm", "GUEST-WROTE");

    // Listed as virsh lists it; JSON with the pid and the served disk.
    let list = ok(p, &st(&["domain", "list"])).stdout;
    assert!(list.contains(" 1    vm     running"), "{list}");
    let j = json_of(p, &["domain", "list"]);
    assert_eq!(
        (j[0]["id"].as_u64(), j[0]["state"].as_str()),
        (Some(1), Some("running"))
    );
    let info = curl_json(p, "GET", "/v1/domains/vm", None, 200);
    assert!(info["pid"].as_u64().is_some(), "{info}");
    assert_eq!(info["disks"][0]["backend"], "vhost-user-blk");

    // What a running domain cannot do is refused, clearly: --live with
    // --disk-only (which never pauses the guest); a backup into existing
    // files that do not exist is refused as offline. A checkpoint is taken
    // live.
    err(
        &[
            "snapshot",
            "create",
            "vm",
            "--name",
            "s1",
            "--live",
            "--disk-only",
        ],
        "--live is for snapshots with memory",
    );
    err(
        &["backup", "begin", "vm", "--reuse-external"],
        "does not exist (--reuse-external needs it)",
    );
    let made = json_of(p, &["checkpoint", "create", "vm", "--name", "c1"]);
    assert_eq!(made["name"], "c1");
    assert!(made["stall_us"].as_u64().is_some(), "{made}");
    err(&["domain", "undefine", "vm"], "cannot undefine domain 'vm'");

    // Suspend and resume.
    assert_eq!(
        ok(p, &st(&["domain", "suspend", "vm"])).stdout,
        "Domain 'vm' suspended\n"
    );
    assert_eq!(domstate(p, "vm"), "paused (user)");
    ok(p, &st(&["domain", "suspend", "vm"])); // as libvirt: already paused is fine
    err(&["domain", "start", "vm"], "domain is already running");
    err(&["domain", "shutdown", "vm"], "domain is not running");
    let list = ok(p, &st(&["domain", "list", "--state-paused"])).stdout;
    assert!(list.contains("vm     paused"), "{list}");
    assert!(!ok(p, &st(&["domain", "list", "--state-running"]))
        .stdout
        .contains("vm"));
    let j = json_of(p, &["domain", "resume", "vm"]);
    assert_eq!(
        (j["state"].as_str(), j["reason"].as_str()),
        (Some("running"), Some("unpaused"))
    );
    assert_eq!(domstate(p, "vm"), "running (unpaused)");

    // The kit's guest ignores the power button: shutdown times out, as
    // virsh's wait would, and the domain still runs.
    let line = err(
        &["domain", "shutdown", "vm", "--timeout", "2"],
        "did not shut down within 2 s",
    );
    assert!(line.contains("failed to shutdown domain 'vm'"), "{line}");
    assert_eq!(domstate(p, "vm"), "running (unpaused)");

    // Destroy: the disk is closed, the data is in the image.
    assert_eq!(
        ok(p, &st(&["domain", "destroy", "vm"])).stdout,
        "Domain 'vm' destroyed\n"
    );
    assert_eq!(domstate(p, "vm"), "shut off (destroyed)");
    check_written(p, "vm.qcow2");
    for cmd in ["destroy", "suspend", "resume", "shutdown"] {
        err(
            &["domain", cmd, "vm"],
            "Requested operation is not valid: domain is not running",
        );
    }
    assert!(!ok(p, &st(&["domain", "list"])).stdout.contains("vm"));

    // Started paused, resumed, and the guest powers off by itself.
    define_guest(p, kit, "vm", "strata.end");
    ok(p, &st(&["domain", "start", "vm", "--paused"]));
    assert_eq!(domstate(p, "vm"), "paused (user)");
    let list = ok(p, &st(&["domain", "list"])).stdout;
    assert!(list.contains(" 2    vm     paused"), "{list}");
    ok(p, &st(&["domain", "resume", "vm"]));
    wait_until(Duration::from_secs(120), "the guest powers off", || {
        domstate(p, "vm") == "shut off (shutdown)"
    });
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(console.contains("STRATA-GUEST-EXIT=0"), "{console}");
    check_written(p, "vm.qcow2");
    // Now it may go (with the checkpoint taken while it ran).
    ok(
        p,
        &st(&["domain", "undefine", "vm", "--checkpoints-metadata"]),
    );
}

#[test]
fn concurrent_operations_on_one_domain_do_not_interleave() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", WRITE_AND_WAIT, "");
    let _daemon = DaemonProc::start(p, &[], &[]);
    let both = |args: &[&str]| {
        let spawn = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
                .args(st(args))
                .current_dir(p)
                .output()
                .unwrap()
        };
        std::thread::scope(|s| {
            let a = s.spawn(spawn);
            let b = s.spawn(spawn);
            [a.join().unwrap(), b.join().unwrap()]
        })
    };
    // Two starts at once: one QEMU, one "already running".
    let outs = both(&["domain", "start", "vm", "--paused"]);
    let oks = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(oks, 1, "{outs:?}");
    let failed = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("domain is already running"),
        "{failed:?}"
    );
    let list = curl_json(p, "GET", "/v1/domains", None, 200);
    assert_eq!(list[0]["id"], 1, "{list}");
    // Two destroys at once: one ends it, the other finds it not running.
    let outs = both(&["domain", "destroy", "vm"]);
    assert_eq!(
        outs.iter().filter(|o| o.status.success()).count(),
        1,
        "{outs:?}"
    );
    let failed = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("domain is not running"),
        "{failed:?}"
    );
    assert_eq!(domstate(p, "vm"), "shut off (destroyed)");
    assert_clean(p, "vm.qcow2");
}

#[test]
fn sigterm_follows_the_stop_policy_and_releases_the_disks() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", WRITE_AND_WAIT, "");
    // The daemon's default backend is NBD here.
    let args = ["--shutdown-timeout", "2", "--disk-backend", "nbd"];
    let mut daemon = DaemonProc::start(p, &args, &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    let info = curl_json(p, "GET", "/v1/domains/vm", None, 200);
    assert_eq!(info["disks"][0]["backend"], "nbd", "{info}");
    let pid = info["pid"].as_u64().unwrap() as u32;
    wait_console(p, "vm", "GUEST-WROTE");
    // While it runs, QEMU-compatible locks keep other writers out.
    let r = run_in(
        p,
        "qemu-io",
        &["-f", "qcow2", "-c", "write 0 512", "vm.qcow2"],
    );
    assert_ne!(r.code, 0, "qemu-io wrote into a served image: {}", r.stdout);

    // The guest ignores the power button: after 2 s it is destroyed.
    assert_eq!(daemon.term(Duration::from_secs(60)), 0);
    let log = daemon.log();
    assert!(log.contains("pressed the power button"), "{log}");
    assert!(log.contains("did not power off in time"), "{log}");
    // SAFETY: signal 0 only asks whether the process exists.
    assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "QEMU still runs");
    assert!(!p.join("state/strata.sock").exists());
    // Locks released, data there, image clean.
    qemu_io(p, "qcow2", "vm.qcow2", &["write -P 0x11 2M 4k"]);
    check_written(p, "vm.qcow2");
    // Offline, it reads shut off.
    assert_eq!(domstate(p, "vm"), "shut off (unknown)");
}

#[test]
fn a_qemu_killed_from_outside_is_noticed_and_its_disks_closed() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    guest_domain(p, kit, "vm", WRITE_AND_WAIT, "");
    // This domain asks for NBD in its metadata.
    let nbd = "<strata:disks xmlns:strata='urn:strata:domain:1'>\
               <strata:disk target='vda' serve='nbd'/></strata:disks>";
    define_guest_with(p, kit, "vm", "", nbd);
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_console(p, "vm", "GUEST-WROTE");
    let info = curl_json(p, "GET", "/v1/domains/vm", None, 200);
    assert_eq!(info["disks"][0]["backend"], "nbd", "{info}");
    let socket = info["disks"][0]["socket"].as_str().unwrap();
    assert!(socket.ends_with("/run/vm/vda.nbd.sock"), "{socket}");
    let pid = info["pid"].as_u64().unwrap() as u32;
    signal(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(30), "the daemon notices", || {
        domstate(p, "vm") == "shut off (crashed)"
    });
    // The disk was closed: writable by others, data there, clean.
    qemu_io(p, "qcow2", "vm.qcow2", &["write -P 0x11 2M 4k"]);
    check_written(p, "vm.qcow2");
    // And the domain starts again.
    ok(p, &st(&["domain", "start", "vm"]));
    ok(p, &st(&["domain", "destroy", "vm"]));
}

/// `(offset, length)` of the dirty extents `nbdinfo --map` reports for
/// bitmap `name` of `disk`, exported by qemu-nbd.
fn dirty_extents(p: &Path, disk: &str, name: &str) -> Vec<(u64, u64)> {
    let sock = p.join("qemu-nbd.sock");
    let mut nbd = std::process::Command::new("qemu-nbd")
        .args(["-r", "-f", "qcow2", "-B", name, "-k"])
        .arg(&sock)
        .arg(disk)
        .current_dir(p)
        .spawn()
        .expect("qemu-nbd");
    wait_until(Duration::from_secs(10), "qemu-nbd listens", || {
        sock.exists()
    });
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let ctx = format!("--map=qemu:dirty-bitmap:{name}");
    let map = run_in(p, "nbdinfo", &[&ctx, &uri]).expect(0).stdout;
    let _ = nbd.kill();
    let _ = nbd.wait();
    map.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (off, len, flags) = (f.first()?.parse().ok()?, f.get(1)?.parse().ok()?, f.get(2)?);
            (*flags == "1").then_some((off, len))
        })
        .collect()
}

#[test]
fn a_checkpoint_tracks_exactly_what_the_guest_writes() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    // 64 KiB clusters 3, 10 and 11, and 4 KiB inside cluster 20.
    let workload = "
for at in 196608:65536 655360:131072 1318912:4096; do
  off=${at%:*}; len=${at#*:}
  dd if=/dev/urandom of=/dev/vda bs=4096 seek=$((off / 4096)) count=$((len / 4096)) conv=fsync 2>/dev/null
  echo GUEST-WROTE-AT $off $len
done
sync
echo GUEST-DONE
while true; do sleep 1; done
";
    guest_domain(p, kit, "vm", workload, "");
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "cp1"]));
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "vm"]));
    wait_console(p, "vm", "GUEST-DONE");
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    let logged: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("GUEST-WROTE-AT"))
        .collect();
    assert_eq!(logged.len(), 3, "{console}");
    ok(p, &st(&["domain", "destroy", "vm"]));
    assert_clean(p, "vm.qcow2");
    assert_eq!(
        dirty_extents(p, "vm.qcow2", "cp1"),
        [(3 << 16, 1 << 16), (10 << 16, 2 << 16), (20 << 16, 1 << 16)]
    );
}

/// `button.ko` and `evdev.ko` from the kit's kernel package, in `dir`: a
/// guest that loads them sees the ACPI power button.
fn button_modules(dir: &Path) -> Vec<std::path::PathBuf> {
    let debs: Vec<_> = std::fs::read_dir(strata_testguest::kit_dir().join("deb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let script = format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' --wildcards '*/drivers/acpi/button.ko' '*/drivers/input/evdev.ko'",
        debs[0].display(),
        dir.display()
    );
    run_in(dir, "sh", &["-c", &script]).expect(0);
    ["acpi/button.ko", "input/evdev.ko"]
        .iter()
        .map(|m| {
            let found = run_in(
                dir,
                "sh",
                &["-c", &format!("ls lib/modules/*/kernel/drivers/{m}")],
            )
            .expect(0);
            let src = dir.join(found.stdout.trim());
            let dst = dir.join(Path::new(m).file_name().unwrap());
            std::fs::rename(src, &dst).unwrap();
            dst
        })
        .collect()
}

/// Loads the button driver, then waits for one event from the power
/// button and ends (the guest powers off), as an ACPI-aware guest does.
const OBEY_BUTTON: &str = "
insmod /data/evdev.ko && insmod /data/button.ko || exit 3
ev=$(awk '/Name=\"Power Button\"/{p=1} p && /Handlers=/{for(i=1;i<=NF;i++) if($i ~ /^event/) {print $i; exit}}' /proc/bus/input/devices)
[ -n \"$ev\" ] || { cat /proc/bus/input/devices; exit 4; }
dd if=/dev/input/$ev bs=24 count=1 of=/dev/null 2>/dev/null &
sleep 1
echo GUEST-LISTENS $ev
wait
echo GUEST-GOT-THE-BUTTON
";

#[test]
fn a_guest_that_honours_the_power_button_shuts_down_and_stops_with_the_daemon() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    let modules = button_modules(p);
    let initrd = p.join("vm.initrd.gz");
    let files: Vec<&Path> = modules.iter().map(|m| m.as_path()).collect();
    kit.initrd(OBEY_BUTTON, &files, &initrd).unwrap();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "vm.qcow2", "16M"]);
    define_guest(p, kit, "vm", "");
    let mut daemon = DaemonProc::start(p, &["--shutdown-timeout", "60"], &[]);

    // shutdown: the button, then the guest powers off.
    ok(p, &st(&["domain", "start", "vm"]));
    wait_console(p, "vm", "GUEST-LISTENS");
    let r = ok(p, &st(&["domain", "shutdown", "vm", "--timeout", "60"]));
    assert_eq!(r.stdout, "Domain 'vm' is being shutdown\n");
    assert_eq!(domstate(p, "vm"), "shut off (shutdown)");
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(console.contains("GUEST-GOT-THE-BUTTON"), "{console}");

    // The daemon's stop policy: the guest powers off well within its time.
    std::fs::remove_file(p.join("vm.console")).unwrap();
    ok(p, &st(&["domain", "start", "vm"]));
    wait_console(p, "vm", "GUEST-LISTENS");
    let t = std::time::Instant::now();
    assert_eq!(daemon.term(Duration::from_secs(90)), 0);
    assert!(t.elapsed() < Duration::from_secs(45), "{:?}", t.elapsed());
    let log = daemon.log();
    assert!(!log.contains("did not power off"), "{log}");
    assert!(log.contains("reason=\"shutdown\""), "{log}");
    let console = std::fs::read_to_string(p.join("vm.console")).unwrap();
    assert!(console.contains("GUEST-GOT-THE-BUTTON"), "{console}");
    assert_clean(p, "vm.qcow2");
}

#[test]
fn seabios_boots_a_domain_from_its_first_disk_served_by_strata() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let d = tmp();
    let p = d.path();
    // The kit's boot disk with a workload that writes 64 KiB of 0x5a past
    // its filesystem, as a qcow2 of 128 MiB; no kernel in the XML.
    kit.boot_disk(
        "dd if=/dev/zero bs=65536 count=1 2>/dev/null | tr '\\000' '\\132' | dd of=/dev/vda bs=65536 seek=1920 conv=fsync",
        &[],
        &p.join("boot.raw"),
    )
    .expect("building the boot disk");
    qemu_img(p, &["convert", "-q", "-O", "qcow2", "boot.raw", "fw.qcow2"]);
    qemu_img(p, &["resize", "-q", "fw.qcow2", "128M"]);
    let xml = format!(
        "<domain type='qemu'>
  <name>fw</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{dir}/fw.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{dir}/fw.console'/><target port='0'/></serial>
  </devices>
</domain>",
        dir = p.display()
    );
    std::fs::write(p.join("fw.xml"), xml).unwrap();
    ok(p, &st(&["domain", "define", "fw.xml"]));
    let _daemon = DaemonProc::start(p, &[], &[]);
    ok(p, &st(&["domain", "start", "fw"]));
    wait_until(Duration::from_secs(120), "the guest powers off", || {
        domstate(p, "fw") == "shut off (shutdown)"
    });
    let console = std::fs::read_to_string(p.join("fw.console")).unwrap();
    assert!(console.contains("SYSLINUX"), "{console}");
    assert!(console.contains("STRATA-GUEST-EXIT=0"), "{console}");
    qemu_io(p, "qcow2", "fw.qcow2", &["read -P 0x5a 120M 64K"]);
    assert_clean(p, "fw.qcow2");
}
