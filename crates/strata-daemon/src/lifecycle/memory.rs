//! Snapshots of a running domain with its memory, as `virsh
//! snapshot-create` without `--disk-only` makes them for QEMU (`savevm`'s
//! layout): the guest is paused, QEMU's migration stream of its memory and
//! devices goes to a file in the run folder, every disk is snapshotted
//! internally at that same instant, the stream goes into the first disk's
//! snapshot as its VM state, and the guest runs on as it was. With
//! `--live` the guest runs while QEMU copies its memory (a pre-copy
//! migration into the file) and is paused only for the last of it, when
//! the disks are snapshotted. The guest runs again as soon as its disks
//! are snapshotted and its memory saved; the memory is then copied into the
//! first disk's snapshot (that disk's requests wait meanwhile). What the
//! guest is paused for is reported as the snapshot's stall. And the way
//! back: a domain whose disks were reverted to such a snapshot starts from
//! its memory, going on from the snapshot's instant.

use std::sync::Arc;
use std::time::Instant;

use strata_core::snapshot::create::{self as snapshot_create, CreateRequest, Memory};
use tracing::Instrument;

use strata_core::live::saved;
use strata_core::snapshot::revert::MemoryAt;

use super::live::no_backup;
use super::save::{check_new, finish_blocking};
use super::Service;
use crate::error::{Error, Result};
use crate::types::{Made, State};

impl Service {
    /// `snapshot create` of running or paused domain `name` with its
    /// memory.
    pub(super) async fn snapshot_create_with_memory(
        self: &Arc<Self>,
        name: &str,
        req: CreateRequest,
    ) -> Result<Made> {
        let span = tracing::info_span!("op", op = "snapshot create", domain = %name, memory = true);
        async {
            let slot = self.active_slot(name).await?;
            let _op = slot.op.lock().await;
            let run = slot
                .running()
                .ok_or_else(|| Error::invalid(name, "domain is not running"))?;
            let running = slot.status().state == State::Running;
            let live = req.live && running;
            let hv = |source| Error::Hypervisor {
                domain: name.to_string(),
                source,
            };
            // External memory (--memspec file=PATH): a saved machine file,
            // as `domain save` writes it, made whole once the save ends.
            // Internal: a stream in the run folder, copied into the first
            // disk's snapshot.
            let external = match req.memory_file() {
                Some(file) => {
                    if !file.is_absolute() {
                        return Err(Error::Core(strata_core::Error::invalid(
                            format!("domain '{name}': --memspec file={}", file.display()),
                            "give an absolute path",
                        )));
                    }
                    check_new(file)?;
                    let xml = self.definition(name).await?.to_xml(true);
                    Some((file.to_path_buf(), xml))
                }
                None => None,
            };
            let (stream, offset) = match &external {
                Some((file, xml)) => (saved::partial(file), saved::stream_offset(xml)),
                None => (run.run_dir.join("memory.part"), 0),
            };
            let mut paused_at = Instant::now();
            if running && !live {
                run.vm.pause().await.map_err(hv)?;
            }
            let _ = std::fs::remove_file(&stream);
            let saving = Instant::now();
            // Live, the guest runs while most of its memory is copied, and
            // is paused at the switchover: the disks are snapshotted then,
            // and the save finished.
            let begun = match live {
                true => run.vm.save_state_live(&stream, offset).await.map(|()| None),
                false => run.vm.save_state(&stream, offset).await.map(Some),
            };
            tracing::info!(
                ms = saving.elapsed().as_millis() as u64,
                live,
                "memory saved (live: up to the switchover)"
            );
            if live {
                paused_at = Instant::now();
            }
            // When the guest ran again (before the memory is kept).
            let resumed = Arc::new(std::sync::Mutex::new(None::<Instant>));
            let made = match begun {
                Ok(saved) => {
                    let (run2, part) = (run.clone(), stream.clone());
                    let external = external.clone();
                    let resumed = resumed.clone();
                    let handle = tokio::runtime::Handle::current();
                    self.with_disks(run.clone(), name, move |store, n, disks| {
                        no_backup(store, n)?;
                        disks.no_block_job(n)?;
                        let done = Box::new(move || {
                            let failed = |e: String| {
                                strata_core::Error::invalid(
                                    format!("domain '{n}'"),
                                    format!("saving its memory: {e}"),
                                )
                            };
                            let saved = match saved {
                                Some(s) => s,
                                None => handle
                                    .block_on(run2.vm.finish_save(&part, offset))
                                    .map_err(|e| failed(e.to_string()))?,
                            };
                            let file = match external {
                                Some((file, xml)) => {
                                    finish_blocking(&part, &file, &xml, running)
                                        .map_err(|e| failed(e.to_string()))?;
                                    file
                                }
                                None => part,
                            };
                            // The disks are snapshotted and the memory saved:
                            // the guest runs on while the memory is kept
                            // (copied into the first disk's snapshot, which
                            // holds that disk's requests meanwhile).
                            if running {
                                match handle.block_on(run2.vm.resume()) {
                                    Ok(()) => {
                                        *resumed.lock().unwrap_or_else(|e| e.into_inner()) =
                                            Some(Instant::now())
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "cannot resume the guest yet")
                                    }
                                }
                            }
                            Ok(Memory {
                                file,
                                offset,
                                len: saved.bytes,
                                running,
                            })
                        });
                        snapshot_create::create_with_memory_on(store, n, &req, disks, done)
                    })
                    .await
                }
                Err(e) => Err(hv(e)),
            };
            let _ = std::fs::remove_file(&stream);
            if let (Some((file, _)), Err(_)) = (&external, &made) {
                let _ = std::fs::remove_file(file);
            }
            if live && made.is_err() {
                // QEMU runs the guest again once the save is given up.
                if let Err(e) = run.vm.cancel_save().await {
                    tracing::warn!(error = %e, "cannot cancel the live save");
                }
            }
            let resumed_at = *resumed.lock().unwrap_or_else(|e| e.into_inner());
            if running && resumed_at.is_none() && (made.is_ok() || !live) {
                if let Err(e) = run.vm.resume().await {
                    tracing::error!(error = %e, "cannot run the guest again after the snapshot");
                    if made.is_ok() {
                        return Err(hv(e));
                    }
                }
            }
            let created = made?;
            let paused_for = resumed_at.map_or(paused_at.elapsed(), |at| at - paused_at);
            Ok(Made::new(created.def.name, Some(paused_for)))
        }
        .instrument(span)
        .await
    }
}

