//! `strata_core::xml::Element::parse`, the XML tree every libvirt reader
//! sits on: hostile text gets an error, never a panic; a tree it accepts is
//! written back as XML that reads back to the same tree (up to text split
//! around what is not kept, such as processing instructions).
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::xml::{Element, Node};

/// `el` with adjacent text nodes joined, at every level.
fn joined(el: &Element) -> Element {
    let mut children: Vec<Node> = Vec::new();
    for n in &el.children {
        match (children.last_mut(), n) {
            (Some(Node::Text(last)), Node::Text(t)) => last.push_str(t),
            (_, Node::Element(e)) => children.push(Node::Element(joined(e))),
            (_, n) => children.push(n.clone()),
        }
    }
    Element {
        name: el.name.clone(),
        attrs: el.attrs.clone(),
        children,
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(el) = Element::parse(&text, "fuzz.xml") else {
        return;
    };
    let out = el.to_xml();
    let again = Element::parse(&out, "written.xml")
        .unwrap_or_else(|e| panic!("strata cannot read the XML it wrote: {e}\n{out}"));
    assert_eq!(
        joined(&again),
        joined(&el),
        "the tree changed on a round trip through\n{out}"
    );
});
