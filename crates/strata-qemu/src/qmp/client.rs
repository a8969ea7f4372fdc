//! The QMP connection: a reader task that matches answers to waiting calls
//! by id and forwards events, a writer task that sends whole messages (a
//! call cancelled half-way never leaves half a message on the socket), and
//! [`QmpClient`], a cheap clonable handle to both.
//!
//! When the connection ends (QEMU exited, the socket broke, the peer broke
//! the protocol), every pending call and every later one fails with
//! [`Error::Disconnected`] (or [`Error::Protocol`]), and the event stream
//! ends after the events already received.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::commands::{self, Command};
use super::events::EventMessage;
use super::types::{
    BlockInfo, ChardevInfo, Greeting, ObjectPropertyInfo, PciInfo, StatusInfo, VncInfo,
};
use super::wire::{classify, Decoder, Message};
use crate::{Error, Result};

/// Timeouts of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QmpOptions {
    /// For the socket to accept, greet and negotiate capabilities. A socket
    /// that does not exist yet, or refuses, is retried until then.
    pub connect_timeout: Duration,
    /// For each command's answer.
    pub command_timeout: Duration,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// A connected QMP client. Clones share the connection; it closes when the
/// last clone is dropped.
#[derive(Clone, Debug)]
pub struct QmpClient {
    conn: Arc<Conn>,
}

/// The events of one connection, in the order QEMU sent them. Ends when
/// the connection does. Events pile up in memory until read: read them, or
/// drop the stream.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<EventMessage>,
}

impl EventStream {
    /// The next event, or `None` once the connection has ended and every
    /// event was read.
    pub async fn next(&mut self) -> Option<EventMessage> {
        self.rx.recv().await
    }

    /// The next event matching `pred`, skipping others; `None` if the
    /// stream ends first.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&EventMessage) -> bool,
    ) -> Option<EventMessage> {
        while let Some(e) = self.rx.recv().await {
            if pred(&e) {
                return Some(e);
            }
        }
        None
    }

    /// An event already received, without waiting.
    pub fn try_next(&mut self) -> Option<EventMessage> {
        self.rx.try_recv().ok()
    }
}

#[derive(Debug)]
struct Conn {
    shared: Arc<Shared>,
    greeting: Greeting,
    opts: QmpOptions,
    next_id: AtomicU64,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.close(None);
    }
}

/// What the tasks and the handles share.
#[derive(Debug)]
struct Shared {
    socket: PathBuf,
    state: Mutex<State>,
    closed: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, Pending>,
    closed: bool,
    /// Why it closed, when it was the peer's fault.
    protocol_error: Option<String>,
}

#[derive(Debug)]
struct Pending {
    command: String,
    tx: oneshot::Sender<Result<Value>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection closed and fails every pending call.
    fn close(&self, protocol_error: Option<String>) {
        let pending = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            st.protocol_error = protocol_error;
            std::mem::take(&mut st.pending)
        };
        for (_, p) in pending {
            let _ = p.tx.send(Err(self.lost(Some(p.command))));
        }
        self.closed.send_replace(true);
    }

    /// The error for a call on a closed connection.
    fn lost(&self, command: Option<String>) -> Error {
        match &self.lock().protocol_error {
            Some(detail) => Error::Protocol {
                socket: self.socket.clone(),
                detail: detail.clone(),
            },
            None => Error::Disconnected {
                socket: self.socket.clone(),
                command,
            },
        }
    }
}

