//! A domain's XML as the machine QEMU runs: the XML virt-install writes for
//! a Linux guest maps to a machine QEMU accepts with every device, a guest
//! booted from it (direct kernel boot, its disk served by strata's NBD
//! server) runs and writes through strata, and what strata cannot honour
//! is refused naming the element.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_core::live::machine_of;
use strata_core::serve::export::ImageExport;
use strata_core::serve::{serve_until, Endpoint};
use strata_core::Domain;
use strata_image::ChainOptions;
use strata_nbd::{Config, Exports};
use strata_qemu::hypervisor::StartOptions;
use strata_qemu::machine::{
    Accel, ClockBase, CpuModel, DiskBackend, Graphics, NetBackend, OnCrash, OnPoweroff, OnReboot,
    Serial, Video, VncListen,
};
use strata_qemu::{Hypervisor, QemuHypervisor, VmStatus};

/// What `virt-install --virt-type qemu --network user --graphics vnc
/// --os-variant debian12` writes (after libvirt's define fills in
/// addresses), with the disk at `disk` and `extra` inside `<devices>`.
fn virt_install(disk: &Path, os: &str, serial: &str) -> String {
    format!(
        r#"<domain type="qemu">
  <name>vi1</name>
  <uuid>6a1b9c2e-3f4d-4e5f-8a9b-0c1d2e3f4a5b</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit="KiB">262144</memory>
  <currentMemory unit="KiB">262144</currentMemory>
  <vcpu placement="static">2</vcpu>
  <os>
    <type arch="x86_64" machine="pc-q35-10.0">hvm</type>
    {os}
  </os>
  <features>
    <acpi/>
    <apic/>
    <vmport state="off"/>
  </features>
  <cpu mode="host-passthrough" check="none" migratable="on"/>
  <clock offset="utc">
    <timer name="rtc" tickpolicy="catchup"/>
    <timer name="pit" tickpolicy="delay"/>
    <timer name="hpet" present="no"/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <pm>
    <suspend-to-mem enabled="no"/>
    <suspend-to-disk enabled="no"/>
  </pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2" discard="unmap"/>
      <source file="{disk}"/>
      <target dev="vda" bus="virtio"/>
      <address type="pci" domain="0x0000" bus="0x04" slot="0x00" function="0x0"/>
    </disk>
    <controller type="usb" index="0" model="qemu-xhci" ports="15">
      <address type="pci" domain="0x0000" bus="0x02" slot="0x00" function="0x0"/>
    </controller>
    <controller type="pci" index="0" model="pcie-root"/>
    <controller type="pci" index="1" model="pcie-root-port">
      <model name="pcie-root-port"/>
      <target chassis="1" port="0x10"/>
      <address type="pci" domain="0x0000" bus="0x00" slot="0x02" function="0x0" multifunction="on"/>
    </controller>
    <controller type="pci" index="2" model="pcie-root-port">
      <model name="pcie-root-port"/>
      <target chassis="2" port="0x11"/>
      <address type="pci" domain="0x0000" bus="0x00" slot="0x02" function="0x1"/>
    </controller>
    <controller type="sata" index="0">
      <address type="pci" domain="0x0000" bus="0x00" slot="0x1f" function="0x2"/>
    </controller>
    <controller type="virtio-serial" index="0">
      <address type="pci" domain="0x0000" bus="0x03" slot="0x00" function="0x0"/>
    </controller>
    <interface type="user">
      <mac address="52:54:00:12:34:56"/>
      <model type="virtio"/>
      <address type="pci" domain="0x0000" bus="0x01" slot="0x00" function="0x0"/>
    </interface>
    {serial}
    <channel type="unix">
      <target type="virtio" name="org.qemu.guest_agent.0"/>
      <address type="virtio-serial" controller="0" bus="0" port="1"/>
    </channel>
    <input type="tablet" bus="usb">
      <address type="usb" bus="0" port="1"/>
    </input>
    <input type="mouse" bus="ps2"/>
    <input type="keyboard" bus="ps2"/>
    <graphics type="vnc" port="-1" autoport="yes">
      <listen type="address"/>
    </graphics>
    <audio id="1" type="none"/>
    <video>
      <model type="virtio" heads="1" primary="yes"/>
      <address type="pci" domain="0x0000" bus="0x00" slot="0x01" function="0x0"/>
    </video>
    <memballoon model="virtio">
      <address type="pci" domain="0x0000" bus="0x05" slot="0x00" function="0x0"/>
    </memballoon>
    <rng model="virtio">
      <backend model="random">/dev/urandom</backend>
      <address type="pci" domain="0x0000" bus="0x06" slot="0x00" function="0x0"/>
    </rng>
  </devices>
</domain>
"#,
        disk = disk.display()
    )
}

const PTY_SERIAL: &str = r#"<serial type="pty">
      <target type="isa-serial" port="0">
        <model name="isa-serial"/>
      </target>
    </serial>
    <console type="pty">
      <target type="serial" port="0"/>
    </console>"#;

