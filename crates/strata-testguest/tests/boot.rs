//! The kit proves itself: real guests boot (directly and through SeaBIOS),
//! run fio with verification on a QEMU-native qcow2 disk, write data the
//! host reads back with qemu-io and qemu-img, report their exit codes, and
//! are killed at their deadline.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use strata_testguest::{kit, Error, Guest, GuestRun};

/// Runs a host tool, panicking with its output unless it succeeds.
fn host(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn report(what: &str, run: &GuestRun) {
    eprintln!(
        "{what}: workload started after {:?}, guest ended after {:?}",
        run.boot, run.elapsed
    );
}

/// 64 KiB of deterministic, non-repeating bytes.
fn pattern() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn fio_verifies_random_writes_on_a_qcow2_disk_and_the_host_reads_what_the_guest_wrote() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    let disk_s = disk.to_str().unwrap();
    host("qemu-img", &["create", "-q", "-f", "qcow2", disk_s, "64M"]);
    let data = dir.path().join("pattern.bin");
    std::fs::write(&data, pattern()).unwrap();

    // fio writes every 4k block of the first 16 MiB once, in random order,
    // 16 requests in flight, then reads each back and checks its crc32c.
    // Then two known patterns: 0xa5 at 32 MiB, the host's file at 40 MiB.
    let run = Guest::new(kit)
        .qcow2_disk(&disk)
        .data_file(&data)
        .workload(
            "set -e
             fio --name=verify --filename=/dev/vda --rw=randwrite --bs=4k --size=16M \
                 --ioengine=libaio --iodepth=16 --direct=1 \
                 --verify=crc32c --do_verify=1 --verify_fatal=1
             dd if=/dev/zero bs=64k count=1 2>/dev/null | tr '\\000' '\\245' \
                 | dd of=/dev/vda bs=64k seek=512 conv=fsync
             dd if=/data/pattern.bin of=/dev/vda bs=64k seek=640 conv=fsync
             echo workload-done",
        )
        .run()
        .unwrap()
        .expect_exit(0);
    report("fio on qcow2", &run);
    let out = run.workload_output();
    assert!(out.contains("workload-done"), "{out}");
    // No error, and the verify pass read back all 4096 blocks written.
    assert!(out.contains("err= 0"), "{out}");
    assert!(out.contains("issued rwts: total=4096,4096,"), "{out}");

    // The image is clean, and holds exactly what the guest wrote.
    host("qemu-img", &["check", "-q", disk_s]);
    let io = host(
        "qemu-io",
        &["-r", "-f", "qcow2", "-c", "read -P 0xa5 32M 64k", disk_s],
    );
    assert!(io.contains("read 65536/65536 bytes"), "{io}");
    let raw = dir.path().join("disk.raw");
    host(
        "qemu-img",
        &["convert", "-O", "raw", disk_s, raw.to_str().unwrap()],
    );
    let bytes = std::fs::read(&raw).unwrap();
    assert!(bytes[40 << 20..(40 << 20) + 65536] == pattern()[..]);
    // fio's region is written everywhere (no block left unwritten).
    assert!(bytes[..16 << 20]
        .chunks(4096)
        .all(|block| block.iter().any(|&b| b != 0)));
}

#[test]
fn firmware_boots_a_disk_made_with_the_kit_and_runs_its_workload() {
    let Some(kit) = kit() else { return };
    // The boot disk is /dev/vda: its MBR ends in 55 aa.
    let run = Guest::new(kit)
        .firmware()
        .workload("head -c 512 /dev/vda | tail -c 2 | od -An -tx1; exit 7")
        .run()
        .unwrap()
        .expect_exit(7);
    report("firmware boot", &run);
    assert!(run.console.contains("SYSLINUX"), "{}", run.console);
    assert!(run.console.contains("console=ttyS0"), "{}", run.console);
    assert_eq!(run.workload_output().trim(), "55 aa");
}

#[test]
fn firmware_boots_the_kits_own_boot_disk_from_ide() {
    let Some(kit) = kit() else { return };
    let mut drive = std::ffi::OsString::from("format=raw,if=ide,snapshot=on,file=");
    drive.push(&kit.boot_disk);
    let run = Guest::new(kit)
        .firmware_own_disk()
        .arg("-drive")
        .arg(drive)
        .run()
        .unwrap()
        .expect_exit(0);
    report("firmware boot (kit boot.img, IDE)", &run);
    assert!(run.console.contains("no /workload"), "{}", run.console);
}

#[test]
fn a_guest_with_shared_memory_and_two_cpus_reports_its_exit_code() {
    let Some(kit) = kit() else { return };
    let run = Guest::new(kit)
        .memory_mib(384)
        .smp(2)
        .shared_memory(true)
        .workload("grep -c ^processor /proc/cpuinfo; exit 5")
        .run()
        .unwrap()
        .expect_exit(5);
    report("shared memory, 2 cpus", &run);
    assert_eq!(run.workload_output().trim(), "2");
}

#[test]
fn a_guest_past_its_deadline_is_killed() {
    let Some(kit) = kit() else { return };
    let guest = Guest::new(kit)
        .workload("sleep 600")
        .timeout(Duration::from_secs(10))
        .spawn()
        .unwrap();
    let pid = guest.pid().unwrap();
    match guest.wait() {
        Err(Error::Timeout { after, .. }) => assert_eq!(after, Duration::from_secs(10)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still runs"
    );
}

/// Kills the process on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn fio_verifies_random_writes_on_a_vhost_user_blk_disk_served_by_qemu_storage_daemon() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let socket = dir.path().join("vhost.sock");
    // QEMU's own vhost-user-blk server: the reference the strata backend
    // is held to, and proof that the guest's shared memory is set up right.
    // Two queues: QEMU gives the device one per vCPU.
    let _daemon = Daemon(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file,filename={}",
                disk.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=export,node-name=file,writable=on,num-queues=2,addr.type=unix,addr.path={}",
                socket.display()
            ))
            .spawn()
            .expect("qemu-storage-daemon"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no vhost-user socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = Guest::new(kit)
        .vhost_user_blk(&socket)
        .smp(2)
        .workload(
            "set -e
             fio --name=verify --filename=/dev/vda --rw=randwrite --bs=4k --size=16M \
                 --ioengine=libaio --iodepth=16 --direct=1 \
                 --verify=crc32c --do_verify=1 --verify_fatal=1
             dd if=/dev/zero bs=64k count=1 2>/dev/null | tr '\\000' '\\132' \
                 | dd of=/dev/vda bs=64k seek=512 conv=fsync",
        )
        .run()
        .unwrap()
        .expect_exit(0);
    report("fio on vhost-user-blk (qemu-storage-daemon)", &run);
    assert!(run
        .workload_output()
        .contains("issued rwts: total=4096,4096,"));
    let io = host(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-U",
            "-c",
            "read -P 0x5a 32M 64k",
            disk.to_str().unwrap(),
        ],
    );
    assert!(io.contains("read 65536/65536 bytes"), "{io}");
}
