//! Serving a disk on a unix socket: one vhost-user connection at a time,
//! and a new one accepted after each ends, so a frontend that reconnects
//! (QEMU's chardev `reconnect-ms`) finds the disk again. Between two
//! connections every request taken from the old one is answered first: the
//! frontend rebuilds its rings from the used index it finds in guest memory.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use strata_image::Image;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::backend::BlkBackend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gate::{Gate, GateInner};

/// What the accept thread and the handle share.
struct Control {
    stopping: AtomicBool,
    /// Ends the current connection; set while one is open.
    connection: Mutex<Option<ShutdownHandle>>,
    connected: AtomicBool,
    accepted: AtomicUsize,
}

/// A disk served on a unix socket; dropping it stops serving (see
/// [`ServerHandle::stop`]).
pub struct ServerHandle {
    socket: PathBuf,
    gate: Gate,
    control: Arc<Control>,
    wake: EventNotifier,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("socket", &self.socket)
            .field("gate", &self.gate)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Serves `image` as a vhost-user-blk device on the unix socket `socket`
/// (replacing a stale socket file there; the new one is mode 0600).
///
/// The image must be writable unless `config.readonly`.
pub fn serve(
    image: Arc<dyn Image>,
    socket: impl AsRef<Path>,
    config: Config,
) -> Result<ServerHandle> {
    config.validate()?;
    if !config.readonly && !image.writable() {
        return Err(Error::Image {
            path: image.path().to_string(),
            reason: "opened read-only, so it can only be exported read-only".into(),
        });
    }
    let socket = socket.as_ref().to_path_buf();
    let gate = GateInner::new(usize::from(config.queues), image, config.readonly)?;
    let backend = Arc::new(BlkBackend::new(config, gate.clone())?);
    let listen_err = |source| Error::Listen {
        path: socket.clone(),
        source,
    };
    let listener = Listener::new(&socket, true).map_err(|e| listen_err(vhost_error(e)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_err(vhost_error(e)))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(listen_err)?;
    let (stop_rx, wake) = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)
        .map_err(|source| Error::Resource {
            what: "the server's stop event",
            source,
        })?;
    let control = Arc::new(Control {
        stopping: AtomicBool::new(false),
        connection: Mutex::new(None),
        connected: AtomicBool::new(false),
        accepted: AtomicUsize::new(0),
    });
    let thread = {
        let (control, socket) = (control.clone(), socket.clone());
        std::thread::Builder::new()
            .name("vhost-blk-accept".into())
            .spawn(move || accept_loop(listener, &socket, &backend, &control, &stop_rx))
            .map_err(|source| Error::Resource {
                what: "the accept thread",
                source,
            })?
    };
    Ok(ServerHandle {
        socket,
        gate: Gate::new(gate),
        control,
        wake,
        thread: Some(thread),
    })
}

impl ServerHandle {
    /// The socket served.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The disk's gate: pause, drain, resume, swap the image.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// True while a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.control.connected.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Stops serving: takes no new guest request, waits for those in flight
    /// (so the frontend finds every answer in its rings and can resume on a
    /// new backend), closes the connection and removes the socket. A
    /// frontend with `reconnect-ms` keeps the guest's requests queued until
    /// a server listens on the socket again.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let paused = self.gate.pause();
        if let Err(e) = paused.drain(std::time::Duration::from_secs(60)) {
            tracing::warn!(socket = %self.socket.display(), "stopping with requests in flight: {e}");
        }
        self.control.stopping.store(true, Ordering::SeqCst);
        if let Some(conn) = self.control.connection.lock().as_ref() {
            conn.shutdown();
        }
        let _ = self.wake.notify();
        let _ = thread.join();
        drop(paused);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn vhost_error(e: VhostUserError) -> std::io::Error {
    match e {
        VhostUserError::SocketError(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Waits until the listener has a connection (true) or the server stops.
fn wait_for_connection(listener: &Listener, stop: &EventConsumer) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs for the
        // duration of the call, and both descriptors stay open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

fn accept_loop(
    mut listener: Listener,
    socket: &Path,
    backend: &Arc<BlkBackend>,
    control: &Control,
    stop: &EventConsumer,
) {
    let name = format!("vhost-blk {}", socket.display());
    while !control.stopping.load(Ordering::SeqCst) && wait_for_connection(&listener, stop) {
        if control.stopping.load(Ordering::SeqCst) {
            break;
        }
        backend.new_session();
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = match VhostUserDaemon::new(name.clone(), backend.clone(), memory) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(socket = %socket.display(), "cannot set up a vhost-user session: {e}");
                return;
            }
        };
        for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            let fd = backend.gate().waker(q).as_raw_fd();
            if let Err(e) = handler.register_listener(fd, EventSet::IN, backend.resume_event()) {
                tracing::error!(queue = q, "cannot listen for resumes: {e}");
            }
        }
        if let Err(e) = daemon.start(&mut listener) {
            tracing::warn!(socket = %socket.display(), "vhost-user connection not accepted: {e}");
            continue;
        }
        control.accepted.fetch_add(1, Ordering::SeqCst);
        control.connected.store(true, Ordering::SeqCst);
        {
            let mut slot = control.connection.lock();
            *slot = daemon.shutdown_handle();
            if control.stopping.load(Ordering::SeqCst) {
                if let Some(conn) = slot.as_ref() {
                    conn.shutdown();
                }
            }
        }
        tracing::info!(socket = %socket.display(), "vhost-user frontend connected");
        match daemon.wait() {
            Ok(()) => {}
            Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => {}
            Err(e) => {
                tracing::warn!(socket = %socket.display(), "vhost-user connection ended: {e}")
            }
        }
        *control.connection.lock() = None;
        // Answer everything taken from this connection before the next one
        // sets up its rings over the same guest memory.
        let _ = backend.gate().wait_idle(None);
        drop(daemon);
        control.connected.store(false, Ordering::SeqCst);
        tracing::info!(socket = %socket.display(), "vhost-user frontend disconnected");
    }
}
