mod common;
use common::*;
use strata_image::qcow2::CreateOptions;

#[test]
fn strata_writes_qemu_reads() {
    let d = tmp();
    let img = at(&d, "a.qcow2");
    create(
        &img,
        CreateOptions {
            size: 8 << 20,
            ..Default::default()
        },
    );
    let data = pattern(300_000, 1);
    {
        let i = open_rw(&img);
        i.write_at(&data, 12345).unwrap();
        i.write_zeroes(1 << 20, 1 << 20, false).unwrap();
        i.flush().unwrap();
    }
    assert_qemu_clean(&img);
    let mut expect = vec![0u8; 8 << 20];
    expect[12345..12345 + data.len()].copy_from_slice(&data);
    let raw = at(&d, "a.raw");
    write_raw(&raw, &expect);
    assert_qemu_identical(&img, &raw);
}

#[test]
fn qemu_writes_strata_reads() {
    let d = tmp();
    let img = at(&d, "b.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", s(&img), "4M"]);
    run(
        "qemu-io",
        &[
            "-c",
            "write -P 0x5a 100k 200k",
            "-c",
            "write -z 1M 64k",
            s(&img),
        ],
    );
    let i = open_ro(&img);
    let all = read_all(i.as_ref());
    assert!(all[100 * 1024..300 * 1024].iter().all(|&b| b == 0x5a));
    assert!(all[..100 * 1024].iter().all(|&b| b == 0));
    assert!(all[300 * 1024..].iter().all(|&b| b == 0));
}
