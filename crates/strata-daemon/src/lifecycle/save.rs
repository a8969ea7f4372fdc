//! Save and restore, as `virsh save` and `virsh restore`: the machine's
//! memory and devices (QEMU's migration stream) and its definition go to
//! one file ([`strata_core::live::saved`]) and the domain stops; a
//! restore checks the whole file, starts QEMU waiting for the state,
//! loads it, and runs the machine (or leaves it paused) where it was.
//!
//! A save that fails leaves no file and the machine as it was (resumed if
//! it ran); a restore that fails leaves the domain shut off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use strata_core::live::saved;
use tracing::Instrument;

use super::Service;
use crate::error::{Error, Result};
use crate::registry::EndCause;
use crate::types::{DomainInfo, SaveInfo, State};

impl Service {
    /// Saves `name` to `file` (which must not exist) and stops it; a
    /// restore leaves it paused or running as `paused` says, by default as
    /// it is now.
    pub async fn save(
        self: &Arc<Self>,
        name: &str,
        file: &Path,
        paused: Option<bool>,
    ) -> Result<SaveInfo> {
        let span = tracing::info_span!("op", op = "save", domain = %name, file = %file.display());
        async {
            let t = Instant::now();
            let slot = self.active_slot(name).await?;
            let _op = slot.op.lock().await;
            let status = slot.status();
            let run = match slot.running() {
                Some(run) if status.state.is_active() => run,
                _ => return Err(Error::invalid(name, "domain is not running")),
            };
            if let Some(disk) = run.jobs.active() {
                return Err(refuse(
                    format!("domain '{name}'"),
                    format!("a block job runs on disk '{disk}': wait for it or abort it first"),
                ));
            }
            check_new(file)?;
            let xml = self.definition(name).await?.to_xml(true);
            let running = status.state == State::Running;
            let hv = |source| Error::Hypervisor {
                domain: name.to_string(),
                source,
            };
            if running {
                run.vm.pause().await.map_err(hv)?;
            }
            let paused_at = Instant::now();
            let part = saved::partial(file);
            let _ = std::fs::remove_file(&part);
            let written = match run.vm.save_state(&part, saved::stream_offset(&xml)).await {
                Ok(s) => {
                    let run_after = paused.map_or(running, |p| !p);
                    finish(&part, file, xml, run_after).await.map(|()| s)
                }
                Err(e) => Err(hv(e)),
            };
            let state = match written {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    if running {
                        if let Err(r) = run.vm.resume().await {
                            tracing::error!(error = %r, "cannot resume the guest after a failed save");
                        }
                    }
                    return Err(e);
                }
            };
            tracing::info!(bytes = state.bytes, "state saved");
            self.end_run(&slot, EndCause::Save).await?;
            Ok(SaveInfo {
                domain: self.info(name).await?,
                file: file.to_path_buf(),
                bytes: state.bytes,
                paused_ms: paused_at.elapsed().as_millis() as u64,
                total_ms: t.elapsed().as_millis() as u64,
            })
        }
        .instrument(span)
        .await
    }

    /// Restores the domain saved in `file`: running if it ran when saved,
    /// else paused, unless `paused` says.
    pub async fn restore(
        self: &Arc<Self>,
        file: &Path,
        paused: Option<bool>,
    ) -> Result<DomainInfo> {
        let span = tracing::info_span!("op", op = "restore", file = %file.display());
        async {
            if self.is_stopping() {
                return Err(Error::Stopping);
            }
            let f = file.to_path_buf();
            let saved = tokio::task::spawn_blocking(move || saved::read(&f))
                .await
                .map_err(|e| Error::Internal(format!("restore task: {e}")))??;
            let what = file.display().to_string();
            let domain = strata_core::Domain::from_xml(&saved.xml, &what)?;
            let name = domain.name();
            // The domain must be this one still: a saved machine brings
            // its own definition for the run, not a new domain.
            let defined = self.definition(&name).await?;
            if defined.uuid() != domain.uuid() {
                return Err(refuse(
                    format!("domain '{name}'"),
                    format!(
                        "{what} holds a domain '{name}' with UUID {}, the one defined has {}",
                        domain.uuid(),
                        defined.uuid()
                    ),
                ));
            }
            let paused = paused.unwrap_or(!saved.running);
            self.launch(&name, &domain, paused, Some((file, saved.stream_offset)))
                .await
        }
        .instrument(span)
        .await
    }
}

/// Refuses a save over an existing file, or into a folder that is not
/// there.
pub(super) fn check_new(file: &Path) -> Result<()> {
    if file.symlink_metadata().is_ok() {
        return Err(refuse(
            file.display().to_string(),
            "exists; a save never overwrites a file",
        ));
    }
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(refuse(
            file.display().to_string(),
            format!("no folder {}", parent.display()),
        ));
    }
    Ok(())
}

/// A request that cannot be carried out, naming `what`.
fn refuse(what: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Core(strata_core::Error::invalid(what, problem))
}

/// Writes the header of the stream QEMU left in `part` and moves it to
/// `file`.
async fn finish(part: &Path, file: &Path, xml: String, running: bool) -> Result<()> {
    let (part, file) = (part.to_path_buf(), file.to_path_buf());
    tokio::task::spawn_blocking(move || finish_blocking(&part, &file, &xml, running))
        .await
        .map_err(|e| Error::Internal(format!("save task: {e}")))?
}

/// [`finish`], in a blocking task.
pub(super) fn finish_blocking(part: &Path, file: &Path, xml: &str, running: bool) -> Result<()> {
    saved::finish(part, xml, running)?;
    std::fs::rename(part, file)
        .map_err(|e| Error::io(file, "move the saved machine into place", e))?;
    if let Some(dir) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
