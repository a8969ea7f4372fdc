//! Real guests (Linux under QEMU, TCG) on disks strata serves over
//! vhost-user-blk: fio with verification over random 4 KiB and 1 MiB
//! writes on a qcow2, two vCPUs on two queues, discards and write-zeroes
//! checked inside the guest and then on the host by qemu-img and qemu-io,
//! a read-only export, SeaBIOS booting a served disk, and a backend
//! restarted under a running guest.
//!
//! Skipped (with a message) when QEMU or the guest kit is missing, except
//! under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use strata_image::{ChainOptions, Image};
use strata_testguest::{kit, Guest};
use strata_vhost::{serve, Config, ServerHandle};

fn host(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

fn qcow2(dir: &Path, name: &str, size: &str) -> PathBuf {
    let path = dir.join(name);
    host(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path.to_str().unwrap(), size],
    );
    path
}

fn open(path: &Path, writable: bool) -> Arc<dyn Image> {
    let opts = ChainOptions {
        writable,
        ..ChainOptions::default()
    };
    strata_image::open(path, &opts).unwrap()
}

fn check(path: &Path) {
    let out = host("qemu-img", &["check", path.to_str().unwrap()]);
    assert!(out.contains("No errors were found"), "{out}");
}

/// Serves `image` and closes it after the server stops.
struct Served {
    server: Option<ServerHandle>,
    image: Arc<dyn Image>,
    socket: PathBuf,
}

impl Served {
    fn new(dir: &Path, image: Arc<dyn Image>, config: Config) -> Served {
        let socket = dir.join("vhost.sock");
        let server = serve(image.clone(), &socket, config).unwrap();
        Served {
            server: Some(server),
            image,
            socket,
        }
    }

    fn server(&self) -> &ServerHandle {
        self.server.as_ref().unwrap()
    }

    fn close(mut self) {
        self.server.take().unwrap().stop();
        self.image.close().unwrap();
    }
}

fn two_queues() -> Config {
    Config {
        queues: 2,
        serial: "strata-guest".into(),
        ..Config::default()
    }
}

#[test]
fn fio_verifies_random_writes_on_qcow2_over_two_queues() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2(dir.path(), "disk.qcow2", "256M");
    let served = Served::new(dir.path(), open(&path, true), two_queues());
    let run = Guest::new(kit)
        .vhost_user_blk(&served.socket)
        .smp(2)
        .timeout(Duration::from_secs(300))
        .workload(
            "set -e
             cat /sys/block/vda/serial; echo
             ls /sys/block/vda/mq
             fio --name=small --filename=/dev/vda --rw=randwrite --bs=4k --size=24M \
                 --ioengine=libaio --iodepth=16 --direct=1 --numjobs=2 --offset_increment=32M \
                 --cpus_allowed_policy=split --cpus_allowed=0-1 \
                 --verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting
             fio --name=big --filename=/dev/vda --rw=randwrite --bs=1M --size=64M --offset=128M \
                 --ioengine=libaio --iodepth=4 --direct=1 \
                 --verify=crc32c --do_verify=1 --verify_fatal=1",
        )
        .run()
        .unwrap()
        .expect_exit(0);
    let out = run.workload_output();
    assert!(out.contains("strata-guest"), "serial:\n{out}");
    assert!(
        out.contains("issued rwts: total=12288,12288,"),
        "4 KiB job:\n{out}"
    );
    assert!(
        out.contains("issued rwts: total=64,64,"),
        "1 MiB job:\n{out}"
    );
    let per_queue = served.server().gate().requests_per_queue();
    assert!(
        per_queue.iter().all(|&n| n > 1000),
        "both queues carry I/O: {per_queue:?}"
    );
    served.close();
    check(&path);
}