fn nbd_backend(socket: &Path) -> Vec<(String, DiskBackend)> {
    vec![(
        "vda".to_string(),
        DiskBackend::Nbd {
            socket: socket.to_path_buf(),
            export: "vda".into(),
            read_only: false,
            serial: None,
        },
    )]
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn virt_install_xml_maps_to_its_machine() {
    let run = PathBuf::from("/run/strata/vi1");
    let xml = virt_install(
        Path::new("/img/vi1.qcow2"),
        r#"<boot dev="hd"/>"#,
        PTY_SERIAL,
    );
    let d = Domain::from_xml(&xml, "vi1.xml").unwrap();
    let m = machine_of(&d, &nbd_backend(Path::new("/run/nbd.sock")), &run).unwrap();
    assert_eq!(m.name, "vi1");
    assert_eq!(m.accel, Accel::Tcg);
    assert_eq!(m.machine_type.name(), "pc-q35-10.0");
    assert_eq!((m.memory_mib, m.vcpus), (256, 2));
    assert_eq!(m.cpu, CpuModel::HostPassthrough);
    assert!(m.features.acpi && m.features.apic && m.features.rtc_catchup);
    assert!(!m.features.hpet && !m.features.suspend_to_mem && !m.features.suspend_to_disk);
    assert_eq!(m.clock, ClockBase::Utc);
    assert_eq!(m.lifecycle.on_poweroff, OnPoweroff::Exit);
    assert_eq!(m.lifecycle.on_reboot, OnReboot::Reset);
    assert_eq!(m.lifecycle.on_crash, OnCrash::Poweroff);
    assert_eq!(m.disks.len(), 1);
    assert_eq!(m.disks[0].id, "vda");
    assert_eq!(
        m.disks[0].boot_index,
        Some(1),
        "<boot dev='hd'> boots the first disk"
    );
    assert!(m.controllers.usb && m.controllers.sata && m.controllers.virtio_serial);
    assert_eq!(m.nics.len(), 1);
    assert_eq!(m.nics[0].mac.to_string(), "52:54:00:12:34:56");
    assert_eq!(m.nics[0].backend, NetBackend::User);
    assert_eq!(m.serial, Serial::Socket(run.join("console.sock")));
    assert_eq!(m.guest_agent, Some(run.join("qga.sock")));
    assert!(m.usb_tablet && m.balloon && m.rng);
    assert_eq!(
        m.graphics,
        Some(Graphics::Vnc(VncListen::Loopback { display: None }))
    );
    assert_eq!(m.video, Video::Virtio);
    // QEMU's command line is made from it without complaint.
    let rt = strata_qemu::Runtime {
        qmp_socket: run.join("qmp.sock"),
        pid_file: run.join("qemu.pid"),
    };
    strata_qemu::command_line(&m, &rt, &Default::default()).unwrap();
}

/// Refusals: each change to the virt-install XML is refused at start,
/// naming the element.
#[test]
fn what_strata_cannot_honour_is_refused_naming_the_element() {
    let base = virt_install(Path::new("/img/vi1.qcow2"), "", PTY_SERIAL);
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"<domain type="qemu">"#,
            r#"<domain type="xen">"#,
            "<domain type='xen'>",
        ),
        (
            "<audio id=\"1\" type=\"none\"/>",
            "<sound model=\"ich9\"/>",
            "<devices>/<sound>",
        ),
        (
            "<interface type=\"user\">",
            "<interface type=\"network\"><source network=\"default\"/>",
            "<devices>/<interface type='network'>",
        ),
        (
            "<graphics type=\"vnc\" port=\"-1\" autoport=\"yes\">",
            "<graphics type=\"spice\" autoport=\"yes\">",
            "<devices>/<graphics type='spice'>",
        ),
        (
            "<listen type=\"address\"/>",
            "<listen type=\"address\" address=\"0.0.0.0\"/>",
            "listen='0.0.0.0'",
        ),
        (
            "<disk type=\"file\" device=\"disk\">",
            "<disk type=\"file\" device=\"cdrom\">",
            "device='cdrom'",
        ),
        (
            "<target dev=\"vda\" bus=\"virtio\"/>",
            "<target dev=\"sda\" bus=\"sata\"/>",
            "bus='sata'",
        ),
        (
            "<vmport state=\"off\"/>",
            "<hyperv mode=\"custom\"/>",
            "<features>/<hyperv>",
        ),
        (
            "<cpu mode=\"host-passthrough\" check=\"none\" migratable=\"on\"/>",
            "<cpu mode=\"host-model\"/>",
            "<cpu mode='host-model'>",
        ),
        (
            "<timer name=\"hpet\" present=\"no\"/>",
            "<timer name=\"tsc\" frequency=\"1000\"/>",
            "<timer name='tsc'>",
        ),
        (
            "<on_crash>destroy</on_crash>",
            "<on_crash>coredump-destroy</on_crash>",
            "<on_crash>",
        ),
        (
            "<currentMemory unit=\"KiB\">262144</currentMemory>",
            "<currentMemory unit=\"KiB\">131072</currentMemory>",
            "<currentMemory>",
        ),
        (
            "<vcpu placement=\"static\">2</vcpu>",
            "<vcpu placement=\"static\" current=\"1\">2</vcpu>",
            "<vcpu current>",
        ),
        (
            "<memballoon model=\"virtio\">",
            "<watchdog model=\"i6300esb\"/><memballoon model=\"virtio\">",
            "<devices>/<watchdog>",
        ),
        (
            "<rng model=\"virtio\">",
            "<tpm model=\"tpm-crb\"/><rng model=\"virtio\">",
            "<devices>/<tpm>",
        ),
        (
            "<metadata>",
            "<cputune><shares>2048</shares></cputune><metadata>",
            "<cputune>",
        ),
        (
            "<controller type=\"usb\" index=\"0\" model=\"qemu-xhci\" ports=\"15\">",
            "<controller type=\"usb\" index=\"0\" model=\"piix3-uhci\">",
            "<controller type='usb' model='piix3-uhci'>",
        ),
        (
            "<type arch=\"x86_64\" machine=\"pc-q35-10.0\">hvm</type>",
            "<type arch=\"aarch64\" machine=\"virt\">hvm</type>",
            "arch='aarch64'",
        ),
        (
            "<type arch=\"x86_64\" machine=\"pc-q35-10.0\">hvm</type>",
            "<type arch=\"x86_64\" machine=\"microvm\">hvm</type>",
            "machine='microvm'",
        ),
    ];
    for (from, to, named) in cases {
        assert!(base.contains(from), "the base XML has {from}");
        let xml = base.replacen(from, to, 1);
        let d = Domain::from_xml(&xml, "vi1.xml").unwrap();
        let err = machine_of(
            &d,
            &nbd_backend(Path::new("/run/nbd.sock")),
            Path::new("/run"),
        )
        .expect_err(to)
        .to_string();
        assert!(
            err.starts_with("domain 'vi1': ") && err.contains(named),
            "{to}: the error names {named}: {err}"
        );
    }
    // A disk strata does not serve is refused too.
    let d = Domain::from_xml(&base, "vi1.xml").unwrap();
    let err = machine_of(&d, &[], Path::new("/run"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("<disk> 'vda'"), "{err}");
}

