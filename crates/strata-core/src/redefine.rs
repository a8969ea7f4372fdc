//! Checks shared by `snapshot create --redefine` and `checkpoint create
//! --redefine`: the XML is about this domain, and its parent exists without
//! making a loop.

use crate::domain::Domain;
use crate::error::{Error, Result};

/// The definition embedded in redefined XML must be this domain's.
pub(crate) fn same_domain(what: &str, then: &Domain, dom: &Domain) -> Result<()> {
    if then.uuid() != dom.uuid() {
        return Err(Error::invalid(
            what,
            format!(
                "its <domain> has UUID {}, but the domain's is {}",
                then.uuid(),
                dom.uuid()
            ),
        ));
    }
    Ok(())
}

/// `parent` (of `name`) must exist in `tree` (`(name, parent)` pairs) and
/// must not be `name` or below it.
pub(crate) fn parent_fits(
    what: &str,
    name: &str,
    parent: Option<&str>,
    tree: &[(String, Option<String>)],
) -> Result<()> {
    let mut at = parent.map(str::to_string);
    while let Some(n) = at {
        if n == name {
            return Err(Error::invalid(
                what,
                format!("parent '{}' would make a loop", parent.unwrap_or_default()),
            ));
        }
        at = tree
            .iter()
            .find(|(x, _)| *x == n)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| Error::invalid(what, format!("parent '{n}' does not exist")))?;
    }
    Ok(())
}