impl Service {
    /// Starts `name`, whose disks were reverted to snapshot `snapshot`,
    /// from the memory kept with it, as the machine the snapshot recorded:
    /// QEMU waits for the state and reads it where it lies (a memory file,
    /// or the first disk's image when the state is there in one piece, as
    /// strata writes it; else it is copied out into the run folder first);
    /// the guest then runs, or stays paused.
    pub async fn start_from_snapshot(
        self: &Arc<Self>,
        name: &str,
        snapshot: &str,
        paused: bool,
    ) -> Result<crate::types::DomainInfo> {
        let span = tracing::info_span!("op", op = "start", domain = %name, snapshot = %snapshot);
        async {
            if self.is_stopping() {
                return Err(Error::Stopping);
            }
            // The machine the memory was saved with: the revert made the
            // snapshot's definition the domain's (with each disk where the
            // revert left it).
            let domain = self.definition(name).await?;
            let (n, s) = (name.to_string(), snapshot.to_string());
            let found = self
                .store(move |store| strata_core::snapshot::revert::memory_image(store, &n, &s))
                .await?;
            let Some(at) = found else {
                return Err(Error::Core(strata_core::Error::invalid(
                    format!("domain '{name}': snapshot '{snapshot}'"),
                    "holds no memory to start from",
                )));
            };
            let (image, len) = match at {
                // A saved machine file, or a VM state in one piece in the
                // image: QEMU reads it where it is.
                MemoryAt::External { file, offset }
                | MemoryAt::Internal {
                    image: file,
                    in_file: Some(offset),
                    ..
                } => {
                    return self
                        .launch(name, &domain, paused, Some((&file, offset)))
                        .await;
                }
                MemoryAt::Internal { image, len, .. } => (image, len),
            };
            let run_dir = self.state_dir().join("run").join(name);
            std::fs::create_dir_all(&run_dir)
                .map_err(|e| Error::io(&run_dir, "create the run folder", e))?;
            let stream = run_dir.join("memory.load");
            let _ = std::fs::remove_file(&stream);
            let (to, snap) = (stream.clone(), snapshot.to_string());
            tokio::task::spawn_blocking(move || {
                strata_core::snapshot::revert::extract_memory(&image, &snap, len, &to)
            })
            .await
            .map_err(|e| Error::Internal(format!("memory task: {e}")))??;
            let started = self.launch(name, &domain, paused, Some((&stream, 0))).await;
            let _ = std::fs::remove_file(&stream);
            started
        }
        .instrument(span)
        .await
    }
}
