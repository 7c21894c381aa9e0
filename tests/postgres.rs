//! The api-service on PostgreSQL as a deployment runs it: several replicas on one database, a
//! replica killed mid-load, the database restarted under load, and a schema newer than the
//! binary. Each test starts its own PostgreSQL (`harness/postgres.rs`); where none is installed
//! they pass, loudly skipped.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use end_to_end_tests::{
    ServiceProcess,
    api::{ADMIN_TOKEN, TestDatabase, admin_post, api_args, http_client, http_url, start_api},
    binary, eventually,
    metrics::scrape,
};
use serde_json::{Value, json};

const NO_EMBEDDING: &str = "http://127.0.0.1:9";
const ITEMS: i64 = 16;

/// A line of figures for the full tier's closing summary (`artifacts/postgres/NAME.txt`, which
/// scripts/test.sh prints), and for this test's own output.
fn report(name: &str, line: &str) {
    println!("{line}");
    let dir = end_to_end_tests::artifacts_dir().join("postgres");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.txt")), format!("{line}\n")).unwrap();
}

async fn import_items(api: &ServiceProcess) {
    let items: Vec<Value> = (0..ITEMS).map(|id| json!({ "id": id, "name": format!("item {id}") })).collect();
    let imported = admin_post(api, "/api/admin/items/import", &json!({ "items": items })).await;
    assert_eq!(imported.status(), 200, "{:?}", imported.text().await);
}

/// Posts one keyed view event; the status and body, or None when no answer came at all.
async fn post_event(client: &reqwest::Client, api: &str, key: &str, item_id: i64) -> Option<(u16, Value, bool)> {
    let response = client
        .post(format!("{api}/api/events"))
        .json(&json!({ "item_id": item_id, "kind": "view", "client_key": key }))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    Some((status, response.json().await.unwrap_or(Value::Null), retry_after))
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_one_database_agree_on_keys_counts_and_items() {
    let Some(database) = TestDatabase::postgres() else { return };
    let a = start_api(&database, NO_EMBEDDING, &[]);
    let b = start_api(&database, NO_EMBEDDING, &[]);
    import_items(&a).await;
    let (url_a, url_b) = (http_url(&a, ""), http_url(&b, ""));
    let client = http_client();

    // Every key is sent to both replicas at once, as a client's retry might land: one stores it,
    // the other answers with the same event, never a second row.
    let mut sends = Vec::new();
    for n in 0..400 {
        let (client, url_a, url_b) = (client.clone(), url_a.clone(), url_b.clone());
        sends.push(tokio::spawn(async move {
            let key = format!("k{n}");
            let item = n % ITEMS;
            let (first, second) =
                tokio::join!(post_event(&client, &url_a, &key, item), post_event(&client, &url_b, &key, item));
            (first.expect("an answer"), second.expect("an answer"))
        }));
    }
    let mut created = 0;
    for send in sends {
        let ((status_a, body_a, _), (status_b, body_b, _)) = send.await.unwrap();
        // 201 for the copy stored, 200 for the one answered with it.
        let mut statuses = [status_a, status_b];
        statuses.sort();
        assert_eq!(statuses, [200, 201], "{body_a} {body_b}");
        assert_eq!(body_a["event_id"], body_b["event_id"], "one event per key: {body_a} {body_b}");
        created += usize::from(body_a["created"] == true) + usize::from(body_b["created"] == true);
    }
    assert_eq!(created, 400, "each key created exactly once, by one replica or the other");
    assert_eq!(database.query("SELECT count(*) FROM events"), "400");
    assert_eq!(database.query("SELECT sum(views) FROM item_stats"), "400", "counted once each");
    // Another event under a used key is refused on the replica that did not store it too, also
    // for an unknown item (as SQLite answers: the key is looked at first); an unknown item under
    // a free key is not found.
    for (key, item) in [("k1", 5), ("k1", 999)] {
        let (status, body, _) = post_event(&client, &url_b, key, item).await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("key_reused")), "{body}");
    }
    let (status, body, _) = post_event(&client, &url_a, "free", 999).await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");

    // An item written through one replica is read through the other, and bumps the version both
    // build ETags from.
    let created = admin_post(&b, "/api/admin/items", &json!({ "id": 100, "name": "from b" })).await;
    assert_eq!(created.status(), 201);
    let read = client.get(http_url(&a, "/api/admin/items/100")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(read.json::<Value>().await.unwrap()["name"], "from b");
    let again = admin_post(&a, "/api/admin/items", &json!({ "id": 100, "name": "from a" })).await;
    assert_eq!(again.status(), 409, "the primary key decides across replicas");
    assert_eq!(database.query("SELECT version FROM items_version"), "2", "the import and the create");
}

