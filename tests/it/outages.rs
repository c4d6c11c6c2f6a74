//! Servers going down mid-conversation, through a TCP proxy the test cuts: replies degrade
//! (logged and counted) instead of failing, nothing queued is lost, and everything recovers when
//! the server is back, without a restart.

use std::time::Duration;

use whisper_actors::ConversationKey;
use whisper_actors::messages::ReplyStatus;
use whisperengine::config::{HistoryBackend, JobsBackend};

use crate::stores::{PgSchema, RedisPrefix};
use crate::support::app::{Client, drain, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;
use crate::support::proxy::Proxy;

#[test]
fn no_job_is_lost_while_redis_is_down() {
    run_actix(|| async {
        let prefix = RedisPrefix::new();
        let proxy = Proxy::start("127.0.0.1:6379").await;
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.storage.jobs = JobsBackend::Redis;
        s.storage.redis_url = format!("redis://{}", proxy.addr).into();
        s.storage.redis_prefix = prefix.0.clone();
        s.classifier.enabled = false;
        s.facts.extract = false;
        let app = start(s, extras(vec![])).await;
        let mut kai = Client::new("aria", "test:kai");
        assert!(is_done(&kai.ask(&app, "my cat is called Miso").await));
        drain(&app).await;

        proxy.down();
        assert!(
            is_done(&kai.ask(&app, "my dog is called Bruno").await),
            "the reply does not depend on the queue"
        );
        let jobs = app.runtime().jobs().unwrap().clone();
        for _ in 0..100 {
            if jobs.backlog_len() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            jobs.backlog_len() > 0,
            "the job is kept while Redis is down"
        );

        proxy.up();
        let key = ConversationKey::new("aria", "test:kai");
        let mut remembered = false;
        for _ in 0..300 {
            let memories = app.user_data().memories(&key, 20).await.unwrap();
            if jobs.backlog_len() == 0 && memories.iter().any(|m| m.text.contains("Bruno")) {
                remembered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(remembered, "the kept job ran once Redis was back");
        app.shutdown().await;
    });
}

#[test]
fn a_postgres_outage_degrades_replies_and_recovers() {
    run_actix(|| async {
        let schema = PgSchema::create().await;
        let proxy = Proxy::start("127.0.0.1:5432").await;
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.storage.history = HistoryBackend::Postgres;
        s.storage.postgres_url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=test options='-c search_path={}'",
            proxy.addr.port(),
            schema.name
        )
        .into();
        s.classifier.enabled = false;
        let app = start(s, extras(vec![])).await;
        let mut ada = Client::new("aria", "test:ada");
        assert!(is_done(&ada.ask(&app, "hello before the outage").await));
        // The turn is stored after the reply is out: let it land before the cut.
        drain(&app).await;

        proxy.down();
        let mut bea = Client::new("aria", "test:bea");
        let reply = bea.ask(&app, "hello during the outage").await;
        let ReplyStatus::Done(timings) = &reply.status else {
            panic!("the reply degrades, it does not fail: {reply:?}")
        };
        assert!(
            timings.degraded.iter().any(|d| d.contains("history")),
            "{:?}",
            timings.degraded
        );
        let status = app.runtime().status();
        assert!(status.degraded_context >= 1);
        for _ in 0..100 {
            if app.runtime().status().store_write_failures >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            app.runtime().status().store_write_failures >= 1,
            "the lost write is counted"
        );

        drain(&app).await;
        proxy.up();
        let mut cid = Client::new("aria", "test:cid");
        let reply = cid.ask(&app, "hello after the outage").await;
        let ReplyStatus::Done(timings) = &reply.status else {
            panic!("{reply:?}")
        };
        assert!(timings.degraded.is_empty(), "{:?}", timings.degraded);
        drain(&app).await;
        let (client, conn) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let stored: Vec<String> = client
            .query("SELECT user_id FROM turns ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(stored, ["test:ada", "test:cid"]);
        app.shutdown().await;
    });
}
