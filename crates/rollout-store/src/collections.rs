//! Collections (named groups of recorded artifacts and jobs) and removing the last job.

use crate::{Job, Result, Store, StoreError};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;

/// A collection and how many members it has.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Collection {
    pub name: String,
    pub description: Option<String>,
    pub created_at: String,
    pub members: usize,
}

/// A member of a collection: an artifact (by full hash) or a job (by uid).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    /// `artifact` or `job`.
    pub kind: String,
    /// The artifact's hash or the job's uid.
    pub reference: String,
    pub added_at: String,
}

impl Store {
    /// Create an empty collection; an existing name is an error.
    pub fn create_collection(&mut self, name: &str, description: Option<&str>) -> Result<()> {
        let n = self.sql(self.conn.execute(
            "INSERT OR IGNORE INTO collections (name, description, created_at) VALUES (?1, ?2, ?3)",
            params![name, description, crate::now()],
        ))?;
        if n == 0 {
            return Err(StoreError::CollectionExists(name.into()));
        }
        Ok(())
    }

    fn collection_exists(&self, name: &str) -> Result<()> {
        let found: Option<i64> = self.sql(
            self.conn
                .query_row("SELECT 1 FROM collections WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional(),
        )?;
        found
            .map(|_| ())
            .ok_or_else(|| StoreError::UnknownCollection(name.into()))
    }

    /// Add a member (`kind` is `artifact` or `job`, `reference` its full hash or uid); adding it
    /// twice is no error. Returns whether it was new.
    pub fn add_to_collection(&mut self, name: &str, kind: &str, reference: &str) -> Result<bool> {
        self.collection_exists(name)?;
        let n = self.sql(self.conn.execute(
            "INSERT OR IGNORE INTO collection_members (collection, kind, ref, added_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, kind, reference, crate::now()],
        ))?;
        Ok(n > 0)
    }

    /// Every collection, by name.
    pub fn collections(&self) -> Result<Vec<Collection>> {
        let mut st = self.sql(self.conn.prepare(
            "SELECT c.name, c.description, c.created_at,
                    (SELECT COUNT(*) FROM collection_members m WHERE m.collection = c.name)
             FROM collections c ORDER BY c.name",
        ))?;
        let rows = self.sql(st.query_map([], |r| {
            Ok(Collection {
                name: r.get(0)?,
                description: r.get(1)?,
                created_at: r.get(2)?,
                members: r.get::<_, i64>(3)? as usize,
            })
        }))?;
        self.sql(rows.collect())
    }

    /// The members of a collection, in the order they were added.
    pub fn collection_members(&self, name: &str) -> Result<Vec<Member>> {
        self.collection_exists(name)?;
        let mut st = self.sql(self.conn.prepare(
            "SELECT kind, ref, added_at FROM collection_members WHERE collection = ?1
             ORDER BY added_at, rowid",
        ))?;
        let rows = self.sql(st.query_map([name], |r| {
            Ok(Member {
                kind: r.get(0)?,
                reference: r.get(1)?,
                added_at: r.get(2)?,
            })
        }))?;
        self.sql(rows.collect())
    }

    /// Remove the most recently recorded job (its input and output records go with it; the
    /// artifacts stay, other jobs may name them). Returns it, or None when there is none.
    pub fn pop_job(&mut self) -> Result<Option<Job>> {
        let uid: Option<String> = self.sql(
            self.conn
                .query_row("SELECT uid FROM jobs ORDER BY id DESC LIMIT 1", [], |r| {
                    r.get(0)
                })
                .optional(),
        )?;
        let Some(uid) = uid else {
            return Ok(None);
        };
        let job = self.job(&uid)?;
        self.write(|tx| {
            tx.execute(
                "DELETE FROM collection_members WHERE kind = 'job' AND ref = ?1",
                [&uid],
            )?;
            let id: i64 =
                tx.query_row("SELECT id FROM jobs WHERE uid = ?1", [&uid], |r| r.get(0))?;
            crate::delete_job(tx, id)
        })?;
        Ok(Some(job))
    }
}
