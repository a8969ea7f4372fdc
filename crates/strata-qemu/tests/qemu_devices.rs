//! Real QEMU (TCG) accepts the command lines strata builds and realises
//! every device: a virt-install-style machine with a vhost-user-blk disk
//! (qemu-storage-daemon as its backend) and an NBD disk, checked through
//! `qom-list`, `query-block`, `query-chardev`, `query-vnc` and `query-pci`;
//! ACPI off; UEFI firmware; the `pc` machine with the APIC off.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use common::*;
use serde_json::json;
use strata_qemu::hypervisor::Vm;
use strata_qemu::machine::{
    Controllers, CpuModel, Disk, DiskBackend, Firmware, Graphics, MachineType, NetBackend, Nic,
    Serial, Video, VncListen,
};
use strata_qemu::qmp::types::PciInfo;
use strata_qemu::qmp::RunState;
use strata_qemu::{Machine, QemuHypervisor, VmStatus};

/// qemu-storage-daemon exporting `vda.qcow2` over vhost-user-blk (two
/// queues) and `vdb.qcow2` over NBD, both in `dir`.
fn backends(dir: &Path) -> StorageDaemon {
    qcow2(&dir.join("vda.qcow2"), "64M");
    qcow2(&dir.join("vdb.qcow2"), "32M");
    let d = dir.display();
    let args: Vec<String> = [
        format!("--blockdev=driver=file,node-name=f0,filename={d}/vda.qcow2"),
        "--blockdev=driver=qcow2,node-name=d0,file=f0".into(),
        format!(
            "--export=type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={d}/vda.sock,writable=on,num-queues=2"
        ),
        format!("--blockdev=driver=file,node-name=f1,filename={d}/vdb.qcow2"),
        "--blockdev=driver=qcow2,node-name=d1,file=f1".into(),
        format!("--nbd-server=addr.type=unix,addr.path={d}/nbd.sock"),
        "--export=type=nbd,id=e1,node-name=d1,name=vdb".into(),
    ]
    .into();
    StorageDaemon::start(&args, &[&dir.join("vda.sock"), &dir.join("nbd.sock")])
}

/// What virt-install writes for a Linux guest, with a disk of each kind.
fn virt_install(dir: &Path) -> Machine {
    let mut m = Machine::new("virt-install");
    m.uuid = Some("3b0c7c36-4b8e-4a43-9d7c-0a1f8c3e8e11".into());
    m.memory_mib = 128;
    m.vcpus = 2;
    m.cpu = CpuModel::HostPassthrough;
    m.disks = vec![
        Disk {
            id: "vda".into(),
            backend: DiskBackend::VhostUser {
                socket: dir.join("vda.sock"),
                num_queues: 2,
                queue_size: Some(256),
            },
            boot_index: Some(1),
        },
        Disk {
            id: "vdb".into(),
            backend: DiskBackend::Nbd {
                socket: dir.join("nbd.sock"),
                export: "vdb".into(),
                read_only: true,
                serial: Some("strata-vdb".into()),
            },
            boot_index: Some(2),
        },
    ];
    m.nics = vec![Nic {
        id: "net0".into(),
        mac: "52:54:00:6b:3c:58".parse().unwrap(),
        backend: NetBackend::User,
    }];
    m.serial = Serial::File(dir.join("console.log"));
    m.controllers = Controllers {
        usb: true,
        virtio_serial: true,
        sata: true,
        spare_root_ports: 4,
    };
    m.graphics = Some(Graphics::Vnc(VncListen::Loopback { display: None }));
    m.video = Video::Virtio;
    m.usb_tablet = true;
    m.rng = true;
    m.balloon = true;
    m.guest_agent = Some(dir.join("ga.sock"));
    m.panic_device = true;
    m
}

