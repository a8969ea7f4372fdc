//! The command line itself: global options before or after the command
//! group, usage errors as one `strata: error:` line with status 2, help and
//! version with status 0.

mod common;

use common::*;

#[test]
fn global_options_go_before_or_after_the_group() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "a.qcow2", "1M"]);
    let forms: [&[&str]; 4] = [
        &["--output", "json", "img", "info", "a.qcow2"],
        &["img", "--output", "json", "info", "a.qcow2"],
        &["img", "info", "--output", "json", "a.qcow2"],
        &["img", "info", "a.qcow2", "--output=json"],
    ];
    let first = ok(p, forms[0]).stdout;
    for f in forms {
        assert_eq!(ok(p, f).stdout, first, "{f:?}");
    }
    assert_eq!(
        ok(p, &["img", "info", "a.qcow2", "--output", "json"]).json()["format"],
        "qcow2"
    );
    // -q, -v, --no-progress and --state-dir are accepted anywhere.
    for f in [
        &["-q", "img", "info", "a.qcow2"][..],
        &["img", "info", "-v", "a.qcow2"],
        &["--no-progress", "img", "info", "a.qcow2"],
        &[
            "img",
            "info",
            "a.qcow2",
            "--state-dir",
            "/nonexistent/state",
        ],
        &["--state-dir=/tmp", "img", "info", "a.qcow2"],
    ] {
        ok(p, f);
    }
    // -q silences informational messages.
    assert_eq!(
        ok(p, &["-q", "img", "create", "-f", "raw", "r.raw", "1M"]).stdout,
        ""
    );
    assert_eq!(ok(p, &["img", "resize", "r.raw", "2M", "-q"]).stdout, "");
}

#[test]
fn verbose_logging_goes_to_stderr() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "raw", "b.raw", "1M"]);
    let r = ok(
        p,
        &[
            "-vv", "img", "create", "-f", "qcow2", "-b", "b.raw", "o.qcow2",
        ],
    );
    assert!(
        r.stderr.contains("backing file format detected as raw"),
        "{}",
        r.stderr
    );
    let r = ok(
        p,
        &["img", "create", "-f", "qcow2", "-b", "b.raw", "o2.qcow2"],
    );
    assert!(!r.stderr.contains("detected"), "{}", r.stderr);
}

#[test]
fn usage_errors_are_one_line_with_status_2() {
    let d = tmp();
    let p = d.path();
    qemu_img(p, &["create", "-f", "qcow2", "a.qcow2", "1M"]);
    strata(p, &["img", "info", "--bogus", "a.qcow2"]).one_error(2, "--bogus");
    strata(p, &["img", "frobnicate"]).one_error(2, "frobnicate");
    strata(p, &["nosuchgroup"]).one_error(2, "nosuchgroup");
    strata(p, &["img", "info"]).one_error(2, "FILE");
    strata(p, &["--output", "xml", "img", "info", "a.qcow2"]).one_error(2, "xml");
    strata(p, &["img", "check", "-r", "everything", "a.qcow2"]).one_error(2, "everything");
    strata(p, &["img", "map", "--start-offset", "1X", "a.qcow2"]).one_error(2, "1X");
}

#[test]
fn help_and_version() {
    let d = tmp();
    let p = d.path();
    let r = ok(p, &["--help"]);
    assert!(r.stdout.contains("img"), "{}", r.stdout);
    let r = ok(p, &["img", "convert", "--help"]);
    for opt in ["-O", "-c", "-B", "-s", "--bitmap"] {
        assert!(r.stdout.contains(opt), "convert --help lacks {opt}");
    }
    let r = ok(p, &["--version"]);
    assert!(r.stdout.starts_with("strata "), "{}", r.stdout);
}

#[test]
fn errors_name_the_file() {
    let d = tmp();
    let p = d.path();
    strata(p, &["img", "info", "missing.qcow2"]).one_error(1, "missing.qcow2");
    strata(p, &["img", "map", "missing.qcow2"]).one_error(1, "missing.qcow2");
    // A file that is not an image is a raw image; a broken qcow2 header is an error.
    std::fs::write(p.join("bad.qcow2"), b"QFI\xfb\0\0\0\x03garbage").expect("write");
    strata(p, &["img", "info", "bad.qcow2"]).one_error(1, "bad.qcow2");
    // A backing loop is refused, naming the image.
    qemu_img(p, &["create", "-f", "qcow2", "x.qcow2", "1M"]);
    qemu_img(
        p,
        &[
            "create", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2", "y.qcow2",
        ],
    );
    qemu_img(
        p,
        &["rebase", "-u", "-b", "y.qcow2", "-F", "qcow2", "x.qcow2"],
    );
    strata(p, &["img", "info", "--backing-chain", "y.qcow2"]).one_error(1, "loop");
    strata(
        p,
        &["img", "read", "y.qcow2", "--offset", "0", "--length", "1"],
    )
    .one_error(1, "x.qcow2");
}
