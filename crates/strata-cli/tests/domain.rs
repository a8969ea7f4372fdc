//! `strata domain`: define, list, dumpxml, undefine, with libvirt as the
//! oracle: XML made by `virsh -c test:///default` is accepted and written
//! back equivalent (canonical forms compared with xmllint), and what strata
//! writes validates against libvirt's RelaxNG schema.

mod common;
use common::*;
use std::path::Path;

const SCHEMA: &str = "/usr/share/libvirt/schemas/domain.rng";

/// `xmllint --c14n` of a file: attribute order and quoting normalised.
fn canonical(p: &Path, file: &str) -> String {
    run_in(p, "xmllint", &["--c14n", file]).expect(0).stdout
}

#[test]
fn libvirt_xml_round_trips_and_validates() {
    let d = tmp();
    let p = d.path();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/libvirt-test-domain.xml");
    std::fs::copy(&sample, p.join("test.xml")).unwrap();
    let r = ok(p, &st(&["domain", "define", "test.xml"]));
    assert_eq!(r.stdout, "Domain 'test' defined from test.xml\n");
    let xml = ok(p, &st(&["domain", "dumpxml", "test"])).stdout;
    std::fs::write(p.join("out.xml"), &xml).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, "out.xml"]).expect(0);
    assert_eq!(canonical(p, "out.xml"), canonical(p, "test.xml"));
    // Listed as virsh lists an inactive domain.
    let list = ok(p, &st(&["domain", "list", "--all"])).stdout;
    assert!(list.contains(" -    test   shut off"), "{list}");
    let json = ok(p, &st(&["--output", "json", "domain", "list", "--all"])).json();
    assert_eq!(json[0]["name"], "test");
    assert_eq!(json[0]["uuid"], "6695eb01-f6a4-8304-79aa-97f2502e193f");
    // The store is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.join("state/strata.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn secrets_uuid_redefine_and_undefine() {
    let d = tmp();
    let p = d.path();
    std::fs::write(
        p.join("vm.xml"),
        "<domain type='kvm'><name>vm1</name><memory>1024</memory>\
         <os><type>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='/var/lib/vda.qcow2'/><target dev='vda'/></disk>\
         <graphics type='vnc' passwd='hunter2'/></devices></domain>",
    )
    .unwrap();
    ok(p, &st(&["domain", "define", "vm.xml"]));
    let plain = ok(p, &st(&["domain", "dumpxml", "vm1"])).stdout;
    assert!(!plain.contains("hunter2"), "{plain}");
    let secret = ok(p, &st(&["domain", "dumpxml", "vm1", "--security-info"])).stdout;
    assert!(secret.contains("passwd=\"hunter2\""), "{secret}");
    // A UUID was generated and is kept across a redefine of the dumped XML.
    std::fs::write(p.join("again.xml"), &secret).unwrap();
    std::fs::write(p.join("plain.xml"), &plain).unwrap();
    run_in(p, "xmllint", &["--noout", "--relaxng", SCHEMA, "plain.xml"]).expect(0);
    let r = ok(
        p,
        &st(&["--output", "json", "domain", "define", "again.xml"]),
    )
    .json();
    assert_eq!(r["new"], false);
    // Errors name what is at fault; nothing changes.
    for (args, want) in [
        (vec!["domain", "dumpxml", "nope"], "domain 'nope' not found"),
        (
            vec!["domain", "undefine", "nope"],
            "domain 'nope' not found",
        ),
        (vec!["domain", "define", "missing.xml"], "missing.xml"),
    ] {
        let r = strata(p, &st(&args)).expect(1);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    std::fs::write(p.join("bad.xml"), "<domain><name>x</name>").unwrap();
    let r = strata(p, &st(&["domain", "define", "bad.xml"])).expect(1);
    assert!(
        r.stderr.contains("bad.xml") && r.stderr.contains("not closed"),
        "{}",
        r.stderr
    );
    std::fs::write(p.join("clash.xml"), plain.replace("vm1", "vm2")).unwrap();
    let r = strata(p, &st(&["domain", "define", "clash.xml"])).expect(1);
    assert!(
        r.stderr.contains("already used by domain 'vm1'"),
        "{}",
        r.stderr
    );
    let r = ok(p, &st(&["domain", "undefine", "vm1"]));
    assert_eq!(r.stdout, "Domain 'vm1' has been undefined\n");
    let json = ok(p, &st(&["--output", "json", "domain", "list", "--all"])).json();
    assert_eq!(json, serde_json::json!([]));
    // STRATA_STATE_DIR works as --state-dir does.
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["domain", "define", "vm.xml"])
        .current_dir(p)
        .env("STRATA_STATE_DIR", p.join("other"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(p.join("other/strata.db").exists());
}

/// Regression: XML nesting 200,000 elements deep (1.4 MB) overflowed the
/// stack when the tree was dropped or written, aborting the process. Every
/// reader of outside XML refuses it with a clear error and changes nothing.
#[test]
fn deeply_nested_xml_is_refused_not_a_stack_overflow() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let deep = |root: &str| {
        format!(
            "<{root}>{}{}</{root}>",
            "<a>".repeat(200_000),
            "</a>".repeat(200_000)
        )
    };
    std::fs::write(p.join("deep.xml"), deep("domain")).unwrap();
    std::fs::write(p.join("snap.xml"), deep("domainsnapshot")).unwrap();
    std::fs::write(p.join("cp.xml"), deep("domaincheckpoint")).unwrap();
    std::fs::write(p.join("backup.xml"), deep("domainbackup")).unwrap();
    let before = ok(p, &st(&["domain", "dumpxml", "vm"])).stdout;
    for (args, file) in [
        (vec!["domain", "define", "deep.xml"], "deep.xml"),
        (
            vec!["snapshot", "create", "vm", "--xmlfile", "snap.xml"],
            "snap.xml",
        ),
        (
            vec!["checkpoint", "create", "vm", "--xmlfile", "cp.xml"],
            "cp.xml",
        ),
        (
            vec!["backup", "begin", "vm", "--backupxml", "backup.xml"],
            "backup.xml",
        ),
    ] {
        let line = strata(p, &st(&args)).one_error(1, "deeper than 256");
        assert!(line.contains(file), "{args:?}: {line}");
    }
    assert_eq!(ok(p, &st(&["domain", "dumpxml", "vm"])).stdout, before);
    assert_eq!(
        ok(p, &st(&["--output", "json", "domain", "list", "--all"])).json()[0]["name"],
        "vm"
    );
    assert_eq!(
        ok(p, &st(&["snapshot", "list", "vm", "--name"]))
            .stdout
            .trim(),
        ""
    );
}