#[test]
fn discard_and_write_zeroes_reach_the_image() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2(dir.path(), "disk.qcow2", "64M");
    let pattern: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let pattern_file = dir.path().join("pattern");
    std::fs::write(&pattern_file, &pattern).unwrap();
    let served = Served::new(dir.path(), open(&path, true), Config::default());
    let run = Guest::new(kit)
        .vhost_user_blk(&served.socket)
        .data_file(&pattern_file)
        .workload(
            "set -e
             nonzero() { dd if=/dev/vda bs=64k skip=$1 count=$2 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c; }
             cat /sys/block/vda/queue/discard_max_bytes /sys/block/vda/queue/write_zeroes_max_bytes
             dd if=/data/pattern of=/dev/vda bs=1M oflag=direct 2>/dev/null
             dd if=/dev/vda of=/tmp/back bs=1M count=4 iflag=direct 2>/dev/null
             cmp /data/pattern /tmp/back
             /usr/sbin/blkdiscard -o 1048576 -l 1048576 /dev/vda
             /usr/sbin/blkdiscard -z -o 2097152 -l 524288 /dev/vda
             echo discarded=$(nonzero 16 16) zeroed=$(nonzero 32 8) kept=$(nonzero 40 24)
             sync",
        )
        .run()
        .unwrap()
        .expect_exit(0);
    let out = run.workload_output();
    assert!(out.contains("1073741824\n1073741824"), "limits:\n{out}");
    // Discarded clusters of a qcow2 without backing read as zeros.
    assert!(out.contains("discarded=0 zeroed=0 kept="), "{out}");
    served.close();
    check(&path);
    // The host reads what the guest left, through QEMU's qcow2 driver.
    let raw = dir.path().join("back.raw");
    host(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let back = std::fs::read(&raw).unwrap();
    let mib = 1 << 20;
    assert!(back[..mib] == pattern[..mib], "first MiB");
    assert!(back[mib..2 * mib].iter().all(|&b| b == 0), "discarded MiB");
    assert!(
        back[2 * mib..2 * mib + mib / 2].iter().all(|&b| b == 0),
        "zeroed 512 KiB"
    );
    assert!(
        back[2 * mib + mib / 2..4 * mib] == pattern[2 * mib + mib / 2..],
        "the rest"
    );
    let io = host(
        "qemu-io",
        &[
            "-r",
            "-f",
            "qcow2",
            "-c",
            "read -P 0 1M 1536k",
            path.to_str().unwrap(),
        ],
    );
    assert!(io.contains("read 1572864/1572864 bytes"), "{io}");
    let map = host(
        "qemu-img",
        &["map", "--output=json", path.to_str().unwrap()],
    );
    assert!(map.contains("\"start\": 1048576, \"length\": 1048576, \"depth\": 0, \"present\": false")
        || map.contains("\"start\": 1048576, \"length\": 1048576, \"depth\": 0, \"present\": true, \"zero\": true"),
        "the discarded MiB holds no data:\n{map}");
}

#[test]
fn a_read_only_export_with_4k_blocks_refuses_guest_writes() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    let config = Config {
        readonly: true,
        block_size: 4096,
        ..Config::default()
    };
    let served = Served::new(dir.path(), open(&path, false), config);
    let run = Guest::new(kit)
        .vhost_user_blk(&served.socket)
        .workload(
            "echo ro=$(cat /sys/block/vda/ro) lbs=$(cat /sys/block/vda/queue/logical_block_size)
             if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>/dev/null; then echo write=ok; else echo write=refused; fi
             dd if=/dev/vda bs=1M count=1 iflag=direct 2>/dev/null | md5sum",
        )
        .run()
        .unwrap()
        .expect_exit(0);
    let out = run.workload_output();
    assert!(out.contains("ro=1 lbs=4096"), "{out}");
    assert!(out.contains("write=refused"), "{out}");
    let md5 = host("md5sum", &[path.to_str().unwrap()]);
    assert!(
        out.contains(md5.split_whitespace().next().unwrap()),
        "{out}\n{md5}"
    );
    served.close();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn seabios_boots_a_qcow2_disk_strata_serves_and_the_guest_writes_to_it() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The kit's boot disk with a workload that writes 64 KiB of 0x5a past
    // the filesystem, in a qcow2 grown to 128 MiB.
    let raw = dir.path().join("boot.raw");
    kit.boot_disk(
        "set -e
         head -c 512 /dev/vda | tail -c 2 | od -An -tx1
         dd if=/dev/zero bs=64k count=1 2>/dev/null | tr '\\000' '\\132' \\
             | dd of=/dev/vda bs=64k seek=1920 conv=fsync",
        &[],
        &raw,
    )
    .unwrap();
    let path = dir.path().join("boot.qcow2");
    let path_s = path.to_str().unwrap();
    host(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            path_s,
        ],
    );
    host("qemu-img", &["resize", "-q", path_s, "128M"]);
    let served = Served::new(dir.path(), open(&path, true), Config::default());
    let run = Guest::new(kit)
        .firmware_own_disk()
        .vhost_user_blk(&served.socket)
        .run()
        .unwrap()
        .expect_exit(0);
    // SeaBIOS found the disk, syslinux loaded the kernel and initramfs
    // from it, and the workload ran from it.
    assert!(run.console.contains("SYSLINUX"), "{}", run.console);
    assert_eq!(
        run.workload_output().lines().next().map(str::trim),
        Some("55 aa")
    );
    served.close();
    check(&path);
    let io = host(
        "qemu-io",
        &["-r", "-f", "qcow2", "-c", "read -P 0x5a 120M 64k", path_s],
    );
    assert!(io.contains("read 65536/65536 bytes"), "{io}");
}

