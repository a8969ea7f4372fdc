//! `scripts/demo`, the first command of the README, run as a newcomer runs
//! it (with the binary just built), so it can never rot: every step must
//! succeed, and what it shows must be true — the revert undid the bad
//! write, qemu-img judges both restores identical to the disks, the pull
//! backup maps exactly the range written since the checkpoint as dirty,
//! a guest strata runs writes through strata's disk, is snapshotted live
//! and is shut down, and
//! qemu-img check finds no error in any image strata wrote.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_demo_runs_and_shows_what_it_says() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/demo");
    let out = Command::new(script)
        .env("STRATA_BIN", env!("CARGO_BIN_EXE_strata"))
        .output()
        .expect("run scripts/demo");
    let text = String::from_utf8_lossy(&out.stdout);
    let all = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the demo failed:\n{all}");
    let count = |needle: &str| text.matches(needle).count();
    assert!(text.contains("vda at 0 now reads:  ee ee"), "{all}");
    assert!(text.contains("vda at 0 reads again:  11 11"), "{all}");
    // The full backup, then each disk restored from full + incremental.
    assert_eq!(count("Images are identical."), 3, "{all}");
    // Wednesday's 3 MiB at 40 MiB, and nothing else, since 'tuesday'.
    assert!(
        text.contains("  41943040     3145728    1  dirty"),
        "vda's changes since tuesday: {all}"
    );
    assert!(text.contains("         0    67108864    0  clean"), "{all}");
    // The running machine: it ran, wrote through strata, and was shut down.
    assert!(text.contains(" 1    guest   running"), "{all}");
    assert!(text.contains("guest: wrote 38 bytes at 1 MiB"), "{all}");
    assert!(text.contains("running (booted)"), "{all}");
    assert!(text.contains(" -    guest   shut off"), "{all}");
    assert!(
        text.contains("\nwritten by the guest, served by strata\n"),
        "{all}"
    );
    // A live snapshot of the running guest, with its stall; the tree.
    assert!(text.contains("\"stall_us\": "), "{all}");
    assert!(
        text.contains("\"source\": \"") && text.contains("guest.booted\""),
        "{all}"
    );
    assert!(text.contains("\nbooted\n"), "{all}");
    // Deleted live: its overlay merged by a block job and removed.
    assert!(text.contains("Domain snapshot booted deleted"), "{all}");
    // Backed up into a repository while it runs: the incremental reads
    // nothing the guest did not change since the first.
    assert_eq!(count(" of 64 chunks read, "), 2, "{all}");
    assert!(text.contains("0 of 64 chunks read, 0 B stored"), "{all}");
    assert!(
        text.contains("2 backup(s), 1 chunk(s) checked: all sound"),
        "{all}"
    );
    assert_eq!(count(": no errors"), 7, "{all}");
    assert!(!all.contains("strata: error"), "{all}");
}
