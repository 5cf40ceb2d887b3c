//! A schema of its own on the test PostgreSQL server (`cargo xtask setup`
//! starts it; its URL is in `.data/postgres/url`) for each test that needs
//! one: the conformance cases, and control planes the end-to-end tests start
//! with `--database-url`.

/// The test server's URL, or a panic saying how to start it: a test that
/// misses what it needs fails, never skips.
pub fn server_url() -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.data/postgres/url");
    match std::fs::read_to_string(&file) {
        Ok(url) => url.trim().to_owned(),
        Err(e) => panic!(
            "the test PostgreSQL server is not set up ({}: {e}); run `cargo xtask setup`",
            file.display()
        ),
    }
}

/// A schema made for one case, dropped (with everything in it) when the
/// case ends, passed or not.
pub struct Schema {
    url: String,
    name: String,
}

impl Schema {
    pub async fn new() -> Schema {
        let url = server_url();
        let name = format!("strato_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!("the test PostgreSQL server does not answer ({e}); run `cargo xtask setup`")
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut admin)
            .await
            .expect("create schema");
        Schema { url, name }
    }

    /// The URL of a connection whose tables live in this schema.
    pub fn url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}options=-c%20search_path%3D{name}&application_name={name}",
            self.url,
            name = self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Drop runs inside the case's runtime: the schema goes on a thread
        // of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
                // The case's store may still hold connections, one of them
                // in a transaction whose rollback is queued behind this
                // (blocked) thread: they go first, with their locks.
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = $1",
                )
                .bind(&name)
                .execute(&mut admin)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                    .execute(&mut admin)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("test schema {} was not dropped: {dropped:?}", self.name);
        }
    }
}
