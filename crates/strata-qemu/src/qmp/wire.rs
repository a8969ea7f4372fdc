//! Framing and classification of QMP messages. QEMU writes one JSON object
//! per line, but nothing here relies on line breaks: objects are cut from
//! the byte stream wherever they end.

use serde_json::{Map, Value};

use super::events::{Event, EventMessage, Timestamp};
use super::types::{ErrorBody, Greeting};

/// The most bytes one message may take (`query-qmp-schema` is a few
/// hundred KiB).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Cuts JSON values out of a byte stream.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, `Ok(None)` when more bytes are needed, or
    /// an error for bytes that are not JSON (or a message too large).
    pub fn next_value(&mut self) -> Result<Option<Value>, String> {
        let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
        let Some(start) = start else {
            self.buf.clear();
            return Ok(None);
        };
        let mut stream =
            serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                let end = start + stream.byte_offset();
                self.buf.drain(..end);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buf.len() > MAX_MESSAGE {
                    Err(format!("a message is larger than {MAX_MESSAGE} bytes"))
                } else {
                    Ok(None)
                }
            }
            Some(Err(e)) => Err(format!("not JSON: {e}")),
            None => Ok(None),
        }
    }
}

/// A message from QEMU, classified.
#[derive(Debug)]
pub enum Message {
    /// The greeting.
    Greeting(Greeting),
    /// A successful answer.
    Return { id: Option<Value>, value: Value },
    /// An error answer.
    Error {
        id: Option<Value>,
        class: super::ErrorClass,
        desc: String,
    },
    /// An event.
    Event(EventMessage),
    /// Something else (kept for the log).
    Unknown(Value),
}

/// Classifies a message by its keys.
pub fn classify(v: Value) -> Message {
    let Value::Object(mut map) = v else {
        return Message::Unknown(v);
    };
    if let Some(g) = map.get("QMP") {
        if let Ok(g) = Greeting::deserialize_from(g) {
            return Message::Greeting(g);
        }
        return Message::Unknown(Value::Object(map));
    }
    let id = map.remove("id");
    if let Some(value) = map.remove("return") {
        return Message::Return { id, value };
    }
    if let Some(err) = map.remove("error") {
        return match serde_json::from_value::<ErrorBody>(err.clone()) {
            Ok(b) => Message::Error {
                id,
                class: b.class,
                desc: b.desc,
            },
            Err(_) => Message::Error {
                id,
                class: super::ErrorClass::Other("malformed".into()),
                desc: err.to_string(),
            },
        };
    }
    if let Some(Value::String(name)) = map.remove("event") {
        return Message::Event(event(name, &mut map));
    }
    if let Some(id) = id {
        map.insert("id".into(), id);
    }
    Message::Unknown(Value::Object(map))
}

fn event(name: String, map: &mut Map<String, Value>) -> EventMessage {
    let data = map.remove("data").unwrap_or(Value::Null);
    let timestamp = map
        .remove("timestamp")
        .and_then(|t| serde_json::from_value::<Timestamp>(t).ok())
        .unwrap_or_default();
    EventMessage {
        event: Event::decode(&name, data),
        timestamp,
    }
}

impl Greeting {
    fn deserialize_from(v: &Value) -> Result<Greeting, serde_json::Error> {
        <Greeting as serde::Deserialize>::deserialize(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_cut_wherever_they_end() {
        let mut d = Decoder::default();
        d.extend(br#"{"a": 1}{"b""#);
        assert_eq!(d.next_value().unwrap(), Some(json!({"a": 1})));
        assert_eq!(d.next_value().unwrap(), None);
        d.extend(b": [1,\r\n 2]}\r\n\r\n");
        assert_eq!(d.next_value().unwrap(), Some(json!({"b": [1, 2]})));
        assert_eq!(d.next_value().unwrap(), None);
        d.extend(b"  nonsense");
        assert!(d.next_value().is_err());
    }

    #[test]
    fn messages_are_classified_by_their_keys() {
        let m = classify(json!({"return": {}, "id": 3, "extra": true}));
        assert!(matches!(m, Message::Return { id: Some(i), .. } if i == json!(3)));
        let m = classify(json!({"error": {"class": "CommandNotFound", "desc": "x"}, "id": "a"}));
        assert!(matches!(
            m,
            Message::Error {
                class: super::super::ErrorClass::CommandNotFound,
                ..
            }
        ));
        let m = classify(json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}));
        assert!(
            matches!(m, Message::Event(EventMessage { event: Event::Stop, timestamp })
            if timestamp.seconds == 1)
        );
        let m = classify(
            json!({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2},
            "package": ""}, "capabilities": ["oob"], "new": 1}}),
        );
        assert!(matches!(m, Message::Greeting(g) if g.version.qemu.major == 10));
        assert!(matches!(classify(json!([1])), Message::Unknown(_)));
    }
}