/// 64 clients write keyed events to two replicas; one replica is killed (SIGKILL) mid-load, and
/// its clients retry on the survivor. Every acknowledged event is stored, none twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_load_loses_no_acknowledged_event() {
    const CLIENTS: usize = 64;
    let Some(database) = TestDatabase::postgres() else { return };
    let doomed = start_api(&database, NO_EMBEDDING, &[]);
    let survivor = start_api(&database, NO_EMBEDDING, &[]);
    import_items(&survivor).await;
    let urls = [http_url(&doomed, ""), http_url(&survivor, "")];
    let client = http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    // Sends that found their replica gone (in flight at the kill, or sent to it after).
    let retried = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, urls, stop, acknowledged, retried) =
            (client.clone(), urls.clone(), stop.clone(), acknowledged.clone(), retried.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}-{n}");
                // Half the clients start on the replica to be killed; a failed send moves on.
                let mut target = c % 2;
                let started = Instant::now();
                loop {
                    match post_event(&client, &urls[target], &key, (n % ITEMS as usize) as i64).await {
                        // 201 stored; 200 when a retry meets the copy its replica stored before dying.
                        Some((201 | 200, body, _)) => {
                            acknowledged.lock().unwrap().push((key.clone(), body["event_id"].as_i64().unwrap()));
                            break;
                        }
                        Some((503, _, true)) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Some((status, body, _)) => panic!("{key}: {status} {body}"),
                        None => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            target = 1;
                        }
                    }
                    assert!(started.elapsed() < Duration::from_secs(30), "{key} never acknowledged");
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.signal("KILL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let keys: HashSet<&str> = acknowledged.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys.len(), acknowledged.len(), "each key acknowledged once by its client");
    let stored: BTreeMap<String, i64> = database
        .query("SELECT client_key || ' ' || id FROM events")
        .lines()
        .map(|line| {
            let (key, id) = line.split_once(' ').unwrap();
            (key.to_owned(), id.parse().unwrap())
        })
        .collect();
    let lost: Vec<&(String, i64)> = acknowledged.iter().filter(|(key, id)| stored.get(key) != Some(id)).collect();
    assert!(lost.is_empty(), "acknowledged events missing or under another id: {lost:?}");
    let rows: usize = database.query("SELECT count(*) FROM events").parse().unwrap();
    assert_eq!(rows, stored.len(), "no key twice");
    assert!(retried.load(Ordering::Relaxed) > 0, "some clients lost their replica and retried");
    assert!(acknowledged.len() > 1000, "the load ran: {} acknowledged", acknowledged.len());
    report(
        "replica-killed",
        &format!(
            "PostgreSQL, 2 replicas, 64 clients, one replica SIGKILLed mid-load: {} events acknowledged, {} stored, \
             0 lost, 0 twice; {} sends found their replica gone and were retried on the survivor",
            acknowledged.len(),
            rows,
            retried.load(Ordering::Relaxed)
        ),
    );
}