#[tokio::test]
async fn a_virt_install_machine_starts_with_every_device() {
    let dir = tempdir();
    let _qsd = backends(dir.path());
    let h = QemuHypervisor::new();
    let m = virt_install(dir.path());
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), true)))
        .await
        .unwrap();
    let q = vm.qmp();

    // Every device, by id and type.
    let props = q.qom_list("/machine/peripheral").await.unwrap();
    let devices: BTreeMap<String, String> = props
        .into_iter()
        .filter_map(|p| {
            Some((
                p.name,
                p.type_
                    .strip_prefix("child<")?
                    .strip_suffix('>')?
                    .to_owned(),
            ))
        })
        .collect();
    let mut want: BTreeMap<String, String> = [
        ("video0", "virtio-vga"),
        ("usb", "qemu-xhci"),
        ("virtio-serial0", "virtio-serial-pci"),
        ("vda", "vhost-user-blk-pci"),
        ("vdb", "virtio-blk-pci"),
        ("net0", "virtio-net-pci"),
        ("rng0", "virtio-rng-pci"),
        ("balloon0", "virtio-balloon-pci"),
        ("serial0", "isa-serial"),
        ("channel0", "virtserialport"),
        ("input0", "usb-tablet"),
        ("panic0", "pvpanic"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect();
    for i in 1..=11 {
        want.insert(format!("pci.{i}"), "pcie-root-port".into());
    }
    assert_eq!(devices, want);

    // The NBD disk is a read-only nbd node; the chardevs are all there.
    let blocks = q.query_block().await.unwrap();
    let nbd: Vec<_> = blocks.iter().filter_map(|b| b.inserted.as_ref()).collect();
    assert_eq!(nbd.len(), 1, "{blocks:?}");
    assert_eq!(
        (nbd[0].node_name.as_deref(), nbd[0].drv.as_str(), nbd[0].ro),
        (Some("nbd-vdb"), "nbd", true)
    );
    let chardevs: BTreeSet<String> = q
        .query_chardev()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.label)
        .collect();
    for c in ["chr-qmp", "chr-vda", "chr-ga", "chr-serial0"] {
        assert!(chardevs.contains(c), "{c} missing: {chardevs:?}");
    }
    let serial = q
        .execute(
            "qom-get",
            Some(json!({"path": "/machine/peripheral/vdb", "property": "serial"})),
        )
        .await
        .unwrap();
    assert_eq!(serial, "strata-vdb");
    let queues = q
        .execute(
            "qom-get",
            Some(json!({"path": "/machine/peripheral/vda", "property": "num-queues"})),
        )
        .await
        .unwrap();
    assert_eq!(queues, 2);

    // VNC on loopback only.
    let vnc = q.query_vnc().await.unwrap();
    assert!(vnc.enabled);
    assert_eq!(vnc.host.as_deref(), Some("127.0.0.1"));
    let port: u16 = vnc.service.as_deref().unwrap().parse().unwrap();
    assert!((5900..6000).contains(&port), "{port}");
    assert!(
        dir.path().join("ga.sock").exists(),
        "the guest agent socket is listening"
    );

    // Run the firmware until it has numbered the buses behind the root
    // ports: then query-pci lists every PCI device where it was put.
    vm.resume().await.unwrap();
    let endpoints = [
        "usb",
        "virtio-serial0",
        "vda",
        "vdb",
        "net0",
        "rng0",
        "balloon0",
    ];
    let start = Instant::now();
    let found = loop {
        let buses = q.query_pci().await.unwrap();
        let ids: BTreeMap<String, (i64, i64, i64)> = PciInfo::flatten(&buses)
            .into_iter()
            .map(|d| (d.qdev_id.clone(), (d.bus, d.slot, d.function)))
            .collect();
        if endpoints.iter().all(|e| ids.contains_key(*e)) {
            break ids;
        }
        assert!(
            start.elapsed() < T,
            "query-pci never listed {endpoints:?}: {ids:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(found["video0"], (0, 1, 0));
    for e in endpoints {
        let (bus, slot, function) = found[e];
        assert!(
            bus > 0 && slot == 0 && function == 0,
            "{e} at {bus}:{slot}.{function}"
        );
    }
    let buses: BTreeSet<i64> = endpoints.iter().map(|e| found[*e].0).collect();
    assert_eq!(buses.len(), endpoints.len(), "one root port each");

    vm.qmp().quit().await.unwrap();
    assert!(within("exit", vm.wait()).await.success());
}

#[tokio::test]
async fn acpi_off_reaches_the_machine() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let mut m = tiny_machine(dir.path(), "no-acpi", Then::Halt, "acpi");
    m.features.acpi = false;
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    let acpi = vm
        .qmp()
        .execute(
            "qom-get",
            Some(json!({"path": "/machine", "property": "acpi"})),
        )
        .await
        .unwrap();
    assert_eq!(acpi, "off");
    wait_for_text(&dir.path().join("console.log"), "acpi").await;
    within("destroy", vm.destroy()).await.unwrap();
}

#[tokio::test]
async fn uefi_firmware_from_two_flash_images() {
    let dir = tempdir();
    let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let vars = dir.path().join("VARS.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).expect("OVMF (package ovmf) is needed");
    let h = QemuHypervisor::new();
    let mut m = Machine::new("uefi");
    m.memory_mib = 128;
    m.firmware = Firmware::Uefi {
        code: code.into(),
        vars,
    };
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), true)))
        .await
        .unwrap();
    let nodes = vm
        .qmp()
        .execute("query-named-block-nodes", Some(json!({"flat": true})))
        .await
        .unwrap();
    let by_name: BTreeMap<String, bool> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node-name"].as_str().unwrap().to_owned(),
                n["ro"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_name.get("fw-code"), Some(&true), "{by_name:?}");
    assert_eq!(by_name.get("fw-vars"), Some(&false), "{by_name:?}");
    vm.resume().await.unwrap();
    assert_eq!(
        vm.status().await.unwrap(),
        VmStatus::Active {
            running: true,
            state: RunState::Running
        }
    );
    within("destroy", vm.destroy()).await.unwrap();
}

