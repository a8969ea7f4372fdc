//! Trees of named moments (snapshots, checkpoints) as virsh shows them:
//! `--tree` drawings, children and descendants, topological order.
//!
//! Trees come from the store, where a chain of snapshots may be thousands
//! deep: every walk here keeps its own stack, none recurses.

use std::collections::{HashMap, HashSet};

/// A node: its name and its parent's.
pub type Node = (String, Option<String>);

/// Each node's children, in stored order.
struct Children<'a>(HashMap<&'a str, Vec<&'a str>>);

impl<'a> Children<'a> {
    fn of(nodes: &'a [Node]) -> Children<'a> {
        let mut map: HashMap<&str, Vec<&str>> = HashMap::new();
        for (n, p) in nodes {
            if let Some(p) = p {
                map.entry(p.as_str()).or_default().push(n.as_str());
            }
        }
        Children(map)
    }

    fn of_node(&self, name: &str) -> &[&'a str] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The roots (or `from` alone).
fn roots<'a>(nodes: &'a [Node], from: Option<&'a str>) -> Vec<&'a str> {
    match from {
        Some(f) => vec![f],
        None => nodes
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| n.as_str())
            .collect(),
    }
}

/// The tree drawn as virsh draws it: each root, its children below it with
/// `|` and `+-`, a blank line after each root's tree. With `from`, only the
/// tree under that node.
pub fn draw(nodes: &[Node], from: Option<&str>) -> String {
    /// Stacks the children of `name`, first child on top: (name, the
    /// prefix of its own line, the prefix of its children's lines).
    fn push_kids<'a>(
        stack: &mut Vec<(&'a str, String, String)>,
        kids: &Children<'a>,
        name: &str,
        prefix: &str,
    ) {
        let kids = kids.of_node(name);
        let n = kids.len();
        for (i, &k) in kids.iter().enumerate().rev() {
            let next = format!("{prefix}{}", if i + 1 == n { "    " } else { "  | " });
            stack.push((k, prefix.to_string(), next));
        }
    }
    let kids = Children::of(nodes);
    let mut out = String::new();
    let mut seen = HashSet::new();
    for r in roots(nodes, from) {
        out.push_str(&format!("{r}\n"));
        let mut stack = Vec::new();
        if seen.insert(r) {
            push_kids(&mut stack, &kids, r, "");
        }
        while let Some((k, own, next)) = stack.pop() {
            out.push_str(&format!("{own}  |\n{own}  +- {k}\n"));
            // A loop (not made by strata) is drawn once round.
            if seen.insert(k) {
                push_kids(&mut stack, &kids, k, &next);
            }
        }
        out.push('\n');
    }
    out
}

/// The tree as JSON: `[{"name", "children": […]}]` from each root (or from
/// `from`).
pub fn nested(nodes: &[Node], from: Option<&str>) -> serde_json::Value {
    use serde_json::{json, Value};
    // Built bottom-up; each frame is a node, its children built so far and
    // how many of its children were started.
    let index = Children::of(nodes);
    let mut out = Vec::new();
    for r in roots(nodes, from) {
        let mut seen = HashSet::from([r]);
        let mut stack: Vec<(&str, Vec<Value>, usize)> = vec![(r, Vec::new(), 0)];
        while let Some(top) = stack.last_mut() {
            let kids = index.of_node(top.0);
            if let Some(&k) = kids.get(top.2) {
                top.2 += 1;
                if seen.insert(k) {
                    stack.push((k, Vec::new(), 0));
                } else {
                    // A loop (not made by strata) is followed once round.
                    top.1.push(json!({ "name": k, "children": [] }));
                }
                continue;
            }
            let (name, kids, _) = stack.pop().expect("not empty");
            let v = json!({ "name": name, "children": kids });
            match stack.last_mut() {
                Some(parent) => parent.1.push(v),
                None => out.push(v),
            }
        }
    }
    Value::Array(out)
}

/// The names below `name`: its children, or with `all` every descendant,
/// each after its parent.
pub fn below(nodes: &[Node], name: &str, all: bool) -> Vec<String> {
    let index = Children::of(nodes);
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::from([name]);
    let mut frontier = vec![name];
    while let Some(n) = frontier.pop() {
        for &k in index.of_node(n) {
            // A loop (not made by strata) is followed once round.
            if !seen.insert(k) {
                continue;
            }
            out.push(k.to_string());
            if all {
                frontier.push(k);
            }
        }
    }
    out
}

/// The order in which every node comes after its parent (stable otherwise).
pub fn topological(nodes: &[Node]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    let mut placed = vec![false; nodes.len()];
    let mut placed_names: HashSet<&str> = HashSet::new();
    let names: HashSet<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
    let known = |p: &str| names.contains(p);
    while order.len() < nodes.len() {
        let before = order.len();
        for (i, (_, p)) in nodes.iter().enumerate() {
            if placed[i] {
                continue;
            }
            let ready = match p {
                None => true,
                Some(p) if !known(p) => true,
                Some(p) => placed_names.contains(p.as_str()),
            };
            if ready {
                placed[i] = true;
                placed_names.insert(nodes[i].0.as_str());
                order.push(i);
            }
        }
        if order.len() == before {
            // A loop (not made by strata): the rest in stored order.
            order.extend((0..nodes.len()).filter(|&i| !placed[i]));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, parent: Option<&str>) -> Node {
        (name.to_string(), parent.map(str::to_string))
    }

    #[test]
    fn topological_puts_parents_first() {
        let nodes = [
            n("c", Some("b")),
            n("a", None),
            n("b", Some("a")),
            n("d", Some("a")),
        ];
        let order: Vec<&str> = topological(&nodes)
            .into_iter()
            .map(|i| nodes[i].0.as_str())
            .collect();
        assert_eq!(order, ["a", "b", "d", "c"]);
        let mut all = below(&nodes, "a", true);
        all.sort();
        assert_eq!(all, ["b", "c", "d"]);
        assert_eq!(below(&nodes, "a", false).len(), 2);
        assert_eq!(draw(&nodes, Some("b")), "b\n  |\n  +- c\n\n");
        assert_eq!(
            nested(&nodes, Some("b")).to_string(),
            r#"[{"children":[{"children":[],"name":"c"}],"name":"b"}]"#
        );
    }

    #[test]
    fn drawings_match_virsh() {
        let nodes = [
            n("a", None),
            n("b", Some("a")),
            n("c", Some("b")),
            n("d", Some("a")),
            n("e", None),
        ];
        assert_eq!(
            draw(&nodes, None),
            "a\n  |\n  +- b\n  |   |\n  |   +- c\n  |\n  +- d\n\ne\n\n"
        );
        assert_eq!(
            nested(&nodes, None).to_string(),
            r#"[{"children":[{"children":[{"children":[],"name":"c"}],"name":"b"},{"children":[],"name":"d"}],"name":"a"},{"children":[],"name":"e"}]"#
        );
    }

    #[test]
    fn deep_chains_and_loops_do_not_overflow_or_hang() {
        let mut nodes = vec![n("s0", None)];
        for i in 1..50_000 {
            nodes.push(n(&format!("s{i}"), Some(&format!("s{}", i - 1))));
        }
        assert_eq!(below(&nodes, "s0", true).len(), 49_999);
        assert!(draw(&nodes, Some("s49990")).ends_with("+- s49999\n\n"));
        assert_eq!(
            nested(&nodes, Some("s49998"))
                .to_string()
                .matches("name")
                .count(),
            2
        );
        // A loop, as a hand-edited store could hold.
        let looped = [n("x", Some("y")), n("y", Some("x"))];
        assert_eq!(below(&looped, "x", true), ["y"]);
        // Drawn once round: x shows again under y, not expanded again.
        assert_eq!(
            draw(&looped, Some("x")),
            "x\n  |\n  +- y\n      |\n      +- x\n\n"
        );
        assert_eq!(
            nested(&looped, Some("x")).to_string(),
            r#"[{"children":[{"children":[{"children":[],"name":"x"}],"name":"y"}],"name":"x"}]"#
        );
    }
}