/// PostgreSQL stops at once (as in a crash or failover) under load and comes back: every caller
/// gets an answer, 201 or a retryable 503 with Retry-After, and writes resume by themselves.
/// Readiness holds through an outage shorter than the grace, and fails past it.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_under_load_every_caller_is_answered_and_writes_resume() {
    let Some(database) = TestDatabase::postgres() else { return };
    let TestDatabase::Postgres { server, .. } = &database else { unreachable!() };
    let patient = start_api(&database, NO_EMBEDDING, &[]);
    let strict = start_api(&database, NO_EMBEDDING, &["--database-outage-grace", "1s"]);
    import_items(&patient).await;
    let url = http_url(&patient, "");
    let client = http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (client, url, stop, answers) = (client.clone(), url.clone(), stop.clone(), answers.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let answer = post_event(&client, &url, &format!("c{c}-{n}"), 1).await;
                let label = match answer {
                    Some((201, _, _)) => "201".to_owned(),
                    Some((503, body, true)) => format!("503 {}", body["error"]["code"].as_str().unwrap_or("?")),
                    Some((status, body, retry)) => format!("{status} retry-after={retry} {body}"),
                    None => "no answer".to_owned(),
                };
                *answers.lock().unwrap().entry(label).or_default() += 1;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let ready = async |api: &ServiceProcess| {
        client.get(http_url(api, "/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Down for 6 s: longer than a request waits for a connection (5 s), so callers see the
    // outage as retryable answers, and longer than the strict replica's grace.
    server.stop_server();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = (ready(&patient).await, ready(&strict).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.start_server();
    // Writes resume: a 201 after the restart, without touching the service.
    let resumed_at = Instant::now();
    let resumed = eventually("writes resume", Duration::from_secs(30), Duration::from_millis(100), async || {
        matches!(
            post_event(&client, &url, &format!("after-{}", resumed_at.elapsed().as_nanos()), 1).await,
            Some((201, _, _))
        )
        .then_some(resumed_at.elapsed())
    })
    .await;
    // The strict replica is ready again once the database answers.
    eventually("readiness returns", Duration::from_secs(30), Duration::from_millis(100), async || {
        (ready(&strict).await == 200).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    let unexpected: Vec<_> = answers.keys().filter(|label| *label != "201" && !label.starts_with("503 ")).collect();
    assert!(unexpected.is_empty(), "answers other than 201 and a retryable 503: {answers:?}");
    assert!(answers.keys().any(|label| label.starts_with("503 ")), "the outage was seen: {answers:?}");
    assert_eq!(during, (200, 503), "ready through a short outage with the default grace, not past a 1 s one");
    report(
        "restarted",
        &format!(
            "PostgreSQL stopped for 6 s under 16 clients: answers {answers:?}; writes resumed {:.2} s after the restart; \
             /readyz 200 through it at the default grace, 503 past a 1 s grace",
            resumed.as_secs_f64()
        ),
    );
}

/// A database whose schema has a migration this binary does not know (a newer version wrote it)
/// is refused at start with a message that says so, on both backends.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_newer_than_the_binary_is_refused_at_start() {
    for database in [Some(TestDatabase::sqlite()), TestDatabase::postgres()].into_iter().flatten() {
        let api = start_api(&database, NO_EMBEDDING, &[]);
        drop(api);
        let checksum = if database.backend() == "sqlite" { "x'00'" } else { "'\\x00'::bytea" };
        database.query(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101000000, 'from a later version', true, {checksum}, 0)"
        ));
        let mut refused = std::process::Command::new(binary("api-service"))
            .args(api_args(&database, NO_EMBEDDING))
            .env("API_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = refused.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = refused.kill();
                panic!("{}: the api-service started on a newer schema", database.backend());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(refused.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{}", database.backend());
        assert!(stderr.contains("newer than this api-service") && stderr.contains("99990101000000"), "{stderr}");
    }
}

/// The series an operator watches have the same names on both backends after the same traffic,
/// and the database's ping reports it up.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_have_the_same_names_on_both_backends() {
    let Some(postgres) = TestDatabase::postgres() else { return };
    let mut names = Vec::new();
    for database in [TestDatabase::sqlite(), postgres] {
        let api = start_api(&database, NO_EMBEDDING, &["--metrics-listen", "127.0.0.1:0"]);
        import_items(&api).await;
        let answer = post_event(&http_client(), &http_url(&api, ""), "one", 1).await;
        assert_eq!(answer.map(|(status, ..)| status), Some(201));
        let scraped = scrape(api.address_of("api-service metrics")).await;
        assert_eq!(scraped.value("database_up", &[]), 1.0, "{}", database.backend());
        names.push(scraped.samples.iter().map(|sample| sample.name.clone()).collect::<BTreeSet<_>>());
    }
    assert_eq!(names[0], names[1], "SQLite's series, then PostgreSQL's");
}

/// One batch holding every kind of event answers each by its own rule, the same on both
/// backends: the writer's queue is filled before its task first runs, so it takes them together.
#[tokio::test]
async fn one_batch_answers_each_event_by_its_own_rule_on_both_backends() {
    use api_service::{
        db,
        event_writer::{BatchSettings, EventWriter},
        events::{EventKind, NewEvent},
        items::NewItem,
    };
    let Some(postgres) = TestDatabase::postgres() else { return };
    let mut answers = Vec::new();
    for database in [TestDatabase::sqlite(), postgres] {
        let target = db::Target::parse(end_to_end_tests::api::DatabaseArg::database_arg(&database)).unwrap();
        let store = db::open(&target, 2, db::Checkpoints::Sqlite).await.unwrap();
        for (id, name) in [(1, "one"), (2, "two")] {
            let item = NewItem { id, name: name.into(), category: String::new(), attributes: Default::default() };
            store.create_item(&item, 0).await.unwrap().unwrap();
        }
        let settings = BatchSettings { max_batch: 64, max_wait: Duration::ZERO, queue: 64 };
        let (writer, task) = EventWriter::start(store.clone(), settings);
        let event = |item_id, kind, key: Option<&str>| NewEvent { item_id, kind, client_key: key.map(str::to_owned) };
        let batch = [
            event(1, EventKind::View, Some("a")),
            event(1, EventKind::View, Some("a")), // the same event again: the first one's answer
            event(2, EventKind::Search, Some("a")), // another event under a taken key
            event(9, EventKind::View, Some("b")), // an unknown item, its key still free
            event(2, EventKind::Search, None),
            event(2, EventKind::Search, None),
            event(2, EventKind::View, Some("b")), // the unknown item's key was not taken
            event(9, EventKind::View, Some("b")), // an unknown item under a key now taken
        ];
        let answered = futures_util::future::join_all(batch.map(|event| writer.record(event))).await;
        let shown: Vec<String> = answered
            .iter()
            .map(|answer| match answer {
                Ok(recorded) => format!("created={}", recorded.created),
                Err(error) => format!("{error}"),
            })
            .collect();
        let ids: Vec<Option<i64>> = answered.iter().map(|a| a.as_ref().ok().map(|r| r.event_id)).collect();
        assert_eq!(ids[0], ids[1], "{}: a replay gets the stored id", database.backend());
        assert_ne!(ids[4], ids[5], "{}: keyless events are two", database.backend());
        assert_eq!(database.query("SELECT count(*) FROM events"), "4", "{}", database.backend());
        assert_eq!(
            database.query("SELECT item_id || ':' || views || ':' || searches FROM item_stats ORDER BY item_id"),
            "1:1:0\n2:1:2",
            "{}",
            database.backend()
        );
        drop(writer);
        task.drain(Duration::from_secs(5)).await;
        store.close().await;
        answers.push(shown);
    }
    assert_eq!(answers[0], answers[1], "SQLite's answers, then PostgreSQL's");
    assert_eq!(
        answers[0],
        [
            "created=true",
            "created=false",
            "client_key was already used for a different event; send a new unique key (a UUID) per event",
            "item 9 not found",
            "created=true",
            "created=true",
            "created=true",
            "client_key was already used for a different event; send a new unique key (a UUID) per event",
        ]
        .map(str::to_owned),
        "the rules, event by event"
    );
}
