//! strata-nbd's decoders of client bytes that need no socket: request
//! headers (compact and extended), and the payloads of `NBD_OPT_INFO` /
//! `NBD_OPT_GO` and `NBD_OPT_{LIST,SET}_META_CONTEXT`. Any bytes get an
//! error (or `None`), never a panic.
//!
//! Input: a selector byte (0 compact header, 1 extended header, 2
//! INFO/GO, 3 meta context), then the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_nbd::fuzzing::{decode_request, parse_info, parse_meta_context};
use strata_nbd::proto::cmd;

fuzz_target!(|data: &[u8]| {
    let [selector, rest @ ..] = data else {
        return;
    };
    match selector % 4 {
        s @ (0 | 1) => {
            let extended = s == 1;
            if let Some(Ok(r)) = decode_request(rest, extended) {
                assert!(extended || r.length <= u32::MAX as u64);
                assert!(r.payload == 0 || r.payload == r.length);
                assert!(r.kind != cmd::WRITE || r.payload == r.length);
            }
        }
        2 => {
            if let Some((name, requests)) = parse_info(rest) {
                assert!(name.len() <= 4096);
                assert_eq!(rest.len(), 4 + name.len() + 2 + 2 * requests.len());
            }
        }
        _ => {
            if let Some((name, queries)) = parse_meta_context(rest) {
                assert!(name.len() <= 4096 && queries.iter().all(|q| q.len() <= 4096));
            }
        }
    }
});
