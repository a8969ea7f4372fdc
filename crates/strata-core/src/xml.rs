//! A small owned XML tree over quick-xml, for libvirt's formats: the whole
//! document is kept (unknown elements, attributes, comments and text), so
//! what strata does not understand is written back as it came. Documents
//! nest at most [`MAX_DEPTH`] elements deep (as libxml2 caps them for
//! libvirt), so walking, writing and dropping a tree, which recurse once
//! per level, stay within any thread's stack.

use quick_xml::events::{BytesCData, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::reader::Reader;
use quick_xml::writer::Writer;

use crate::error::{Error, Result};

/// How deep elements may nest (the root is at depth 1); libxml2's own
/// default limit, which libvirt's parser inherits.
pub const MAX_DEPTH: usize = 256;

/// How deep a domain definition may nest: strata stores domains inside
/// snapshot and checkpoint documents (`<domainsnapshot><domain>…`), which
/// must stay within [`MAX_DEPTH`] when read back.
pub const MAX_DOMAIN_DEPTH: usize = MAX_DEPTH - 8;

/// One node of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (unescaped).
    Text(String),
    /// A comment (as written).
    Comment(String),
    /// A CDATA section.
    CData(String),
}

/// An element: name, attributes in document order, children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Element name (with any prefix).
    pub name: String,
    /// Attributes, unescaped, in order.
    pub attrs: Vec<(String, String)>,
    /// Child nodes, in order.
    pub children: Vec<Node>,
}

