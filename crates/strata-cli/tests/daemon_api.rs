//! `strata daemon` without guests: the API over its unix socket (with curl,
//! as a user would), its errors, the socket's rules, sd-notify, SIGTERM,
//! and the lifecycle commands of shut-off domains, with and without a
//! daemon.

mod common;
use common::daemon::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// A domain `vm` with one small qcow2 disk, defined in `state`.
fn define_vm(p: &Path) {
    qemu_img(p, &["create", "-q", "-f", "qcow2", "vm.qcow2", "1M"]);
    std::fs::write(
        p.join("vm.xml"),
        format!(
            "<domain type='qemu'><name>vm</name><devices><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2'/><source file='{}/vm.qcow2'/><target dev='vda'/>\
             </disk></devices></domain>",
            p.display()
        ),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
}

#[test]
fn the_api_answers_curl_and_refuses_bad_requests_with_json() {
    let d = tmp();
    let p = d.path();
    define_vm(p);
    let _daemon = DaemonProc::start(p, &[], &[]);
    let mode = std::fs::metadata(p.join("state/strata.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let list = curl_json(p, "GET", "/v1/domains", None, 200);
    assert_eq!(list[0]["name"], "vm");
    assert_eq!(list[0]["state"], "shut off");
    assert_eq!(list[0]["reason"], "unknown");
    assert_eq!(list[0]["id"], serde_json::Value::Null);
    let one = curl_json(p, "GET", "/v1/domains/vm", None, 200);
    assert_eq!(one["uuid"], list[0]["uuid"]);
    let state = curl_json(p, "GET", "/v1/domains/vm/state", None, 200);
    assert_eq!(
        state,
        serde_json::json!({"state": "shut off", "reason": "unknown"})
    );
    let info = curl_json(p, "GET", "/v1/daemon", None, 200);
    assert!(
        info["state_dir"].as_str().unwrap().ends_with("/state"),
        "{info}"
    );

    // The document served is the one in the repository.
    let (code, doc) = curl(p, "GET", "/v1/openapi.yaml", None);
    assert_eq!(code, 200);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.yaml");
    assert_eq!(doc, std::fs::read_to_string(repo).unwrap());

    for (method, path, body, status, code) in [
        ("GET", "/v1/nothing", None, 404, "not-found"),
        ("GET", "/v2/domains", None, 404, "not-found"),
        ("DELETE", "/v1/domains/vm", None, 405, "method-not-allowed"),
        (
            "GET",
            "/v1/domains/vm/start",
            None,
            405,
            "method-not-allowed",
        ),
        ("POST", "/v1/domains", Some("{}"), 405, "method-not-allowed"),
        ("GET", "/v1/domains/nope", None, 404, "no-domain"),
        ("POST", "/v1/domains/nope/start", None, 404, "no-domain"),
        (
            "POST",
            "/v1/domains/vm/start",
            Some("{\"paused\": tru"),
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/domains/vm/start",
            Some("{\"paused\": 3}"),
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/domains/vm/start",
            Some("{\"pause\": true}"),
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/domains/vm/start",
            Some("[]"),
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/domains/vm/shutdown",
            Some("{\"timeout\": -1}"),
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/domains/vm/destroy",
            Some("{\"force\": 1}"),
            400,
            "bad-request",
        ),
        (
            "POST",
            "/v1/domains/vm/suspend",
            None,
            409,
            "operation-invalid",
        ),
        (
            "POST",
            "/v1/domains/vm/resume",
            None,
            409,
            "operation-invalid",
        ),
        (
            "POST",
            "/v1/domains/vm/destroy",
            None,
            409,
            "operation-invalid",
        ),
        (
            "POST",
            "/v1/domains/vm/shutdown",
            Some("{\"timeout\": 1}"),
            409,
            "operation-invalid",
        ),
    ] {
        let e = curl_json(p, method, path, body, status);
        assert_eq!(e["code"], code, "{method} {path} {body:?}: {e}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let e = curl_json(p, "POST", "/v1/domains/vm/suspend", None, 409);
    assert_eq!(
        e["error"],
        "Requested operation is not valid: domain is not running"
    );
    // The daemon is fine after all that.
    curl_json(p, "GET", "/v1/domains", None, 200);
}

#[test]
fn one_daemon_per_socket_stale_sockets_go_and_sigterm_stops_it_cleanly() {
    let d = tmp();
    let p = d.path();
    std::fs::create_dir_all(p.join("state")).unwrap();
    // A stale socket: bound once, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(p.join("state/strata.sock")).unwrap());
    assert!(p.join("state/strata.sock").exists());

    // sd-notify: READY once it answers, STOPPING when it stops.
    let notify = std::os::unix::net::UnixDatagram::bind(p.join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let ns = p.join("notify.sock").display().to_string();
    let mut daemon = DaemonProc::start(p, &[], &[("NOTIFY_SOCKET", &ns)]);
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=serving ")),
        "{ready}"
    );

    // A second daemon is refused, naming the first.
    let r = strata(p, &st(&["daemon"]));
    let line = r.one_error(1, "another strata daemon answers on");
    assert!(line.contains(&format!("pid {}", daemon.pid())), "{line}");
    // The first is untouched.
    curl_json(p, "GET", "/v1/domains", None, 200);

    assert_eq!(daemon.term(Duration::from_secs(30)), 0);
    let n = notify.recv(&mut buf).unwrap();
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(!p.join("state/strata.sock").exists());
    assert!(daemon.log().contains("SIGTERM"), "{}", daemon.log());

    // --listen elsewhere.
    let mut other = DaemonProc::start_listening(p, "unix:alt.sock");
    assert!(p.join("alt.sock").exists());
    assert_eq!(other.term(Duration::from_secs(30)), 0);
    let r = strata(p, &st(&["daemon", "--listen", "tcp:1"]));
    r.one_error(2, "unix:PATH");
}

#[test]
fn lifecycle_commands_without_a_daemon_answer_as_libvirt() {
    let d = tmp();
    let p = d.path();
    define_vm(p);
    assert_eq!(
        ok(p, &st(&["domain", "domstate", "vm"])).stdout,
        "shut off\n\n"
    );
    assert_eq!(
        ok(p, &st(&["domain", "domstate", "vm", "--reason"])).stdout,
        "shut off (unknown)\n\n"
    );
    let j = ok(p, &st(&["--output", "json", "domain", "domstate", "vm"])).json();
    assert_eq!(
        j,
        serde_json::json!({"state": "shut off", "reason": "unknown"})
    );
    // Active domains only, unless --all or --state-shutoff.
    let list = ok(p, &st(&["domain", "list"])).stdout;
    assert!(!list.contains("vm"), "{list}");
    for args in [vec!["--all"], vec!["--state-shutoff"]] {
        let mut a = vec!["domain", "list"];
        a.extend(args);
        let list = ok(p, &st(&a)).stdout;
        assert!(list.contains(" -    vm     shut off"), "{list}");
    }
    assert!(!ok(p, &st(&["domain", "list", "--state-running"]))
        .stdout
        .contains("vm"));
    for (cmd, verb) in [
        ("shutdown", "shutdown"),
        ("destroy", "destroy"),
        ("suspend", "suspend"),
        ("resume", "resume"),
    ] {
        let r = strata(p, &st(&["domain", cmd, "vm"]));
        let line = r.one_error(1, "domain is not running");
        assert_eq!(
            line,
            format!("strata: error: failed to {verb} domain 'vm': Requested operation is not valid: domain is not running")
        );
        strata(p, &st(&["domain", cmd, "nope"])).one_error(1, "domain 'nope' not found");
    }
    strata(p, &st(&["domain", "domstate", "nope"])).one_error(1, "domain 'nope' not found");
    // An unknown domain starts no daemon.
    strata(p, &st(&["domain", "start", "nope"])).one_error(1, "domain 'nope' not found");
    assert!(!p.join("state/strata.sock").exists());
}

#[test]
fn the_systemd_unit_runs_the_daemon_as_a_notify_service() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd/strata.service"),
    )
    .unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    assert!(has("Type=notify") && has("KillMode=mixed"), "{unit}");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.contains(" daemon --state-dir %S/strata"), "{exec}");
    // The stop timeout leaves room for the policy.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > 30 + 10, "{stop}");
}

#[test]
fn a_start_qemu_refuses_fails_cleanly() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-q", "-f", "qcow2", "vm.qcow2", "1M"]);
    std::fs::write(
        p.join("vm.xml"),
        format!(
            "<domain type='qemu'><name>vm</name><uuid>0b1e58aa-1111-4222-8333-444455556666</uuid>\
             <memory unit='MiB'>64</memory><os><type arch='x86_64' machine='q35'>hvm</type><kernel>{0}/no-such-kernel</kernel></os>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{0}/vm.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
            p.display()
        ),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    let _daemon = DaemonProc::start(p, &[], &[]);
    let line =
        strata(p, &st(&["domain", "start", "vm"])).one_error(1, "failed to start domain 'vm'");
    assert!(
        line.contains("exited during startup") && line.contains("no-such-kernel"),
        "{line}"
    );
    assert_eq!(
        ok(p, &st(&["domain", "domstate", "vm", "--reason"])).stdout,
        "shut off (failed)\n\n"
    );
    // The disk was closed again: another writer may open it.
    qemu_io(p, "qcow2", "vm.qcow2", &["write 0 512"]);
    // A definition strata cannot run is refused before any disk opens.
    std::fs::write(
        p.join("vm.xml"),
        std::fs::read_to_string(p.join("vm.xml")).unwrap().replace(
            "</devices>",
            "<hostdev mode='subsystem' type='pci'/></devices>",
        ),
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    let e = curl_json(p, "POST", "/v1/domains/vm/start", None, 422);
    assert_eq!(e["code"], "config-unsupported");
    assert!(e["error"].as_str().unwrap().contains("hostdev"), "{e}");
}
