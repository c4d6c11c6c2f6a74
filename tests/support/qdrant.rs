//! A real Qdrant server, where one is reachable (`QDRANT_URL`, gRPC, e.g.
//! http://127.0.0.1:6334). None can be installed on the development machines, so the tests
//! that need it are `#[ignore]`d (reported as skipped) and `./bot.sh test` runs them when
//! `QDRANT_URL` is set.

use std::sync::Arc;
use std::time::Duration;

use qdrant_client::Qdrant;
use whisperengine::store::qdrant::QdrantMemory;

/// The server's URL; a test asking for it without one fails instead of passing silently.
pub fn url() -> String {
    std::env::var("QDRANT_URL")
        .expect("this test needs a Qdrant server: set QDRANT_URL (it is skipped otherwise)")
}

/// The characters the test stores know.
pub fn characters() -> Vec<String> {
    vec!["aria".to_owned(), "marlowe".to_owned()]
}

pub async fn store(url: &str, prefix: &str) -> Arc<QdrantMemory> {
    Arc::new(
        QdrantMemory::connect(url, prefix, characters(), Duration::from_secs(10))
            .await
            .expect("Qdrant at QDRANT_URL"),
    )
}

pub fn client(url: &str) -> Qdrant {
    Qdrant::from_url(url)
        .skip_compatibility_check()
        .build()
        .expect("a valid QDRANT_URL")
}

/// Deletes every collection a test made under its (unique) prefix.
pub async fn drop_prefix(url: &str, prefix: &str) {
    let client = client(url);
    let listed = client.list_collections().await.expect("list collections");
    for c in listed.collections {
        if c.name.starts_with(&format!("{prefix}_")) {
            client
                .delete_collection(&c.name)
                .await
                .expect("delete a test collection");
        }
    }
}