impl Element {
    /// An empty element called `name`.
    pub fn new(name: &str) -> Element {
        Element {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// Parses a document whose root element is returned; `what` names the
    /// input in errors (a file name).
    pub fn parse(text: &str, what: &str) -> Result<Element> {
        let bad = |e: &dyn std::fmt::Display, at: u64| Error::Xml {
            what: what.to_string(),
            problem: format!("at byte {at}: {e}"),
        };
        let mut reader = Reader::from_str(text);
        reader.config_mut().trim_text(false);
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let at = reader.buffer_position();
            let event = reader.read_event().map_err(|e| bad(&e, at))?;
            match event {
                Event::Start(e) | Event::Empty(e) if root.is_some() => {
                    let _ = e;
                    return Err(bad(&"content after the root element", at));
                }
                // `<>` is not XML (written back it would be `</>`, which
                // nothing reads).
                Event::Start(e) | Event::Empty(e) if e.name().as_ref().is_empty() => {
                    return Err(bad(&"an element has no name", at));
                }
                Event::Start(_) if stack.len() >= MAX_DEPTH => {
                    return Err(bad(
                        &format!("elements nest deeper than {MAX_DEPTH} levels"),
                        at,
                    ));
                }
                Event::Start(e) => stack.push(start(&e).map_err(|e| bad(&e, at))?),
                Event::Empty(_) if stack.len() >= MAX_DEPTH => {
                    return Err(bad(
                        &format!("elements nest deeper than {MAX_DEPTH} levels"),
                        at,
                    ));
                }
                Event::Empty(e) => {
                    let el = start(&e).map_err(|e| bad(&e, at))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(el)),
                        None => root = Some(el),
                    }
                }
                Event::End(_) => {
                    let el = stack
                        .pop()
                        .ok_or_else(|| bad(&"closing tag without an opening one", at))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Element(el)),
                        None => root = Some(el),
                    }
                }
                Event::Text(t) => {
                    let s = t.unescape().map_err(|e| bad(&e, at))?.into_owned();
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(Node::Text(s)),
                        None if s.trim().is_empty() => {}
                        None => return Err(bad(&"text outside the root element", at)),
                    }
                }
                Event::CData(c) => {
                    let s = String::from_utf8_lossy(&c.into_inner()).into_owned();
                    if let Some(parent) = stack.last_mut() {
                        parent.children.push(Node::CData(s));
                    }
                }
                Event::Comment(c) => {
                    let s = String::from_utf8_lossy(&c.into_inner()).into_owned();
                    if let Some(parent) = stack.last_mut() {
                        parent.children.push(Node::Comment(s));
                    }
                }
                Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
                Event::Eof => break,
            }
        }
        if !stack.is_empty() {
            return Err(bad(
                &format!("<{}> is not closed", stack[0].name),
                text.len() as u64,
            ));
        }
        root.ok_or_else(|| Error::Xml {
            what: what.to_string(),
            problem: "no root element".into(),
        })
    }

    /// How deep elements nest below and including this one (an element
    /// without child elements: 1). Walked without recursion.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut todo = vec![(self, 1)];
        while let Some((el, d)) = todo.pop() {
            deepest = deepest.max(d);
            todo.extend(el.elements().map(|c| (c, d + 1)));
        }
        deepest
    }

    /// Parses a document whose root must be `<root>`.
    pub fn parse_root(text: &str, what: &str, root: &str) -> Result<Element> {
        let el = Element::parse(text, what)?;
        if el.name != root {
            return Err(Error::Xml {
                what: what.to_string(),
                problem: format!("the root element is <{}>, not <{root}>", el.name),
            });
        }
        Ok(el)
    }

    /// The `<disk>` children of child `<list>` (as in `<disks>`).
    pub fn disks_in(&self, list: &str) -> impl Iterator<Item = &Element> {
        self.child(list)
            .into_iter()
            .flat_map(|d| d.elements().filter(|e| e.name == "disk"))
    }

    /// The document as text (no declaration), with a final newline.
    pub fn to_xml(&self) -> String {
        let mut w = Writer::new(Vec::new());
        write(&mut w, self);
        let mut s = String::from_utf8(w.into_inner()).expect("written from strings");
        s.push('\n');
        s
    }

    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) attribute `name`.
    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == name) {
            Some(a) => a.1 = value.to_string(),
            None => self.attrs.push((name.to_string(), value.to_string())),
        }
    }

    /// Removes attribute `name`.
    pub fn remove_attr(&mut self, name: &str) {
        self.attrs.retain(|(k, _)| k != name);
    }

    /// Child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// Child elements, mutably.
    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }

    /// The first child element called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// The first child element called `name`, mutably.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.name == name)
    }

    /// The first child called `name`, added at the end if missing.
    pub fn child_or_insert(&mut self, name: &str) -> &mut Element {
        if self.child(name).is_none() {
            self.children.push(Node::Element(Element::new(name)));
        }
        self.child_mut(name).expect("just ensured")
    }

    /// Removes every child element called `name`.
    pub fn remove_children(&mut self, name: &str) {
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.name == name));
    }

    /// The text content (text and CDATA children, concatenated).
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) | Node::CData(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The trimmed text of child `name`, if present.
    pub fn child_text(&self, name: &str) -> Option<String> {
        self.child(name).map(|c| c.text().trim().to_string())
    }

    /// Replaces the content with one text node.
    pub fn set_text(&mut self, text: &str) {
        self.children = vec![Node::Text(text.to_string())];
    }
}

/// Whether `name` is an XML name (XML 1.0 §2.3, with every character
/// from U+0080 up taken as a name character): what the writer puts back
/// must be read again, and a name holding a control character or a
/// delimiter would not be.
fn xml_name(name: &str) -> bool {
    let start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':' || c >= '\u{80}';
    let mut chars = name.chars();
    chars.next().is_some_and(start)
        && chars.all(|c| start(c) || c.is_ascii_digit() || c == '-' || c == '.')
}

fn start(e: &BytesStart<'_>) -> std::result::Result<Element, String> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    if !xml_name(&name) {
        return Err(format!("'{}' is not an element name", name.escape_debug()));
    }
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        if !xml_name(&key) {
            return Err(format!("'{}' is not an attribute name", key.escape_debug()));
        }
        let value = a.unescape_value().map_err(|e| e.to_string())?;
        attrs.push((key, value.into_owned()));
    }
    Ok(Element {
        name,
        attrs,
        children: Vec::new(),
    })
}