#[tokio::test]
async fn a_pc_machine_with_the_apic_off_boots() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let mut m = tiny_machine(dir.path(), "pc", Then::Halt, "no-apic");
    m.machine_type = MachineType::pc();
    m.features.apic = false;
    m.controllers.sata = true;
    m.balloon = true;
    m.video = Video::Vga;
    let vm = within("start", h.start_qemu(&m, &start_options(dir.path(), false)))
        .await
        .unwrap();
    wait_for_text(&dir.path().join("console.log"), "no-apic").await;
    let cpu = vm.qmp().human_monitor_command("info cpus").await.unwrap();
    assert!(cpu.contains("CPU #0"), "{cpu}");
    let props: Vec<String> = vm
        .qmp()
        .qom_list("/machine/peripheral")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    for id in ["sata0", "balloon0", "video0", "serial0"] {
        assert!(props.iter().any(|p| p == id), "{id}: {props:?}");
    }
    within("destroy", vm.destroy()).await.unwrap();
}

#[tokio::test]
async fn unix_sockets_for_vnc_the_console_and_the_guest_agent() {
    let dir = tempdir();
    let h = QemuHypervisor::new();
    let mut m = tiny_machine(dir.path(), "sockets", Then::Halt, "hello over a socket");
    m.serial = Serial::Socket(dir.path().join("con.sock"));
    m.graphics = Some(Graphics::Vnc(VncListen::Unix(dir.path().join("vnc.sock"))));
    m.video = Video::Qxl;
    m.guest_agent = Some(dir.path().join("ga.sock"));
    // Connect to the console before the guest prints.
    let mut opts = start_options(dir.path(), true);
    opts.paused = true;
    let vm = within("start", h.start_qemu(&m, &opts)).await.unwrap();
    let vnc = vm.qmp().query_vnc().await.unwrap();
    assert_eq!(vnc.family.as_deref(), Some("unix"), "{vnc:?}");
    let mut con = tokio::net::UnixStream::connect(dir.path().join("con.sock"))
        .await
        .unwrap();
    tokio::net::UnixStream::connect(dir.path().join("ga.sock"))
        .await
        .unwrap();
    vm.resume().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("hello over a socket") {
        use tokio::io::AsyncReadExt;
        let n = within("console output", con.read(&mut buf)).await.unwrap();
        assert!(n > 0, "console closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    within("destroy", vm.destroy()).await.unwrap();
}
