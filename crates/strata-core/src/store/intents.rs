//! Checkpoints being made: written down before their bitmaps change the
//! images and forgotten once the checkpoint is recorded (or undone), so
//! that a process killed in between leaves what undoes its half.

use rusqlite::{params, OptionalExtension};

use super::Store;
use crate::error::Result;

/// A checkpoint being made: its name and what undoes its bitmaps (JSON,
/// as the checkpoint module writes it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointIntent {
    /// The checkpoint's name.
    pub name: String,
    /// What undoes its bitmaps.
    pub undo: String,
}

impl Store {
    /// Writes down that checkpoint `intent.name` of `domain` is being made
    /// (replacing an earlier intent of the domain).
    pub fn set_checkpoint_intent(&mut self, domain: &str, intent: &CheckpointIntent) -> Result<()> {
        self.write(|tx, sql| {
            tx.execute(
                "INSERT OR REPLACE INTO checkpoint_intents (domain, name, undo) VALUES (?1, ?2, ?3)",
                params![domain, intent.name, intent.undo],
            )
            .map_err(sql)?;
            Ok(())
        })
    }

    /// The checkpoint of `domain` being made, if one is.
    pub fn checkpoint_intent(&self, domain: &str) -> Result<Option<CheckpointIntent>> {
        self.conn
            .query_row(
                "SELECT name, undo FROM checkpoint_intents WHERE domain = ?1",
                [domain],
                |r| {
                    Ok(CheckpointIntent {
                        name: r.get(0)?,
                        undo: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Forgets the checkpoint of `domain` being made (undone, or never
    /// begun).
    pub fn clear_checkpoint_intent(&mut self, domain: &str) -> Result<()> {
        self.write(|tx, sql| {
            tx.execute("DELETE FROM checkpoint_intents WHERE domain = ?1", [domain])
                .map_err(sql)?;
            Ok(())
        })
    }
}