fn write(w: &mut Writer<Vec<u8>>, el: &Element) {
    let mut start = BytesStart::new(el.name.as_str());
    for (k, v) in &el.attrs {
        start.push_attribute((k.as_str(), v.as_str()));
    }
    // Writing into a Vec cannot fail.
    if el.children.is_empty() {
        let _ = w.write_event(Event::Empty(start));
        return;
    }
    let _ = w.write_event(Event::Start(start));
    for n in &el.children {
        let _ = match n {
            Node::Element(c) => {
                write(w, c);
                Ok(())
            }
            Node::Text(t) => w.write_event(Event::Text(BytesText::new(t))),
            Node::Comment(c) => w.write_event(Event::Comment(BytesText::from_escaped(c.as_str()))),
            Node::CData(c) => w.write_event(Event::CData(BytesCData::new(c.as_str()))),
        };
    }
    let _ = w.write_event(Event::End(BytesEnd::new(el.name.as_str())));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_everything() {
        let doc = "<domain type=\"kvm\">\n  <!-- a note -->\n  <name>a&amp;b</name>\n  <x:unknown xmlns:x=\"urn:x\" k=\"v &lt; w\"><deep/></x:unknown>\n</domain>\n";
        let el = Element::parse(doc, "t").unwrap();
        assert_eq!(el.child_text("name").as_deref(), Some("a&b"));
        assert_eq!(el.to_xml(), doc);
        assert_eq!(Element::parse(&el.to_xml(), "t").unwrap(), el);
    }

    #[test]
    fn nesting_is_capped_at_libxml2s_depth() {
        let nest =
            |n: usize, inner: &str| format!("{}{inner}{}", "<a>".repeat(n), "</a>".repeat(n));
        // As deep as allowed: parsed, written and dropped.
        for inner in ["", "<b/>"] {
            let depth = MAX_DEPTH - usize::from(!inner.is_empty());
            let doc = nest(depth, inner);
            let el = Element::parse(&doc, "ok.xml").unwrap();
            assert_eq!(Element::parse(&el.to_xml(), "ok.xml").unwrap(), el);
        }
        // One deeper, or 200,000 deep (a stack overflow once): refused.
        for doc in [
            nest(MAX_DEPTH + 1, ""),
            nest(MAX_DEPTH, "<b/>"),
            nest(200_000, ""),
        ] {
            let err = Element::parse(&doc, "deep.xml").unwrap_err().to_string();
            assert!(
                err.contains("deep.xml") && err.contains("deeper than 256"),
                "{err}"
            );
        }
    }

    #[test]
    fn names_that_would_not_read_back_are_refused() {
        for bad in [
            "<domain a\u{0}b='1'/>",
            "<domain 1a='1'/>",
            "<d\u{1}omain/>",
            "<domain><-x/></domain>",
        ] {
            let e = Element::parse(bad, "t.xml").unwrap_err().to_string();
            assert!(e.contains("is not an"), "{bad:?}: {e}");
        }
        let ok = Element::parse("<domain xmlns:q='u' q:a-b.c='1'><é/></domain>", "t.xml").unwrap();
        assert_eq!(
            Element::parse(&ok.to_xml(), "t.xml").unwrap().to_xml(),
            ok.to_xml()
        );
    }

    #[test]
    fn broken_documents_are_refused_with_the_place() {
        // The last two: elements without a name (found by fuzzing: read,
        // then written as `</>`, which nothing reads).
        for doc in [
            "<a><b></a>",
            "<a>",
            "",
            "<a/><b/>",
            "text",
            "<a><></></a>",
            "<a></></a>",
        ] {
            let err = Element::parse(doc, "bad.xml").unwrap_err().to_string();
            assert!(err.contains("bad.xml"), "{doc:?}: {err}");
        }
    }
}