/// `dumpxml` prints XML: `--output json` is refused as a usage error
/// (exit 2) rather than printing XML where JSON was asked for.
#[test]
fn dumpxml_refuses_output_json() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    ok(p, &st(&["snapshot", "create", "vm", "--name", "s1"]));
    ok(p, &st(&["checkpoint", "create", "vm", "--name", "c1"]));
    for args in [
        vec!["domain", "dumpxml", "vm"],
        vec!["snapshot", "dumpxml", "vm", "s1"],
        vec!["checkpoint", "dumpxml", "vm", "c1"],
        vec!["backup", "dumpxml", "vm"],
    ] {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(&args);
        let r = strata(p, &st(&all));
        r.one_error(2, "--output json does not apply");
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        // Without it, XML as before.
        if args[0] != "backup" {
            assert!(ok(p, &st(&args)).stdout.starts_with('<'), "{args:?}");
        }
    }
}

/// A domain is stored again inside each snapshot's document, one level
/// down: a domain as deep as any XML may nest would make its snapshots
/// unreadable (and with them every command that reads the store). Domains
/// nesting deeper than 248 are refused; one at the limit snapshots and
/// reads back.
#[test]
fn a_domain_nests_at_most_248_deep_so_its_snapshots_read_back() {
    let d = tmp();
    let p = d.path();
    setup_vm(p);
    let xml = std::fs::read_to_string(p.join("vm.xml")).unwrap();
    // <domain> and <metadata> are two levels; the rest is nested inside.
    let nested = |levels: usize| {
        let inner = format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels));
        xml.replace(
            "<name>vm</name>",
            &format!("<name>deep</name><metadata>{inner}</metadata>"),
        )
    };
    std::fs::write(p.join("deep.xml"), nested(247)).unwrap();
    strata(p, &st(&["domain", "define", "deep.xml"])).one_error(1, "deeper than 248");
    std::fs::write(p.join("ok.xml"), nested(246)).unwrap();
    ok(p, &st(&["domain", "define", "ok.xml"]));
    ok(p, &st(&["snapshot", "create", "deep", "--name", "s1"]));
    let list = ok(p, &st(&["snapshot", "list", "deep", "--name"])).stdout;
    assert_eq!(list.trim(), "s1");
    let snap = ok(p, &st(&["snapshot", "dumpxml", "deep", "s1"])).stdout;
    assert!(snap.contains("<metadata><a><a>"), "{snap}");
}
