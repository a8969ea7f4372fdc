//! Trees of named moments (snapshots, checkpoints) as virsh shows them:
//! `--tree` drawings, descendants (`--from [--descendants]`) and
//! topological order (`--topological`).

/// A node: its name and its parent's.
pub type Node = (String, Option<String>);

/// The tree drawn as virsh draws it: each root, its children below it with
/// `|` and `+-`, a blank line after each root's tree. With `from`, only the
/// tree under that node.
pub fn draw(nodes: &[Node], from: Option<&str>) -> String {
    fn walk(nodes: &[Node], name: &str, prefix: &str, out: &mut String) {
        let kids: Vec<&Node> = nodes
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(name))
            .collect();
        for (i, (k, _)) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            out.push_str(&format!("{prefix}  |\n{prefix}  +- {k}\n"));
            let next = format!("{prefix}{}", if last { "    " } else { "  | " });
            walk(nodes, k, &next, out);
        }
    }
    let mut out = String::new();
    let roots: Vec<&str> = match from {
        Some(f) => vec![f],
        None => nodes
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| n.as_str())
            .collect(),
    };
    for r in roots {
        out.push_str(&format!("{r}\n"));
        walk(nodes, r, "", &mut out);
        out.push('\n');
    }
    out
}

/// The tree as JSON: `[{"name", "children": […]}]` from each root (or from
/// `from`).
pub fn nested(nodes: &[Node], from: Option<&str>) -> serde_json::Value {
    fn node(nodes: &[Node], name: &str) -> serde_json::Value {
        let kids: Vec<serde_json::Value> = nodes
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(name))
            .map(|(k, _)| node(nodes, k))
            .collect();
        serde_json::json!({ "name": name, "children": kids })
    }
    let roots: Vec<serde_json::Value> = match from {
        Some(f) => vec![node(nodes, f)],
        None => nodes
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| node(nodes, n))
            .collect(),
    };
    serde_json::Value::Array(roots)
}

/// The names below `name`: its children, or with `all` every descendant.
pub fn below(nodes: &[Node], name: &str, all: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut frontier = vec![name.to_string()];
    while let Some(n) = frontier.pop() {
        for (k, _) in nodes
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(n.as_str()))
        {
            out.push(k.clone());
            if all {
                frontier.push(k.clone());
            }
        }
    }
    out
}

/// The order in which every node comes after its parent (stable otherwise).
pub fn topological(nodes: &[Node]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    let mut placed = vec![false; nodes.len()];
    let known = |p: &str| nodes.iter().any(|(n, _)| n == p);
    while order.len() < nodes.len() {
        let before = order.len();
        for (i, (_, p)) in nodes.iter().enumerate() {
            if placed[i] {
                continue;
            }
            let ready = match p {
                None => true,
                Some(p) if !known(p) => true,
                Some(p) => order.iter().any(|&j: &usize| nodes[j].0 == *p),
            };
            if ready {
                placed[i] = true;
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
}
