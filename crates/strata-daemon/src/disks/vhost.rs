//! One disk served by strata-vhost's vhost-user-blk backend on a unix
//! socket in the domain's run folder; QEMU attaches a `vhost-user-blk-pci`
//! device over shared guest memory. The backend advertises read-only and
//! the serial itself.

use std::path::Path;
use std::sync::Arc;

use strata_image::Image;
use strata_vhost::{Config, ServerHandle};

use crate::error::{Error, Result};

/// Serves `image` for disk `target` on `socket` with `queues` queues of
/// at most `queue_size` entries.
pub fn start(
    target: &str,
    image: Arc<dyn Image>,
    socket: &Path,
    queues: u16,
    queue_size: Option<u32>,
    read_only: bool,
    serial: Option<&str>,
) -> Result<ServerHandle> {
    let mut config = Config {
        queues,
        readonly: read_only,
        serial: serial.unwrap_or_default().to_string(),
        ..Config::default()
    };
    if let Some(q) = queue_size {
        config.queue_size = u16::try_from(q).unwrap_or(u16::MAX);
    }
    strata_vhost::serve(image, socket, config).map_err(|e| Error::Serve {
        target: target.to_string(),
        socket: socket.to_path_buf(),
        detail: e.to_string(),
    })
}
