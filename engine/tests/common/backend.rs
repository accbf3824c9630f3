//! The two storage backends every conformance test runs on, and the macro that instantiates a
//! test once per backend.
//!
//! A conformance test is an `async fn name(db: Backend) -> anyhow::Result<()>` written once
//! against `Arc<dyn Store>` and the backend-neutral [`JournalReader`]; `conformance!` turns a
//! list of them into `postgres::name` (a fresh database per test through `#[sqlx::test]`, so
//! `DATABASE_URL` must point at a server) and `sqlite::name` (a fresh file per test under
//! cargo's target tmp dir, removed when the test passes, kept for inspection when it fails).

use super::reader::{JournalReader, PgReader, SqliteReader};
use engine::{PgStore, SqliteStore, Store};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Instantiates each listed conformance test for PostgreSQL and for SQLite.
#[allow(unused_macros)]
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[::sqlx::test(migrations = false)]
                async fn $name(pool: ::sqlx::PgPool) -> ::anyhow::Result<()> {
                    let db = crate::common::Backend::postgres(pool).await;
                    let result = super::$name(db.clone()).await;
                    db.finish(result.is_ok()).await;
                    result
                }
            )+
        }
        mod sqlite {
            $(
                #[::tokio::test]
                async fn $name() -> ::anyhow::Result<()> {
                    let db = crate::common::Backend::sqlite(stringify!($name)).await;
                    let result = super::$name(db.clone()).await;
                    db.finish(result.is_ok()).await;
                    result
                }
            )+
        }
    };
}
pub(crate) use conformance;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// A migrated, empty journal on one backend, with a reader of its tables.
#[derive(Debug, Clone)]
pub struct Backend {
    pub kind: Kind,
    store: Arc<dyn Store>,
    reader: Arc<dyn JournalReader>,
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    Postgres {
        connect: Box<PgConnectOptions>,
        /// Pools of [`Backend::another_store`], closed before the test database is dropped.
        pools: Mutex<Vec<PgPool>>,
    },
    Sqlite {
        dir: PathBuf,
        path: PathBuf,
        pools: Mutex<Vec<SqlitePool>>,
    },
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Sqlite { dir, .. } = self
            && std::thread::panicking()
            && dir.exists()
        {
            eprintln!(
                "test failed; its SQLite database is kept in {}",
                dir.display()
            );
        }
    }
}

impl Backend {
    /// PostgreSQL over the fresh database of `#[sqlx::test]`.
    pub async fn postgres(pool: PgPool) -> Self {
        let connect = Box::new((*pool.connect_options()).clone());
        let store = PgStore::new(pool.clone());
        store.migrate().await.expect("migrations apply");
        Self {
            kind: Kind::Postgres,
            store: Arc::new(store),
            reader: Arc::new(PgReader::new(pool)),
            inner: Arc::new(Inner::Postgres {
                connect,
                pools: Mutex::new(Vec::new()),
            }),
        }
    }

    /// SQLite in a fresh file (in a fresh directory: `connect` must create it).
    pub async fn sqlite(test: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("engine-sqlite")
            .join(format!("{test}-{}", uuid::Uuid::new_v4()));
        let path = dir.join("journal.db");
        let store = SqliteStore::connect(&path.to_string_lossy())
            .await
            .expect("open the SQLite journal");
        store.migrate().await.expect("migrations apply");
        let pool = store.pool().clone();
        Self {
            kind: Kind::Sqlite,
            store: Arc::new(store),
            reader: Arc::new(SqliteReader::new(pool.clone())),
            inner: Arc::new(Inner::Sqlite {
                dir,
                path,
                pools: Mutex::new(vec![pool]),
            }),
        }
    }

    /// The test's store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Reads the journal's tables directly, without the store's queries.
    pub fn reader(&self) -> &dyn JournalReader {
        self.reader.as_ref()
    }

    /// Another store on the same database with its own pool of `connections`, as another
    /// process would open it.
    pub async fn another_store(&self, connections: u32) -> Arc<dyn Store> {
        match self.inner.as_ref() {
            Inner::Postgres { connect, pools } => {
                let pool = PgPoolOptions::new()
                    .max_connections(connections)
                    .connect_with((**connect).clone())
                    .await
                    .expect("connect another pool");
                lock(pools).push(pool.clone());
                Arc::new(PgStore::new(pool))
            }
            Inner::Sqlite { path, pools, .. } => {
                let options =
                    SqliteStore::connect_options(&path.to_string_lossy()).expect("connect options");
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(options)
                    .await
                    .expect("open another pool");
                lock(pools).push(pool.clone());
                Arc::new(SqliteStore::new(pool))
            }
        }
    }

    /// The database file of a SQLite backend.
    pub fn sqlite_path(&self) -> Option<&std::path::Path> {
        match self.inner.as_ref() {
            Inner::Sqlite { path, .. } => Some(path),
            Inner::Postgres { .. } => None,
        }
    }

    /// The resolution of the database clock: a time it records may be that much earlier than
    /// the instant it stands for (PostgreSQL keeps microseconds; SQLite's `now` milliseconds).
    pub fn clock_resolution(&self) -> chrono::Duration {
        match self.kind {
            Kind::Postgres => chrono::Duration::zero(),
            Kind::Sqlite => chrono::Duration::milliseconds(1),
        }
    }

    /// Closes the extra pools; on success removes a SQLite test's files.
    pub async fn finish(&self, success: bool) {
        match self.inner.as_ref() {
            Inner::Postgres { pools, .. } => {
                let pools: Vec<PgPool> = lock(pools).drain(..).collect();
                for pool in pools {
                    pool.close().await;
                }
            }
            Inner::Sqlite { dir, pools, .. } => {
                let pools: Vec<SqlitePool> = lock(pools).drain(..).collect();
                for pool in pools {
                    pool.close().await;
                }
                if success {
                    let _ = std::fs::remove_dir_all(dir);
                } else {
                    eprintln!(
                        "test failed; its SQLite database is kept in {}",
                        dir.display()
                    );
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh directory for a SQLite-specific test, under cargo's target tmp dir.
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("engine-sqlite")
            .join(format!("{test}-{}", uuid::Uuid::new_v4()));
        Self { dir }
    }

    /// Removes the directory (call when the test passed; a failed test keeps it).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