/// The virt-install domain, with direct kernel boot of the test kit, boots
/// under QEMU (TCG) with every device; its guest writes through strata's
/// NBD server, and the image then holds what it wrote.
#[test]
fn a_virt_install_domain_boots_and_writes_through_strata() {
    let Some(kit) = strata_testguest::kit() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("vi")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    let disk = d.join("vda.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "64M"]);
    let initrd = d.join("initrd.gz");
    kit.initrd(
        "printf 'strata-was-here' | dd of=/dev/vda bs=512 seek=2048 conv=notrunc 2>/dev/null && sync && echo wrote",
        &[],
        &initrd,
    )
    .unwrap();
    let console = d.join("console.log");
    let os = format!(
        "<kernel>{}</kernel><initrd>{}</initrd><cmdline>console=ttyS0 panic=-1</cmdline>",
        kit.kernel.display(),
        initrd.display()
    );
    let serial = format!(
        r#"<serial type="file"><source path="{}"/><target port="0"/></serial>"#,
        console.display()
    );
    let xml = virt_install(&disk, &os, &serial);
    let domain = Domain::from_xml(&xml, "vi1.xml").unwrap();

    // strata serves the disk over NBD on a unix socket.
    let sock = d.join("nbd.sock");
    let img = strata_image::open(
        &disk,
        &ChainOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut exports = Exports::new();
    exports.add(
        "vda",
        std::sync::Arc::new(ImageExport::new(img, &[], false).unwrap()),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let endpoint = Endpoint::Unix(sock.clone());
    let server = std::thread::spawn(move || {
        let config = Config {
            persistent: true,
            ..Config::default()
        };
        serve_until(exports, &endpoint, config, |_| async {
            let _ = stop_rx.await;
        })
    });
    while !sock.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }

    let run = d.join("run");
    let machine = machine_of(&domain, &nbd_backend(&sock), &run).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let exit = rt.block_on(async {
        let h = QemuHypervisor::new();
        let vm = h.start(&machine, &StartOptions::new(&run)).await.unwrap();
        let status = vm.status().await.unwrap();
        assert!(
            matches!(status, VmStatus::Active { running: true, .. }),
            "{status:?}"
        );
        tokio::time::timeout(Duration::from_secs(240), vm.wait())
            .await
            .expect("the guest powers off")
    });
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        log.contains("STRATA-GUEST-EXIT=0") && log.contains("wrote"),
        "exit {exit:?}; console:\n{log}"
    );
    let _ = stop_tx.send(());
    server.join().unwrap().unwrap();

    // The bytes are in the image, and the image is sound, as qemu-img sees.
    qemu_img(&["check", "-q", disk.to_str().unwrap()]);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -v 1048576 15"])
        .arg(&disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "strata-was-here" at 1 MiB, in qemu-io's hex dump.
    let hex = "73 74 72 61 74 61 2d 77 61 73 2d 68 65 72 65";
    assert!(text.contains(&format!("00100000:  {hex}")), "{text}");
}
