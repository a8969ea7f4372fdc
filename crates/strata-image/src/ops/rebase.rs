//! `rebase`: point an image at a new backing file. The safe mode first
//! copies into the image every cluster where the old and the new backing
//! chains differ (and the image itself does not define it), so the guest
//! sees the same bytes before and after; `-u` only rewrites the header.

use super::{Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::Image;

/// Options of [`rebase`].
#[derive(Clone, Debug, Default)]
pub struct RebaseOptions {
    /// Backing file name to record (`None`: no backing file).
    pub backing_name: Option<String>,
    /// Backing format to record.
    pub backing_format: Option<String>,
    /// Only change the header (`-u`).
    pub unsafe_header_only: bool,
}

fn read_or_zero(img: Option<&dyn Image>, buf: &mut [u8], pos: u64) -> Result<()> {
    match img {
        Some(b) if pos < b.size() => {
            let n = ((b.size() - pos) as usize).min(buf.len());
            b.read_at(&mut buf[..n], pos)?;
            buf[n..].fill(0);
            Ok(())
        }
        _ => {
            buf.fill(0);
            Ok(())
        }
    }
}

/// Rebases `top` (opened writable with its old chain) onto `new_backing`;
/// `top` must have a backing link to rewrite (a qcow2 layer).
pub fn rebase(
    top: &dyn Image,
    new_backing: Option<&dyn Image>,
    opts: &RebaseOptions,
    progress: Progress,
) -> Result<()> {
    let Some(placement) = top.placement() else {
        return Err(Error::unsupported(
            top.path(),
            format!(
                "rebase: a {} image has no backing file",
                top.format().name()
            ),
        ));
    };
    if !opts.unsafe_header_only {
        let old = top.backing().map(|b| b.as_ref());
        let size = top.size();
        let cs = placement.layout().cluster_size;
        let grain = CHUNK.max(cs);
        let mut a = vec![0u8; grain as usize];
        let mut b = vec![0u8; grain as usize];
        let mut done = 0;
        for ext in top.block_status(0, size)? {
            if ext.depth == 0 && ext.present {
                done += ext.length;
                progress(done, size);
                continue;
            }
            // Work in whole clusters of the top image (rounding never crosses
            // into data the image defines itself: its clusters are whole).
            let mut pos = ext.start;
            let end = ext.start + ext.length;
            while pos < end {
                let n = (grain - pos % grain).min(end - pos);
                let (xa, xb) = (&mut a[..n as usize], &mut b[..n as usize]);
                read_or_zero(old, xa, pos)?;
                read_or_zero(new_backing, xb, pos)?;
                let mut c = 0u64;
                while c < n {
                    let m = (cs - (pos + c) % cs).min(n - c);
                    let (sa, sb) = (
                        &xa[c as usize..(c + m) as usize],
                        &xb[c as usize..(c + m) as usize],
                    );
                    if sa != sb {
                        top.write_at(sa, pos + c)?;
                    }
                    c += m;
                }
                pos += n;
                done += n;
                progress(done, size);
            }
        }
        top.flush()?;
    }
    placement.set_backing(opts.backing_name.as_deref(), opts.backing_format.as_deref())
}