#[test]
fn guest_io_goes_on_across_a_backend_restart() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2(dir.path(), "disk.qcow2", "128M");
    let socket = dir.path().join("vhost.sock");
    let served = Served::new(dir.path(), open(&path, true), two_queues());
    // QEMU reconnects to the socket within a second of losing it.
    let mut guest = Guest::new(kit)
        .smp(2)
        .shared_memory(true)
        .arg("-chardev")
        .arg(format!(
            "socket,id=vu,path={},reconnect-ms=500",
            socket.display()
        ))
        .arg("-device")
        .arg("vhost-user-blk-pci,chardev=vu,num-queues=2")
        .timeout(Duration::from_secs(300))
        .workload(
            "set -e
             echo RESTART-ME
             fio --name=across --filename=/dev/vda --rw=randwrite --bs=4k --size=48M \
                 --ioengine=libaio --iodepth=8 --direct=1 --numjobs=2 --offset_increment=64M \
                 --time_based --runtime=10 \
                 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=256 \
                 --group_reporting
             echo FIO-DONE",
        )
        .spawn()
        .unwrap();
    guest.wait_for("RESTART-ME").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = served
        .server()
        .gate()
        .requests_per_queue()
        .iter()
        .sum::<u64>();
    assert!(before > 0, "the guest did I/O before the restart");
    // The backend's handle is dropped (it answers what it took, closes the
    // connection; the image closes with its last reference) and a new one
    // serves the same socket.
    drop(served);
    std::thread::sleep(Duration::from_millis(300));
    let served = Served::new(dir.path(), open(&path, true), two_queues());
    let run = guest.wait().unwrap().expect_exit(0);
    let out = run.workload_output();
    assert!(out.contains("FIO-DONE") && out.contains("err= 0"), "{out}");
    // Verification reads ran along the writes (verify_backlog).
    let reads: u64 = out
        .split("issued rwts: total=")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(reads > 1000, "verification reads: {reads}\n{out}");
    assert!(served.server().connections() >= 1, "QEMU reconnected");
    let after = served
        .server()
        .gate()
        .requests_per_queue()
        .iter()
        .sum::<u64>();
    assert!(after > 0, "the guest did I/O after the restart");
    served.close();
    check(&path);
}

