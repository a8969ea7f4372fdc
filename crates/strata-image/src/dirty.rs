//! "What changed since bitmap X?" across a backing chain.
//!
//! An external snapshot disables a bitmap in the image that becomes the
//! backing file and starts a fresh enabled bitmap of the same name in the
//! new overlay (see `transaction.rs`). The changes since the bitmap was made
//! are then the union of that bitmap in every layer from the top down to the
//! layer where it was first made; the layers below predate it. So the layers
//! holding the bitmap must be a run starting at the top: a layer in the
//! middle without it means changes were made that nothing tracked.

use crate::error::{Error, Result};
use crate::image::Image;

/// One layer's path and its copy of a bitmap (`None`: the layer lacks it).
type Layer = (String, Option<Vec<(u64, u64)>>);

/// Bitmap `name` in each layer of `top`'s chain, top first: the layer's
/// path and its dirty extents (`None` where the layer lacks the bitmap).
/// A layer whose copy is inconsistent (left in use) is an error.
fn layers(top: &dyn Image, name: &str) -> Result<Vec<Layer>> {
    let mut out = Vec::new();
    let mut layer: Option<&dyn Image> = Some(top);
    while let Some(img) = layer {
        let q = img.dirty_bitmaps();
        let bitmap = match q {
            Some(q) => q.bitmaps()?.into_iter().find(|b| b.name == name),
            None => None,
        };
        let extents = match (bitmap, q) {
            (Some(b), _) if !b.usable() => {
                return Err(Error::invalid(
                    img.path(),
                    format!(
                        "bitmap '{name}' {}: remove it and take a full backup",
                        b.unusable_why()
                    ),
                ))
            }
            (Some(_), Some(q)) => Some(q.bitmap_dirty(name)?),
            _ => None,
        };
        out.push((img.path().to_string(), extents));
        layer = img.backing().map(|b| b.as_ref());
    }
    if out.iter().all(|(_, e)| e.is_none()) {
        return Err(Error::invalid(
            top.path(),
            format!("bitmap '{name}' not found in the backing chain"),
        ));
    }
    Ok(out)
}

/// The guest ranges `(start, length)` changed since bitmap `name` was
/// made, merged over every layer of `top`'s chain that holds it; sorted,
/// non-overlapping, at each layer's granularity.
pub fn dirty_since(top: &dyn Image, name: &str) -> Result<Vec<(u64, u64)>> {
    let mut all: Vec<(u64, u64)> = Vec::new();
    // The first layer without the bitmap, once the run from the top ended
    // (or before it began).
    let mut lacking: Option<String> = None;
    for (path, extents) in layers(top, name)? {
        match extents {
            Some(e) => {
                if let Some(gap) = &lacking {
                    return Err(Error::invalid(
                        &path,
                        format!(
                            "bitmap '{name}' is here but not in {gap}, above it in the backing chain: changes made there were not tracked"
                        ),
                    ));
                }
                all.extend(e);
            }
            None => {
                lacking.get_or_insert(path);
            }
        }
    }
    Ok(union(all, top.size()))
}

/// The union of bitmap `name` over every layer of `top`'s chain that holds
/// it, with no continuity asked of the layers: for a bitmap that was
/// disabled before the upper layers existed (a closed checkpoint
/// interval), where their lack of it is expected. Errors only when no
/// layer has it, or a layer's copy is inconsistent.
pub fn dirty_in_layers(top: &dyn Image, name: &str) -> Result<Vec<(u64, u64)>> {
    let all = layers(top, name)?
        .into_iter()
        .flat_map(|(_, e)| e.unwrap_or_default())
        .collect();
    Ok(union(all, top.size()))
}

/// Sorts and merges ranges `(start, length)`, clipped to `size`.
pub fn union(mut v: Vec<(u64, u64)>, size: u64) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, l) in v {
        if s >= size {
            continue;
        }
        let e = (s + l).min(size);
        match out.last_mut() {
            Some(last) if s <= last.0 + last.1 => last.1 = last.1.max(e - last.0),
            _ => out.push((s, e - s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_overlaps_and_clips() {
        assert_eq!(
            union(vec![(10, 5), (0, 4), (3, 2), (14, 10), (100, 5)], 20),
            vec![(0, 5), (10, 10)]
        );
    }
}
