//! The QMP client against a scripted fake server on a unix socket: the
//! protocol's edge cases that real QEMU rarely shows (unknown fields,
//! events between a command and its answer, answers out of order or for
//! ids nobody sent, broken JSON, a connection dropped mid-call).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use strata_qemu::qmp::{ErrorClass, Event, RunState, ShutdownReason};
use strata_qemu::{Error, QmpClient, QmpOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const T: Duration = Duration::from_secs(10);

fn opts() -> QmpOptions {
    QmpOptions {
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
    }
}

/// The server side of one connection.
struct Fake {
    io: BufReader<UnixStream>,
}

impl Fake {
    /// Accepts, greets (with fields no version of QMP has) and answers
    /// `qmp_capabilities`.
    async fn accept(l: &UnixListener) -> Fake {
        let (s, _) = l.accept().await.unwrap();
        let mut f = Fake {
            io: BufReader::new(s),
        };
        f.send(json!({"QMP": {
            "version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "fake", "extra": 1},
            "capabilities": ["oob", "future-cap"], "also-new": true,
        }}))
        .await;
        let caps = f.recv().await;
        assert_eq!(caps["execute"], "qmp_capabilities");
        assert!(
            caps.get("arguments").is_none(),
            "no capability enabled: {caps}"
        );
        f.send(json!({"return": {}, "id": caps["id"]})).await;
        f
    }

    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(T, self.io.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "client closed");
        serde_json::from_str(&line).unwrap()
    }

    async fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\r\n").as_bytes()).await;
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.io.get_mut().write_all(b).await.unwrap();
    }
}

fn socket(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("qmp.sock")
}

async fn pair(path: &Path) -> (QmpClient, strata_qemu::EventStream, Fake) {
    let l = UnixListener::bind(path).unwrap();
    let server = tokio::spawn(async move { Fake::accept(&l).await });
    let (c, ev) = QmpClient::connect(path, opts()).await.unwrap();
    (c, ev, server.await.unwrap())
}

#[tokio::test]
async fn unknown_fields_and_interleaved_events_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut ev, mut f) = pair(&socket(&dir)).await;
    assert_eq!(c.greeting().version.qemu.major, 10);
    assert_eq!(c.greeting().capabilities, vec!["oob", "future-cap"]);

    let call = tokio::spawn({
        let c = c.clone();
        async move { c.query_status().await }
    });
    let cmd = f.recv().await;
    assert_eq!(cmd["execute"], "query-status");
    // Events before the answer, one unknown, one known with extra fields;
    // then an answer with fields and a state this client does not know.
    f.send(json!({"event": "FUTURE_EVENT", "data": {"x": [1]}, "timestamp": {"seconds": 5, "microseconds": 6}}))
        .await;
    f.send(
        json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown", "new": 0},
                  "timestamp": {"seconds": 7, "microseconds": 8}, "more": null}),
    )
    .await;
    f.send(json!({"return": {"running": false, "status": "hibernating", "singlestep": false}, "id": cmd["id"], "x": 1}))
        .await;
    let st = call.await.unwrap().unwrap();
    assert!(!st.running);
    assert_eq!(st.status, RunState::Other("hibernating".into()));

    let e = ev.next().await.unwrap();
    assert_eq!(
        e.event,
        Event::Other {
            name: "FUTURE_EVENT".into(),
            data: json!({"x": [1]})
        }
    );
    assert_eq!((e.timestamp.seconds, e.timestamp.microseconds), (5, 6));
    let e = ev.next().await.unwrap();
    assert_eq!(
        e.event,
        Event::Shutdown {
            guest: true,
            reason: ShutdownReason::GuestShutdown
        }
    );

    // An event with no data and no timestamp at all.
    f.send(json!({"event": "STOP"})).await;
    assert_eq!(ev.next().await.unwrap().event, Event::Stop);
}

#[tokio::test]
async fn answers_match_calls_by_id_whatever_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _ev, mut f) = pair(&socket(&dir)).await;
    let a = tokio::spawn({
        let c = c.clone();
        async move { c.execute("cmd-a", Some(json!({"n": 1}))).await }
    });
    let first = f.recv().await;
    let b = tokio::spawn({
        let c = c.clone();
        async move { c.execute("cmd-b", None).await }
    });
    let second = f.recv().await;
    let (ida, idb) = if first["execute"] == "cmd-a" {
        (first["id"].clone(), second["id"].clone())
    } else {
        (second["id"].clone(), first["id"].clone())
    };
    assert_ne!(ida, idb);
    // An answer for an id nobody sent, one without an id, and one that is
    // neither an answer nor an event: all ignored.
    f.send(json!({"return": "stray", "id": 999_999})).await;
    f.send(json!({"return": "no id"})).await;
    f.send(json!({"what": "is this"})).await;
    // Answers in the opposite order, both in one write.
    f.send_raw(
        format!(
            "{}\n{}\n",
            json!({"return": "B", "id": idb}),
            json!({"return": "A", "id": ida})
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(a.await.unwrap().unwrap(), json!("A"));
    assert_eq!(b.await.unwrap().unwrap(), json!("B"));
}

#[tokio::test]
async fn errors_are_typed_with_class_and_description() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _ev, mut f) = pair(&socket(&dir)).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.execute("no-such-command", None).await }
    });
    let cmd = f.recv().await;
    f.send(json!({"error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found", "x": 1}, "id": cmd["id"]}))
        .await;
    let e = call.await.unwrap().unwrap_err();
    match &e {
        Error::Qmp {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(*class, ErrorClass::CommandNotFound);
            assert!(desc.contains("has not been found"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("no-such-command"), "{e}");

    // A class from the future.
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.stop().await }
    });
    let cmd = f.recv().await;
    f.send(json!({"error": {"class": "NewClass", "desc": "d"}, "id": cmd["id"]}))
        .await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.qmp_class(), Some(&ErrorClass::Other("NewClass".into())));
}