/// A QMP connection: one command at a time, its answer as text.
struct Qmp(std::io::BufReader<std::os::unix::net::UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("QMP {}: {e}", path.display()),
            }
        };
        let mut qmp = Qmp(std::io::BufReader::new(stream));
        qmp.line(); // the greeting
        qmp.cmd(r#"{"execute": "qmp_capabilities"}"#);
        qmp
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut self.0, &mut l).unwrap();
        assert!(!l.is_empty(), "QMP closed");
        l
    }

    /// Sends `json` and returns the `return` or `error` line (events skipped).
    fn cmd(&mut self, json: &str) -> String {
        use std::io::Write;
        writeln!(self.0.get_mut(), "{json}").unwrap();
        loop {
            let l = self.line();
            if l.contains("\"return\"") || l.contains("\"error\"") {
                assert!(!l.contains("\"error\""), "{json}: {l}");
                return l;
            }
        }
    }

    /// Polls `query-migrate` until it completes.
    fn wait_migration(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.cmd(r#"{"execute": "query-migrate"}"#);
            if r.contains("\"completed\"") {
                return;
            }
            assert!(!r.contains("\"failed\""), "migration failed: {r}");
            assert!(std::time::Instant::now() < deadline, "migration stuck: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// QEMU saves a running guest (live migration to a file: it refuses a
/// vhost-user device without dirty logging) while fio writes and verifies
/// through strata; a second QEMU restores it on the same backend, and fio
/// goes on verifying to the end.
#[test]
fn a_running_guest_is_saved_and_restored_on_the_same_backend() {
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = qcow2(dir.path(), "disk.qcow2", "128M");
    let served = Served::new(dir.path(), open(&path, true), Config::default());
    let state = dir.path().join("state.bin");
    let workload = "set -e
         echo SAVE-ME
         fio --name=saved --filename=/dev/vda --rw=randwrite --bs=4k --size=32M \
             --ioengine=libaio --iodepth=8 --direct=1 --time_based --runtime=20 \
             --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=64
         echo FIO-DONE";
    let machine = |qmp: &Path| {
        Guest::new(kit)
            .vhost_user_blk(&served.socket)
            .timeout(Duration::from_secs(300))
            .workload(workload)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
    };
    let qmp1 = dir.path().join("qmp1.sock");
    let mut first = machine(&qmp1).spawn().unwrap();
    first.wait_for("SAVE-ME").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut qmp = Qmp::connect(&qmp1);
    qmp.cmd(&format!(
        r#"{{"execute": "migrate", "arguments": {{"uri": "file:{}"}}}}"#,
        state.display()
    ));
    qmp.wait_migration();
    first.kill();
    let qmp2 = dir.path().join("qmp2.sock");
    let second = machine(&qmp2)
        .arg("-incoming")
        .arg("defer")
        .spawn()
        .unwrap();
    let mut qmp = Qmp::connect(&qmp2);
    qmp.cmd(&format!(
        r#"{{"execute": "migrate-incoming", "arguments": {{"uri": "file:{}"}}}}"#,
        state.display()
    ));
    qmp.wait_migration();
    qmp.cmd(r#"{"execute": "cont"}"#);
    let run = second.wait().unwrap().expect_exit(0);
    assert!(
        run.console.contains("FIO-DONE") && run.console.contains("err= 0"),
        "{}",
        run.console
    );
    assert!(
        served.server().connections() >= 2,
        "the restored QEMU connected again"
    );
    served.close();
    check(&path);
}

/// The gate on a running guest, the way a live disk snapshot uses it: while
/// fio writes and verifies, the disk is quiesced (no request runs), flushed,
/// an external qcow2 overlay is made over the served image and swapped in
/// with that image as its backing, and the guest resumes on the overlay.
/// fio's verification reads go through both layers; afterwards the base
/// holds only what was written before the snapshot and qemu-img checks
/// both.
#[test]
fn a_live_snapshot_swaps_in_an_overlay_under_a_running_guest() {
    use strata_image::qcow2::{OpenOptions, Qcow2};
    use strata_image::storage::FileStorage;
    let Some(kit) = kit() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base_path = qcow2(dir.path(), "base.qcow2", "128M");
    let base = open(&base_path, true);
    let served = Served::new(dir.path(), base.clone(), two_queues());
    let mut guest = Guest::new(kit)
        .vhost_user_blk(&served.socket)
        .smp(2)
        .timeout(Duration::from_secs(300))
        .workload(
            "set -e
             echo SNAPSHOT-ME
             fio --name=snap --filename=/dev/vda --rw=randwrite --bs=4k --size=32M \
                 --ioengine=libaio --iodepth=8 --direct=1 --numjobs=2 --offset_increment=64M \
                 --time_based --runtime=12 --group_reporting \
                 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_backlog=128
             echo FIO-DONE",
        )
        .spawn()
        .unwrap();
    guest.wait_for("SNAPSHOT-ME").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let gate = served.server().gate();
    let overlay_path = dir.path().join("overlay.qcow2");
    let stalled = {
        let paused = gate.quiesce(Duration::from_secs(30)).unwrap();
        assert_eq!(gate.in_flight(), 0);
        let taken = gate.requests_per_queue().iter().sum::<u64>();
        base.flush().unwrap();
        strata_image::ops::external::create_overlay(
            &base_path,
            strata_image::Format::Qcow2,
            base.size(),
            &overlay_path,
        )
        .unwrap();
        let st = Arc::new(FileStorage::open(&overlay_path, true).unwrap());
        let opts = OpenOptions {
            writable: true,
            lock: true,
            ..OpenOptions::default()
        };
        let overlay: Arc<dyn Image> = Arc::new(Qcow2::open(st, Some(base.clone()), &opts).unwrap());
        // Nothing is taken from the guest while paused.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(gate.requests_per_queue().iter().sum::<u64>(), taken);
        let old = paused.swap_image(overlay).unwrap();
        assert!(Arc::ptr_eq(&old, &base));
        taken
    };
    let run = guest.wait().unwrap().expect_exit(0);
    let out = run.workload_output();
    assert!(out.contains("FIO-DONE") && out.contains("err= 0"), "{out}");
    let after = gate.requests_per_queue().iter().sum::<u64>();
    assert!(
        after > stalled + 1000,
        "the guest went on after the swap: {stalled} -> {after}"
    );
    drop(base);
    served.close();
    check(&overlay_path);
    check(&base_path);
    let info = host("qemu-img", &["info", overlay_path.to_str().unwrap()]);
    assert!(info.contains("backing file: base.qcow2"), "{info}");
}
