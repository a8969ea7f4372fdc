//! Properties of the command line, checked on the arguments themselves
//! (no golden files). That QEMU accepts them is checked by the tests that
//! run it (`tests/`).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::machine::*;
use crate::Error;

fn runtime() -> Runtime {
    Runtime {
        qmp_socket: "/run/s/qmp.sock".into(),
        pid_file: "/run/s/qemu.pid".into(),
    }
}

fn build(m: &Machine) -> Vec<OsString> {
    command_line(m, &runtime(), &Capabilities { sandbox: true }).unwrap()
}

fn invalid(m: &Machine) -> (String, String) {
    match command_line(m, &runtime(), &Capabilities::default()) {
        Err(Error::InvalidMachine { field, reason }) => (field, reason),
        other => panic!("expected an invalid machine, got {other:?}"),
    }
}

/// The values given to every occurrence of `opt`.
fn values<'a>(args: &'a [OsString], opt: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == opt)
        .map(|w| w[1].to_str().unwrap())
        .collect()
}

fn value<'a>(args: &'a [OsString], opt: &str) -> &'a str {
    let v = values(args, opt);
    assert_eq!(v.len(), 1, "{opt} given {} times: {v:?}", v.len());
    v[0]
}

/// Every JSON `-device`, in order.
fn devices(args: &[OsString]) -> Vec<Value> {
    values(args, "-device")
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn device(args: &[OsString], id: &str) -> Value {
    let found: Vec<Value> = devices(args)
        .into_iter()
        .filter(|d| d["id"] == id)
        .collect();
    assert_eq!(found.len(), 1, "device {id}: {found:?}");
    found.into_iter().next().unwrap()
}

fn has_flag(args: &[OsString], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

fn vhost_disk(id: &str, socket: &str) -> Disk {
    Disk {
        id: id.into(),
        backend: DiskBackend::VhostUser {
            socket: socket.into(),
            num_queues: 2,
            queue_size: None,
        },
        boot_index: None,
    }
}

fn nbd_disk(id: &str, socket: &str) -> Disk {
    Disk {
        id: id.into(),
        backend: DiskBackend::Nbd {
            socket: socket.into(),
            export: "vdb".into(),
            read_only: true,
            serial: Some("SER1".into()),
        },
        boot_index: None,
    }
}

/// Everything virt-install gives a Linux guest, and a disk of each kind.
fn virt_install() -> Machine {
    let mut m = Machine::new("vm1");
    m.cpu = CpuModel::HostPassthrough;
    m.vcpus = 2;
    m.uuid = Some("8f0c7c36-4b8e-4a43-9d7c-0a1f8c3e8e11".into());
    let mut vda = vhost_disk("vda", "/run/s/vda.sock");
    vda.boot_index = Some(1);
    m.disks = vec![vda, nbd_disk("vdb", "/run/s/nbd.sock")];
    m.nics = vec![Nic {
        id: "net0".into(),
        mac: "52:54:00:12:34:56".parse().unwrap(),
        backend: NetBackend::User,
    }];
    m.serial = Serial::File("/run/s/console.log".into());
    m.controllers = Controllers {
        usb: true,
        virtio_serial: true,
        sata: true,
        spare_root_ports: 3,
    };
    m.graphics = Some(Graphics::Vnc(VncListen::Loopback { display: None }));
    m.video = Video::Virtio;
    m.usb_tablet = true;
    m.rng = true;
    m.balloon = true;
    m.guest_agent = Some("/run/s/ga.sock".into());
    m.panic_device = true;
    m
}

#[test]
fn every_command_line_has_the_fixed_options() {
    let m = Machine::new("vm1");
    let a = build(&m);
    for flag in ["-S", "-nodefaults", "-no-user-config"] {
        assert!(has_flag(&a, flag), "{flag} missing: {a:?}");
    }
    assert_eq!(value(&a, "-display"), "none");
    assert_eq!(value(&a, "-name"), "guest=vm1,debug-threads=on");
    assert_eq!(value(&a, "-machine"), "q35,acpi=on");
    assert_eq!(value(&a, "-accel"), "tcg");
    assert_eq!(value(&a, "-m"), "256M");
    assert_eq!(value(&a, "-smp"), "1");
    assert_eq!(value(&a, "-rtc"), "base=utc");
    assert_eq!(
        value(&a, "-action"),
        "reboot=reset,shutdown=poweroff,panic=shutdown"
    );
    assert_eq!(value(&a, "-pidfile"), "/run/s/qemu.pid");
    assert_eq!(
        value(&a, "-chardev"),
        "socket,id=chr-qmp,path=/run/s/qmp.sock,server=on,wait=off"
    );
    assert_eq!(value(&a, "-mon"), "chardev=chr-qmp,mode=control");
    assert!(value(&a, "-sandbox").starts_with("on,"));
    assert!(
        values(&a, "-cpu").is_empty(),
        "the default model needs no -cpu"
    );
    assert!(devices(&a).is_empty(), "no devices asked for: {a:?}");
    assert!(values(&a, "-object").is_empty());

    // The same machine, the same arguments; no sandbox without seccomp.
    assert_eq!(a, build(&m));
    let plain = command_line(&m, &runtime(), &Capabilities { sandbox: false }).unwrap();
    assert!(values(&plain, "-sandbox").is_empty());
    assert_eq!(plain.len(), a.len() - 2);
}

#[test]
fn acpi_off_is_a_machine_property() {
    let mut m = Machine::new("vm1");
    m.features.acpi = false;
    assert_eq!(value(&build(&m), "-machine"), "q35,acpi=off");
}

#[test]
fn cpu_models_follow_the_accelerator() {
    let mut m = Machine::new("vm1");
    m.cpu = CpuModel::HostPassthrough;
    assert_eq!(value(&build(&m), "-cpu"), "max");
    m.accel = Accel::Kvm;
    assert_eq!(value(&build(&m), "-cpu"), "host");
    assert_eq!(value(&build(&m), "-accel"), "kvm");
    m.cpu = CpuModel::Named("Skylake-Client".into());
    assert_eq!(value(&build(&m), "-cpu"), "Skylake-Client");
    m.cpu = CpuModel::Named("max,pmu=on".into());
    assert_eq!(invalid(&m).0, "cpu");
}

#[test]
fn apic_off_only_on_pc() {
    let mut m = Machine::new("vm1");
    m.features.apic = false;
    assert_eq!(invalid(&m).0, "features.apic");
    m.machine_type = MachineType::pc();
    assert_eq!(value(&build(&m), "-cpu"), "qemu64,-apic");
    m.cpu = CpuModel::HostPassthrough;
    assert_eq!(value(&build(&m), "-cpu"), "max,-apic");
}

#[test]
fn machine_types_are_q35_or_pc_families() {
    assert_eq!(
        MachineType::named("pc-q35-10.0").unwrap().chipset(),
        Chipset::Q35
    );
    assert_eq!(
        MachineType::named("pc-i440fx-9.2").unwrap().chipset(),
        Chipset::I440fx
    );
    assert!(MachineType::named("virt").is_err());
    assert!(MachineType::named("q35,acpi=off").is_err());
    let mut m = Machine::new("vm1");
    m.machine_type = MachineType::named("pc-q35-10.0").unwrap();
    assert_eq!(value(&build(&m), "-machine"), "pc-q35-10.0,acpi=on");
}

#[test]
fn lifecycle_actions() {
    let mut m = Machine::new("vm1");
    m.lifecycle = Lifecycle {
        on_poweroff: OnPoweroff::Pause,
        on_reboot: OnReboot::Poweroff,
        on_crash: OnCrash::Pause,
    };
    assert_eq!(
        value(&build(&m), "-action"),
        "reboot=shutdown,shutdown=pause,panic=pause"
    );
    m.lifecycle.on_crash = OnCrash::ExitFailure;
    assert!(value(&build(&m), "-action").ends_with("panic=exit-failure"));
    m.lifecycle.on_crash = OnCrash::Ignore;
    assert!(value(&build(&m), "-action").ends_with("panic=none"));
    m.clock = ClockBase::Localtime;
    assert_eq!(value(&build(&m), "-rtc"), "base=localtime");
}

#[test]
fn vhost_user_disks_bring_shared_memory() {
    let mut m = Machine::new("vm1");
    m.memory_mib = 512;
    m.disks = vec![vhost_disk("vda", "/run/s/vda.sock")];
    m.disks[0].boot_index = Some(1);
    let a = build(&m);
    assert_eq!(value(&a, "-machine"), "q35,acpi=on,memory-backend=pc.ram");
    let obj: Value = serde_json::from_str(value(&a, "-object")).unwrap();
    assert_eq!(
        obj,
        json!({"qom-type": "memory-backend-memfd", "id": "pc.ram", "size": 512u64 << 20, "share": true})
    );
    assert_eq!(
        value(&a, "-m"),
        "512M",
        "-m must agree with the backend's size"
    );
    let chardevs = values(&a, "-chardev");
    assert!(
        chardevs.contains(&"socket,id=chr-vda,path=/run/s/vda.sock,reconnect-ms=1000"),
        "{chardevs:?}"
    );
    let d = device(&a, "vda");
    assert_eq!(d["driver"], "vhost-user-blk-pci");
    assert_eq!(d["chardev"], "chr-vda");
    assert_eq!(d["num-queues"], 2);
    assert_eq!(d["bootindex"], 1);
    assert!(d.get("queue-size").is_none());

    // Shared memory on its own, without vhost-user.
    let mut m = Machine::new("vm1");
    m.shared_memory = true;
    assert_eq!(
        value(&build(&m), "-machine"),
        "q35,acpi=on,memory-backend=pc.ram"
    );
}

#[test]
fn nbd_disks_are_blockdevs_over_unix_sockets() {
    let mut m = Machine::new("vm1");
    m.disks = vec![nbd_disk("vdb", "/run/s/nbd.sock")];
    m.disks[0].boot_index = Some(2);
    let a = build(&m);
    let bd: Value = serde_json::from_str(value(&a, "-blockdev")).unwrap();
    assert_eq!(
        bd,
        json!({"driver": "nbd", "node-name": "nbd-vdb", "export": "vdb", "read-only": true,
               "server": {"type": "unix", "path": "/run/s/nbd.sock"}})
    );
    let d = device(&a, "vdb");
    assert_eq!(d["driver"], "virtio-blk-pci");
    assert_eq!(d["drive"], "nbd-vdb");
    assert_eq!(d["serial"], "SER1");
    assert_eq!(d["bootindex"], 2);
    assert!(
        values(&a, "-object").is_empty(),
        "NBD needs no shared memory"
    );
    assert_eq!(value(&a, "-machine"), "q35,acpi=on");
    // The backend comes before the device that uses it.
    let pos = |s: &str| {
        a.iter()
            .position(|x| x.to_str().unwrap().contains(s))
            .unwrap()
    };
    assert!(pos("\"node-name\":\"nbd-vdb\"") < pos("\"drive\":\"nbd-vdb\""));
}

#[test]
fn q35_puts_each_pci_device_behind_its_own_root_port() {
    let m = virt_install();
    let a = build(&m);
    let devs = devices(&a);
    let ports: Vec<&Value> = devs
        .iter()
        .filter(|d| d["driver"] == "pcie-root-port")
        .collect();
    let endpoints: Vec<&Value> = devs
        .iter()
        .filter(|d| d["bus"].as_str().is_some_and(|b| b.starts_with("pci.")))
        .collect();
    // usb, virtio-serial, two disks, a NIC, rng, balloon; plus three spare.
    assert_eq!(endpoints.len(), 7, "{endpoints:?}");
    assert_eq!(ports.len(), 7 + 3);
    let mut used = HashSet::new();
    for e in &endpoints {
        let bus = e["bus"].as_str().unwrap();
        assert!(
            ports.iter().any(|p| p["id"] == bus),
            "{bus} is not a root port"
        );
        assert!(used.insert(bus), "{bus} used twice");
        assert_eq!(e["addr"], "0x0");
    }
    // Root ports: unique chassis, port and address, on pcie.0.
    for key in ["chassis", "port", "addr", "id"] {
        let set: HashSet<String> = ports.iter().map(|p| p[key].to_string()).collect();
        assert_eq!(set.len(), ports.len(), "{key} repeats");
    }
    assert!(ports.iter().all(|p| p["bus"] == "pcie.0"));
    assert_eq!(ports[8]["addr"], "0x3.0x0");
    assert_eq!(ports[8]["multifunction"], true);
    // Every root port is defined before the device on it.
    let first_endpoint = devs
        .iter()
        .position(|d| d["bus"].as_str().is_some_and(|b| b.starts_with("pci.")))
        .unwrap();
    let last_port = devs
        .iter()
        .rposition(|d| d["driver"] == "pcie-root-port")
        .unwrap();
    assert!(last_port < first_endpoint);
    // The video card at pcie.0 slot 1, before the root ports.
    let v = device(&a, "video0");
    assert_eq!(
        (v["driver"].as_str(), v["bus"].as_str(), v["addr"].as_str()),
        (Some("virtio-vga"), Some("pcie.0"), Some("0x1"))
    );
    assert_eq!(devs[0]["id"], "video0");
}

#[test]
fn device_ids_are_unique_and_every_device_is_there() {
    let a = build(&virt_install());
    let devs = devices(&a);
    let mut ids = HashMap::new();
    for d in &devs {
        let id = d["id"].as_str().expect("every device has an id");
        assert!(
            ids.insert(id.to_owned(), d["driver"].as_str().unwrap().to_owned())
                .is_none(),
            "{id} twice"
        );
    }
    for (id, driver) in [
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
        ("video0", "virtio-vga"),
    ] {
        assert_eq!(ids.get(id).map(String::as_str), Some(driver), "{id}");
    }
    assert!(!ids.contains_key("sata0"), "q35's AHCI is built in");
    assert_eq!(device(&a, "net0")["mac"], "52:54:00:12:34:56");
    assert_eq!(device(&a, "channel0")["name"], "org.qemu.guest_agent.0");
    assert_eq!(device(&a, "channel0")["bus"], "virtio-serial0.0");
    assert_eq!(device(&a, "input0")["bus"], "usb.0");
    let rng: Vec<Value> = values(&a, "-object")
        .iter()
        .map(|o| serde_json::from_str(o).unwrap())
        .collect();
    assert!(rng
        .iter()
        .any(|o| o["qom-type"] == "rng-random" && o["filename"] == "/dev/urandom"));
    let netdev: Value = serde_json::from_str(value(&a, "-netdev")).unwrap();
    assert_eq!(netdev, json!({"type": "user", "id": "hostnet-net0"}));
    assert_eq!(device(&a, "net0")["netdev"], "hostnet-net0");
    let chardevs = values(&a, "-chardev");
    assert!(chardevs.contains(&"file,id=chr-serial0,path=/run/s/console.log,append=on"));
    assert!(chardevs.contains(&"socket,id=chr-ga,path=/run/s/ga.sock,server=on,wait=off"));
    assert_eq!(value(&a, "-vnc"), "127.0.0.1:0,to=99");
    assert!(
        values(&a, "-display").is_empty(),
        "graphics replace -display none"
    );
    assert_eq!(value(&a, "-uuid"), "8f0c7c36-4b8e-4a43-9d7c-0a1f8c3e8e11");
}

#[test]
fn devices_bring_the_controllers_they_need() {
    let mut m = Machine::new("vm1");
    m.usb_tablet = true;
    m.guest_agent = Some("/run/s/ga.sock".into());
    let a = build(&m);
    assert_eq!(device(&a, "usb")["driver"], "qemu-xhci");
    assert_eq!(device(&a, "virtio-serial0")["driver"], "virtio-serial-pci");
}

#[test]
fn pc_machines_use_the_pci_root_bus() {
    let mut m = virt_install();
    m.machine_type = MachineType::pc();
    let a = build(&m);
    let devs = devices(&a);
    assert!(devs.iter().all(|d| d["driver"] != "pcie-root-port"));
    assert!(
        devs.iter()
            .filter(|d| d["id"] != "video0" && d["id"] != "input0" && d["id"] != "channel0")
            .all(|d| d.get("bus").is_none()),
        "{devs:?}"
    );
    assert_eq!(device(&a, "video0")["bus"], "pci.0");
    assert_eq!(device(&a, "sata0")["driver"], "ich9-ahci");
}

#[test]
fn commas_in_names_and_paths_are_escaped_where_options_are_parsed() {
    let mut m = Machine::new("a,b");
    m.serial = Serial::Socket("/run/s,x/con.sock".into());
    m.graphics = Some(Graphics::Vnc(VncListen::Unix("/run/s,x/vnc.sock".into())));
    m.kernel = Some(DirectKernel {
        kernel: "/boot/vmlinuz,1".into(),
        initrd: Some("/boot/initrd".into()),
        cmdline: Some("console=ttyS0,115200 quiet".into()),
    });
    let a = build(&m);
    assert_eq!(value(&a, "-name"), "guest=a,,b,debug-threads=on");
    assert!(values(&a, "-chardev")
        .contains(&"socket,id=chr-serial0,path=/run/s,,x/con.sock,server=on,wait=off"));
    assert_eq!(value(&a, "-vnc"), "unix:/run/s,,x/vnc.sock");
    // -kernel, -initrd and -append are taken as they are.
    assert_eq!(value(&a, "-kernel"), "/boot/vmlinuz,1");
    assert_eq!(value(&a, "-initrd"), "/boot/initrd");
    assert_eq!(value(&a, "-append"), "console=ttyS0,115200 quiet");
}

#[test]
fn paths_that_are_not_utf8_go_where_options_are_parsed_and_are_refused_in_json() {
    let odd = PathBuf::from(OsStr::from_bytes(b"/run/\xff.sock"));
    let mut m = Machine::new("vm1");
    m.disks = vec![vhost_disk("vda", "x")];
    if let DiskBackend::VhostUser { socket, .. } = &mut m.disks[0].backend {
        *socket = odd.clone();
    }
    let a = build(&m);
    assert!(a
        .iter()
        .any(|x| x.as_bytes() == b"socket,id=chr-vda,path=/run/\xff.sock,reconnect-ms=1000"));
    m.disks = vec![nbd_disk("vdb", "x")];
    if let DiskBackend::Nbd { socket, .. } = &mut m.disks[0].backend {
        *socket = odd;
    }
    let (field, reason) = invalid(&m);
    assert_eq!(field, "disks[0].socket");
    assert!(reason.contains("UTF-8"), "{reason}");
}

#[test]
fn uefi_firmware_is_two_pflash_blockdevs() {
    let mut m = Machine::new("vm1");
    m.firmware = Firmware::Uefi {
        code: "/fw/CODE.fd".into(),
        vars: "/vm/VARS.fd".into(),
    };
    let a = build(&m);
    assert_eq!(
        value(&a, "-machine"),
        "q35,acpi=on,pflash0=fw-code,pflash1=fw-vars"
    );
    let bds: Vec<Value> = values(&a, "-blockdev")
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(bds.len(), 4);
    assert!(bds
        .iter()
        .any(|b| b["node-name"] == "fw-code" && b["read-only"] == true));
    assert!(bds
        .iter()
        .any(|b| b["node-name"] == "fw-vars" && b["read-only"] == false));
    assert!(bds.iter().any(|b| b["filename"] == "/fw/CODE.fd"));
}

#[test]
fn vnc_displays() {
    let mut m = Machine::new("vm1");
    m.graphics = Some(Graphics::Vnc(VncListen::Loopback { display: Some(7) }));
    assert_eq!(value(&build(&m), "-vnc"), "127.0.0.1:7");
}

#[test]
fn bad_machines_are_refused_naming_the_field() {
    let ok = virt_install();
    type Change = Box<dyn Fn(&mut Machine)>;
    let cases: Vec<(&str, Change)> = vec![
        ("name", Box::new(|m| m.name.clear())),
        ("uuid", Box::new(|m| m.uuid = Some("not-a-uuid".into()))),
        ("memory_mib", Box::new(|m| m.memory_mib = 0)),
        ("vcpus", Box::new(|m| m.vcpus = 0)),
        ("disks[1].id", Box::new(|m| m.disks[1].id = "vda".into())),
        ("disks[0].id", Box::new(|m| m.disks[0].id = "9lives".into())),
        ("disks[0].id", Box::new(|m| m.disks[0].id = "a,b".into())),
        (
            "disks[0].id",
            Box::new(|m| m.disks[0].id = "balloon0".into()),
        ),
        ("disks[0].id", Box::new(|m| m.disks[0].id = "pci.3".into())),
        ("disks[0].id", Box::new(|m| m.disks[0].id = "d".repeat(25))),
        ("nics[0].id", Box::new(|m| m.nics[0].id = "vdb".into())),
        (
            "disks[1].boot_index",
            Box::new(|m| m.disks[1].boot_index = Some(1)),
        ),
        (
            "disks[0].socket",
            Box::new(|m| m.disks[0] = vhost_disk("vda", &format!("/{}", "s".repeat(107)))),
        ),
        (
            "disks[0].num_queues",
            Box::new(|m| {
                m.disks[0].backend = DiskBackend::VhostUser {
                    socket: "/s".into(),
                    num_queues: 0,
                    queue_size: None,
                }
            }),
        ),
        (
            "disks[0].queue_size",
            Box::new(|m| {
                m.disks[0].backend = DiskBackend::VhostUser {
                    socket: "/s".into(),
                    num_queues: 1,
                    queue_size: Some(100),
                }
            }),
        ),
        (
            "disks[1].serial",
            Box::new(|m| {
                if let DiskBackend::Nbd { serial, .. } = &mut m.disks[1].backend {
                    *serial = Some("s".repeat(21));
                }
            }),
        ),
        (
            "nics[1].mac",
            Box::new(|m| {
                let mut n = m.nics[0].clone();
                n.id = "net1".into();
                m.nics.push(n);
            }),
        ),
        (
            "guest_agent",
            Box::new(|m| m.guest_agent = Some(PathBuf::new())),
        ),
        (
            "controllers.spare_root_ports",
            Box::new(|m| m.controllers.spare_root_ports = 195),
        ),
    ];
    assert!(command_line(&ok, &runtime(), &Capabilities::default()).is_ok());
    for (want, change) in cases {
        let mut m = ok.clone();
        change(&mut m);
        let (field, reason) = invalid(&m);
        assert_eq!(field, want, "{reason}");
    }
    // The runtime's socket too.
    let long = Runtime {
        qmp_socket: format!("/{}", "q".repeat(120)).into(),
        pid_file: "/p".into(),
    };
    let e = command_line(&ok, &long, &Capabilities::default()).unwrap_err();
    assert!(e.to_string().contains("qmp_socket"), "{e}");
}

#[test]
fn mac_addresses() {
    let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
    assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
    for bad in [
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:0f:11",
        "52-54-00-ab-cd-0f",
        "5:54:00:ab:cd:0f0",
        "01:00:5e:00:00:01",
        "zz:54:00:ab:cd:0f",
    ] {
        assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
    }
}

#[test]
fn timers_and_sleep_states_follow_the_features() {
    let mut m = Machine::new("t");
    let a = build(&m);
    assert!(
        values(&a, "-global").is_empty(),
        "QEMU's defaults need no -global"
    );
    m.features.hpet = false;
    m.features.rtc_catchup = true;
    m.features.suspend_to_mem = false;
    m.features.suspend_to_disk = false;
    let a = build(&m);
    assert_eq!(value(&a, "-machine"), "q35,acpi=on,hpet=off");
    assert_eq!(value(&a, "-rtc"), "base=utc,driftfix=slew");
    assert_eq!(
        values(&a, "-global"),
        ["ICH9-LPC.disable_s3=1", "ICH9-LPC.disable_s4=1"]
    );
    m.machine_type = MachineType::pc();
    assert_eq!(
        values(&build(&m), "-global"),
        ["PIIX4_PM.disable_s3=1", "PIIX4_PM.disable_s4=1"]
    );
}