#[tokio::test]
async fn a_dropped_connection_fails_pending_calls_and_ends_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut ev, mut f) = pair(&socket(&dir)).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.system_powerdown().await }
    });
    let cmd = f.recv().await;
    assert_eq!(cmd["execute"], "system_powerdown");
    // An event, half of another, then the connection goes.
    f.send(json!({"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 0}}))
        .await;
    f.send_raw(br#"{"event": "RES"#).await;
    drop(f);
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::Disconnected { command: Some(c), .. } if c == "system_powerdown"),
        "{e:?}"
    );
    assert_eq!(ev.next().await.unwrap().event, Event::Powerdown);
    assert!(
        tokio::time::timeout(T, ev.next()).await.unwrap().is_none(),
        "the stream ends"
    );
    assert!(c.is_closed());
    tokio::time::timeout(T, c.closed()).await.unwrap();
    // Later calls fail at once.
    let e = c.query_status().await.unwrap_err();
    assert!(e.is_disconnected(), "{e:?}");
}

#[tokio::test]
async fn broken_json_is_a_protocol_error_for_pending_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut ev, mut f) = pair(&socket(&dir)).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.cont().await }
    });
    f.recv().await;
    f.send_raw(b"{\"return\": {}, \"id\": ]]]\n").await;
    let e = call.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    assert!(tokio::time::timeout(T, ev.next()).await.unwrap().is_none());
    assert!(matches!(
        c.cont().await.unwrap_err(),
        Error::Protocol { .. }
    ));
}

#[tokio::test]
async fn a_command_timeout_leaves_the_connection_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _ev, mut f) = pair(&socket(&dir)).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move {
            c.execute_timeout("slow", None, Duration::from_millis(100))
                .await
        }
    });
    let slow = f.recv().await;
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::CommandTimeout { command, .. } if command == "slow"),
        "{e:?}"
    );
    // The late answer is dropped; the next call gets its own.
    f.send(json!({"return": "late", "id": slow["id"]})).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.human_monitor_command("info version").await }
    });
    let cmd = f.recv().await;
    assert_eq!(cmd["arguments"], json!({"command-line": "info version"}));
    f.send(json!({"return": "10.0.2\r\n", "id": cmd["id"]}))
        .await;
    assert_eq!(call.await.unwrap().unwrap(), "10.0.2\r\n");
}

#[tokio::test]
async fn messages_split_byte_by_byte_still_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let (c, mut ev, mut f) = pair(&socket(&dir)).await;
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.qom_list("/machine/peripheral").await }
    });
    let cmd = f.recv().await;
    assert_eq!(cmd["arguments"], json!({"path": "/machine/peripheral"}));
    let text = format!(
        "{}{}",
        json!({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}),
        json!({"return": [{"name": "net0", "type": "child<virtio-net-pci>", "description": "new"}], "id": cmd["id"]})
    );
    for b in text.as_bytes() {
        f.send_raw(&[*b]).await;
    }
    let props = call.await.unwrap().unwrap();
    assert_eq!(props[0].name, "net0");
    assert_eq!(props[0].type_, "child<virtio-net-pci>");
    assert_eq!(ev.next().await.unwrap().event, Event::Resume);
}

#[tokio::test]
async fn connect_waits_for_the_socket_and_times_out_without_a_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    // The socket appears a little after the client starts trying.
    let p = path.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let l = UnixListener::bind(&p).unwrap();
        let f = Fake::accept(&l).await;
        (l, f)
    });
    let (c, _ev) = QmpClient::connect(&path, opts()).await.unwrap();
    assert!(!c.is_closed());
    let (l, _f) = server.await.unwrap();

    // A peer that accepts and says nothing.
    let quick = QmpOptions {
        connect_timeout: Duration::from_millis(300),
        ..opts()
    };
    let silent = tokio::spawn(async move { l.accept().await.unwrap() });
    let e = QmpClient::connect(&path, quick).await.unwrap_err();
    assert!(matches!(e, Error::ConnectTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains("qmp.sock"), "{e}");
    drop(silent);

    // A peer that says something other than a greeting.
    let path2 = dir.path().join("bad.sock");
    let l = UnixListener::bind(&path2).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"{\"event\": \"STOP\"}\n").await.unwrap();
        tokio::time::sleep(T).await;
    });
    let e = QmpClient::connect(&path2, opts()).await.unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e:?}");

    // Nothing there at all, and never will be.
    let e = QmpClient::connect(&dir.path().join("none.sock"), quick)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ConnectTimeout { .. }), "{e:?}");
}

#[tokio::test]
async fn a_refused_capabilities_negotiation_fails_the_connect() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let l = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut f = Fake {
            io: BufReader::new(s),
        };
        f.send(json!({"QMP": {"version": {"qemu": {"major": 9, "minor": 2, "micro": 0}}, "capabilities": []}}))
            .await;
        let caps = f.recv().await;
        f.send(json!({"error": {"class": "GenericError", "desc": "no"}, "id": caps["id"]}))
            .await;
        tokio::time::sleep(T).await;
    });
    let e = QmpClient::connect(&path, opts()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Qmp { command, .. } if command == "qmp_capabilities"),
        "{e:?}"
    );
}