/// Removes a call's pending entry if the call ends without an answer
/// (timeout, or the caller dropped it).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl QmpClient {
    /// Connects to the QMP socket at `socket`, reads the greeting and
    /// negotiates capabilities (none enabled). A socket that is missing or
    /// refuses is retried until [`QmpOptions::connect_timeout`].
    pub async fn connect(socket: &Path, opts: QmpOptions) -> Result<(QmpClient, EventStream)> {
        let span = tracing::debug_span!("qmp_connect", socket = %socket.display());
        let attempt = async {
            let stream = loop {
                match UnixStream::connect(socket).await {
                    Ok(s) => break s,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(source) => {
                        return Err(Error::Connect {
                            socket: socket.into(),
                            source,
                        })
                    }
                }
            };
            Self::handshake(stream, socket, opts).await
        };
        match tokio::time::timeout(opts.connect_timeout, attempt.instrument(span)).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout {
                socket: socket.into(),
                timeout: opts.connect_timeout,
            }),
        }
    }

    async fn handshake(
        stream: UnixStream,
        socket: &Path,
        opts: QmpOptions,
    ) -> Result<(QmpClient, EventStream)> {
        let (mut rd, wr) = stream.into_split();
        let mut decoder = Decoder::default();
        let protocol = |detail: String| Error::Protocol {
            socket: socket.into(),
            detail,
        };
        let mut buf = vec![0u8; 64 << 10];
        let greeting = loop {
            match decoder.next_value().map_err(protocol)? {
                Some(v) => match classify(v) {
                    Message::Greeting(g) => break g,
                    other => return Err(protocol(format!("expected a greeting, got {other:?}"))),
                },
                None => {
                    let n = rd.read(&mut buf).await.map_err(|source| Error::Connect {
                        socket: socket.into(),
                        source,
                    })?;
                    if n == 0 {
                        return Err(Error::Disconnected {
                            socket: socket.into(),
                            command: None,
                        });
                    }
                    decoder.extend(&buf[..n]);
                }
            }
        };
        tracing::debug!(version = ?greeting.version.qemu, "greeted");

        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            socket: socket.into(),
            state: Mutex::default(),
            closed,
        });
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (wr_tx, wr_rx) = mpsc::unbounded_channel();
        let span = tracing::debug_span!("qmp", socket = %socket.display());
        let reader =
            tokio::spawn(read_loop(rd, decoder, shared.clone(), ev_tx).instrument(span.clone()));
        tokio::spawn(write_loop(wr, wr_rx, shared.clone()).instrument(span));
        let client = QmpClient {
            conn: Arc::new(Conn {
                shared,
                greeting,
                opts,
                next_id: AtomicU64::new(1),
                writer: wr_tx,
                reader,
            }),
        };
        client.execute("qmp_capabilities", None).await?;
        Ok((client, EventStream { rx: ev_rx }))
    }

    /// QEMU's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.conn.greeting
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.conn.shared.socket
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.shared.lock().closed
    }

    /// Waits until the connection ends.
    pub async fn closed(&self) {
        let mut rx = self.conn.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Runs the command `name` with `arguments` (an object, or `None`) and
    /// returns its `return` value, within the default command timeout.
    pub async fn execute(&self, name: &str, arguments: Option<Value>) -> Result<Value> {
        self.execute_timeout(name, arguments, self.conn.opts.command_timeout)
            .await
    }

    /// [`QmpClient::execute`] with its own timeout.
    pub async fn execute_timeout(
        &self,
        name: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let conn = &*self.conn;
        let shared = &*conn.shared;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("qmp_call", command = name, id);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            if st.closed {
                drop(st);
                return Err(shared.lost(Some(name.into())));
            }
            st.pending.insert(
                id,
                Pending {
                    command: name.into(),
                    tx,
                },
            );
        }
        let _guard = PendingGuard { shared, id };
        let mut msg = json!({"execute": name, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        if conn.writer.send(bytes).is_err() {
            return Err(shared.lost(Some(name.into())));
        }
        let answer = async {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(shared.lost(Some(name.into()))),
                Err(_) => Err(Error::CommandTimeout {
                    socket: shared.socket.clone(),
                    command: name.into(),
                    timeout,
                }),
            }
        };
        let r = answer.instrument(span.clone()).await;
        span.in_scope(|| match &r {
            Ok(_) => tracing::debug!("ok"),
            Err(e) => tracing::debug!(error = %e, "failed"),
        });
        r
    }

    /// Runs a typed command.
    pub async fn call<C: Command>(&self, cmd: &C) -> Result<C::Returns> {
        let args = serde_json::to_value(cmd).map_err(|source| Error::Decode {
            command: C::NAME.into(),
            source,
        })?;
        let args = if args.is_null() { None } else { Some(args) };
        let v = self.execute(C::NAME, args).await?;
        serde_json::from_value(v).map_err(|source| Error::Decode {
            command: C::NAME.into(),
            source,
        })
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo> {
        self.call(&commands::QueryStatus).await
    }

    /// `stop`.
    pub async fn stop(&self) -> Result<()> {
        self.call(&commands::Stop).await.map(drop)
    }

    /// `cont`.
    pub async fn cont(&self) -> Result<()> {
        self.call(&commands::Cont).await.map(drop)
    }

    /// `system_powerdown`.
    pub async fn system_powerdown(&self) -> Result<()> {
        self.call(&commands::SystemPowerdown).await.map(drop)
    }

    /// `system_reset`.
    pub async fn system_reset(&self) -> Result<()> {
        self.call(&commands::SystemReset).await.map(drop)
    }

    /// `quit`. QEMU may close the connection before its answer arrives;
    /// that counts as success.
    pub async fn quit(&self) -> Result<()> {
        match self.call(&commands::Quit).await {
            Ok(_) => Ok(()),
            Err(Error::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `human-monitor-command`: a human monitor command's output.
    pub async fn human_monitor_command(&self, command_line: &str) -> Result<String> {
        let cmd = commands::HumanMonitorCommand {
            command_line: command_line.into(),
            cpu_index: None,
        };
        self.call(&cmd).await
    }

    /// `query-pci`.
    pub async fn query_pci(&self) -> Result<Vec<PciInfo>> {
        self.call(&commands::QueryPci).await
    }

    /// `qom-list` of `path`.
    pub async fn qom_list(&self, path: &str) -> Result<Vec<ObjectPropertyInfo>> {
        self.call(&commands::QomList { path: path.into() }).await
    }

    /// `query-chardev`.
    pub async fn query_chardev(&self) -> Result<Vec<ChardevInfo>> {
        self.call(&commands::QueryChardev).await
    }

    /// `query-block`.
    pub async fn query_block(&self) -> Result<Vec<BlockInfo>> {
        self.call(&commands::QueryBlock).await
    }

    /// `query-vnc`.
    pub async fn query_vnc(&self) -> Result<VncInfo> {
        self.call(&commands::QueryVnc).await
    }
}

/// Reads messages until the connection ends, then closes it.
async fn read_loop(
    mut rd: OwnedReadHalf,
    mut decoder: Decoder,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<EventMessage>,
) {
    let mut buf = vec![0u8; 64 << 10];
    let protocol_error = 'conn: loop {
        loop {
            match decoder.next_value() {
                Ok(Some(v)) => dispatch(&shared, &events, v),
                Ok(None) => break,
                Err(detail) => break 'conn Some(detail),
            }
        }
        match rd.read(&mut buf).await {
            Ok(0) => break None,
            Ok(n) => decoder.extend(&buf[..n]),
            Err(e) => {
                tracing::debug!(error = %e, "read failed");
                break None;
            }
        }
    };
    match &protocol_error {
        Some(d) => tracing::warn!(detail = %d, "protocol error; closing"),
        None => tracing::debug!("connection closed"),
    }
    shared.close(protocol_error);
}

/// Delivers one message.
fn dispatch(shared: &Shared, events: &mpsc::UnboundedSender<EventMessage>, v: Value) {
    let (id, result) = match classify(v) {
        Message::Event(e) => {
            tracing::debug!(event = e.event.name(), "event");
            let _ = events.send(e);
            return;
        }
        Message::Return { id, value } => (id, Ok(value)),
        Message::Error { id, class, desc } => (id, Err((class, desc))),
        Message::Greeting(_) => {
            tracing::warn!("a second greeting; ignored");
            return;
        }
        Message::Unknown(v) => {
            tracing::warn!(message = %v, "unknown message; ignored");
            return;
        }
    };
    let pending = id
        .as_ref()
        .and_then(Value::as_u64)
        .and_then(|id| shared.lock().pending.remove(&id));
    let Some(p) = pending else {
        tracing::warn!(id = ?id, "an answer nobody waits for; ignored");
        return;
    };
    let r = result.map_err(|(class, desc)| Error::Qmp {
        command: p.command,
        class,
        desc,
    });
    let _ = p.tx.send(r);
}

/// Sends whole messages until the client is dropped or a write fails.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = wr.write_all(&msg).await {
            tracing::debug!(error = %e, "write failed");
            shared.close(None);
            return;
        }
    }
    let _ = wr.shutdown().await;
}
