//! Attacks on the listeners themselves: unauthenticated uploads, unfinished headers, crowds of
//! idle connections, and unread HTTP/2 calls. Each reports the figure it is judged by.

use std::{
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use bytes::Bytes;
use embeddingmap_proto::v1 as pb_v1;
use end_to_end_tests::corpus_files::{clustered, write_matrix};

use super::*;

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Runs `work` while sampling `pid`'s RSS every 5 ms; returns its output and the peak growth
/// over the RSS before it began, in MiB.
async fn peak_rss_growth<T>(pid: u32, work: impl Future<Output = T>) -> (T, f64) {
    let baseline = rss_mib(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = baseline;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak.max(rss_mib(pid))
        }
    });
    let output = work.await;
    // Whatever the server buffered must have shown by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or(baseline);
    (output, peak - baseline)
}

/// How an unauthenticated upload ended: refused with UNAUTHENTICATED (HTTP 401 or grpc-status
/// 16), or the connection closed under the upload once the refusal was sent.
async fn refused_upload(request: reqwest::RequestBuilder) -> Result<&'static str, String> {
    match request.send().await {
        Ok(response) if response.status() == 401 || grpc_status(&response) == Some(Code::Unauthenticated as u16) => {
            Ok("refused")
        }
        Ok(response) => Err(format!("answered {} grpc-status {:?}", response.status(), grpc_status(&response))),
        Err(error) if error.is_request() || error.is_body() => Ok("closed under the upload"),
        Err(error) => Err(error.to_string()),
    }
}

/// Large uploads without the token on every transport: none may be read.
pub async fn unauthenticated_uploads(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("uploads.sqlite3"), "http://127.0.0.1:9", &[]);
    let client = reqwest::Client::builder().http1_only().timeout(Duration::from_secs(60)).build().unwrap();
    // 200 MiB gRPC-web frames and JSON, shared by every request (no copy on this side).
    let mut frame = vec![0u8; 200 << 20];
    frame[1..5].copy_from_slice(&((200u32 << 20) - 5).to_be_bytes());
    let frame = Bytes::from(frame);
    let attacks = async {
        let mut uploads = Vec::new();
        for (listener, path) in [
            (HTTP, "/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap"),
            (HTTP, "/embeddingmap.api.v1.AdminMapService/WatchEmbeddingMap"),
            (GRPC, "/embeddingmap.api.v1.ItemService/ImportItems"),
            (GRPC, "/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap"),
        ] {
            let request = client
                .post(format!("http://{}{path}", api.address_of(listener)))
                .header("content-type", "application/grpc-web+proto")
                .body(frame.clone());
            uploads.push((format!("gRPC-web {path} on the {listener} port"), refused_upload(request)));
        }
        let json = client
            .post(http_url(&api, "/api/admin/items/import"))
            .header("content-type", "application/json")
            .body(frame.clone());
        uploads.push(("HTTP JSON import".into(), refused_upload(json)));
        let mut outcomes = Vec::new();
        let (names, futures): (Vec<String>, Vec<_>) = uploads.into_iter().unzip();
        for (name, outcome) in names.into_iter().zip(futures_util::future::join_all(futures).await) {
            outcomes.push((name, outcome));
        }
        // gRPC over HTTP/2: an 8 MiB import of empty items (4 million of them once decoded).
        let import = pb::ImportItemsRequest { items: vec![pb::NewItem::default(); 4 << 20] };
        let mut items_client = ItemServiceClient::new(grpc_channel(&api).await).max_encoding_message_size(64 << 20);
        let answer = items_client.import_items(import).await.map(drop);
        let grpc = match answer {
            Err(status) if status.code() == Code::Unauthenticated => Ok("refused"),
            other => Err(format!("{other:?}")),
        };
        outcomes.push(("gRPC ImportItems of 8 MiB".into(), grpc));
        outcomes
    };
    let (outcomes, growth) = peak_rss_growth(api.pid(), attacks).await;
    let row = card.row("hostile connections");
    for (name, outcome) in &outcomes {
        row.operations += 1;
        row.bad_input(outcome.is_ok(), format!("unauthenticated {name}: {outcome:?}"));
    }
    let closed = outcomes.iter().filter(|(_, outcome)| *outcome == Ok("closed under the upload")).count();
    row.figures.push(format!(
        "{} unauthenticated uploads (5 x 200 MiB, 8 MiB gRPC) refused unread, {closed} seen as a closed connection: \
         peak RSS growth {growth:.1} MiB (limit 32)",
        outcomes.len()
    ));
    row.check(growth < 32.0, format!("unauthenticated uploads grew RSS by {growth:.1} MiB"));
    let live = status_of(http_client().get(http_url(&api, "/livez"))).await;
    row.check(live == Some(StatusCode::OK), format!("serves after the uploads, /livez got {live:?}"));
}

/// Seconds until the server closes a connection that sent `sent` and nothing more.
fn seconds_until_closed(address: SocketAddr, sent: &[u8], limit: Duration) -> Option<f64> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).ok()?;
    stream.write_all(sent).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(started.elapsed().as_secs_f64()),
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed().as_secs_f64());
            }
            Err(_) => return None,
        }
    }
}

/// Raises this process's open-file limit so that the test itself can hold the crowd.
fn raise_descriptor_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a struct owned here.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Unfinished headers are closed within the header-read timeout; a crowd of idle connections
/// past the cap leaves the probes answering.
pub async fn slow_and_idle_connections(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let api = start_api(&dir.path().join("slow.sqlite3"), "http://127.0.0.1:9", &["--header-read-timeout", "1s"]);
    let partial = b"GET /livez HTTP/1.1\r\nHost: api\r\nX-Slow: ";
    let row = card.row("hostile connections");
    for (what, listener, sent) in [
        ("unfinished headers on the HTTP port", HTTP, &partial[..]),
        ("unfinished headers on the gRPC port", GRPC, &partial[..]),
        ("a silent connection on the gRPC port", GRPC, &b""[..]),
        ("half an HTTP/2 preface", GRPC, &b"PRI * HTTP/2.0\r\n"[..]),
    ] {
        let address = api.address_of(listener);
        let closed = tokio::task::spawn_blocking(move || seconds_until_closed(address, sent, Duration::from_secs(5)))
            .await
            .unwrap();
        row.operations += 1;
        row.figures.push(format!("{what}: closed after {}", closed.map_or("over 5 s".into(), |s| format!("{s:.2} s"))));
        row.check(closed.is_some_and(|s| s < 2.5), format!("{what} closed within the 1 s timeout, got {closed:?}"));
    }
    drop(api);

    // The crowd: 2,000 connections that each send half a header line and wait, against a cap of
    // 500 and a long header timeout, so only the cap's eviction can let the probes in.
    raise_descriptor_limit(8192);
    let api = start_api(
        &dir.path().join("crowd.sqlite3"),
        "http://127.0.0.1:9",
        &["--header-read-timeout", "60s", "--max-connections", "500"],
    );
    let address = api.address_of(HTTP);
    let crowd = tokio::task::spawn_blocking(move || {
        (0..2000)
            .filter_map(|_| {
                let mut stream = TcpStream::connect(address).ok()?;
                stream.write_all(b"GET /livez HTTP/1.1\r\nHost: api\r\n").ok()?;
                Some(stream)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let prober = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(2)).build().unwrap();
    let (mut answered, mut slowest) = (0, Duration::ZERO);
    for path in ["/livez", "/readyz"].iter().cycle().take(20) {
        let started = Instant::now();
        if status_of(prober.get(http_url(&api, path))).await == Some(StatusCode::OK) {
            answered += 1;
        }
        slowest = slowest.max(started.elapsed());
    }
    row.operations += crowd.len() + 20;
    row.figures.push(format!(
        "{} idle connections against a cap of 500: probes answered {answered}/20, slowest {} ms",
        crowd.len(),
        slowest.as_millis()
    ));
    row.check(crowd.len() == 2000, format!("opened {} of 2000 idle connections", crowd.len()));
    row.check(answered == 20, format!("probes answered through the crowd: {answered}/20"));
    drop(crowd);
}

/// 1,000 `GetEmbeddingMap` calls of a 100k-point map on one HTTP/2 connection that never reads
/// an answer: the server's streams limit and the map's shared encoding keep memory flat.
pub async fn unread_map_calls(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_matrix(&dir.path().join("100k.npy"), 100_000, 8, &clustered(20, 5000, 8));
    let embedding = start_embedding(&[
        "--corpus",
        corpus.to_str().unwrap(),
        "--iterations",
        "20",
        "--exaggeration-iterations",
        "10",
    ]);
    let mut client = end_to_end_tests::map_client(&embedding).await;
    let seen = end_to_end_tests::poll_until_final(&mut client, Duration::from_secs(300)).await;
    let row = card.row("hostile connections");
    let ready = seen.last().is_some_and(|status| status.state() == pb_v1::MapState::Ready);
    if !row.check(ready, "the 100k-point map became READY") {
        return;
    }
    let calls = "/embeddingmap.v1.EmbeddingMapService/GetEmbeddingMap";
    let (opened, answered, growth) = unread_calls(embedding.address_of(EMBEDDING), calls, None, embedding.pid()).await;
    judge_unread_calls(row, "embedding service", opened, answered, growth);
    let answer = client.get_embedding_map(pb_v1::GetEmbeddingMapRequest { omit_points: true }).await;
    row.check(answer.is_ok(), format!("serves after the unread calls: {answer:?}"));

    // The same against the api-service's admin map, which joins the map to its items.
    let api = start_api(&dir.path().join("unread.sqlite3"), &embedding.url(), &[]);
    let map_ready = async || (map_status(&http_client(), &api).await == Some(StatusCode::OK)).then_some(());
    eventually("the api-service has the map", Duration::from_secs(60), Duration::from_millis(50), map_ready).await;
    let calls = "/embeddingmap.api.v1.AdminMapService/GetEmbeddingMap";
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    let (opened, answered, growth) = unread_calls(api.address_of(GRPC), calls, Some(&authorization), api.pid()).await;
    let row = card.row("hostile connections");
    judge_unread_calls(row, "api-service", opened, answered, growth);
    let after = map_status(&http_client(), &api).await;
    row.check(after == Some(StatusCode::OK), format!("the api-service serves after the unread calls: {after:?}"));
}

fn judge_unread_calls(row: &mut Row, service: &str, opened: usize, answered: usize, growth: f64) {
    row.operations += opened;
    row.figures.push(format!(
        "{opened} unread map calls (100k points) on one HTTP/2 connection to the {service}: it took {answered} at \
         once (its streams limit) and answered them, none read; peak RSS growth {growth:.1} MiB (limit 64)"
    ));
    row.check(growth < 64.0, format!("unread map calls grew the {service}'s RSS by {growth:.1} MiB"));
    row.check(opened == 1000, format!("the client sent {opened} of 1000 calls to the {service}"));
    row.check(answered <= 100, format!("the {service} took {answered} calls at once, over its advertised 100 streams"));
}

/// Sends 1,000 calls to `path` on one HTTP/2 connection with a receive window of zero (the
/// server may send headers but not one byte of an answer) and reads none; returns the calls
/// sent, the answers whose headers came, and `pid`'s peak RSS growth meanwhile.
async fn unread_calls(address: SocketAddr, path: &str, authorization: Option<&str>, pid: u32) -> (usize, usize, f64) {
    let attack = async {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (send, connection) =
            h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(stream).await.unwrap();
        tokio::spawn(connection);
        // The client queues calls past the server's advertised streams limit.
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut unread = Vec::new();
        let mut send = send;
        for _ in 0..1000 {
            let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_millis(500), send.clone().ready()).await else {
                break;
            };
            send = ready;
            let mut request = http::Request::post(format!("http://{address}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if let Some(authorization) = authorization {
                request = request.header("authorization", authorization);
            }
            let Ok((response, mut body)) = send.send_request(request.body(()).unwrap(), false) else { break };
            let _ = body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true);
            let answered = answered.clone();
            unread.push(tokio::spawn(async move {
                let _body = body;
                if let Ok(response) = response.await {
                    answered.fetch_add(1, Ordering::Relaxed);
                    // Held, unread, until the attack ends.
                    std::future::pending::<()>().await;
                    drop(response);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        (unread, answered.load(Ordering::Relaxed))
    };
    let ((unread, answered), growth) = peak_rss_growth(pid, attack).await;
    unread.iter().for_each(tokio::task::JoinHandle::abort);
    (unread.len(), answered, growth)
}

/// One client flooding public writes meets its rate limit; another client, told apart by the
/// address a trusted proxy forwards, is not slowed.
pub async fn event_flood(card: &mut Scorecard) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("flood.sqlite3");
    let limits = ["--event-rate-limit", "50", "--event-rate-burst", "50", "--trusted-proxies", "127.0.0.1"];
    let api = start_api(&database, "http://127.0.0.1:9", &limits);
    create_items(&api, 1).await;
    let client = http_client();
    let event = |from: &'static str, n: usize| {
        client
            .post(http_url(&api, "/api/events"))
            .header("x-forwarded-for", from)
            .json(&json!({ "item_id": 0, "kind": "view", "client_key": format!("{from}-{n}") }))
            .send()
    };
    let started = Instant::now();
    let (mut accepted, mut limited, mut other) = (0, 0, Vec::new());
    for n in 0..300 {
        match event("192.0.2.1", n).await {
            Ok(response) if response.status().is_success() => accepted += 1,
            Ok(response) if response.status() == 429 && response.headers().contains_key("retry-after") => limited += 1,
            answer => other.push(format!("{answer:?}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let neighbour = event("192.0.2.2", 0).await.map(|r| r.status().as_u16());
    let row = card.row("hostile connections");
    row.operations += 301;
    row.figures.push(format!(
        "300 events from one client in {elapsed:.1} s at a limit of 50/s (burst 50): {accepted} recorded, {limited} \
         answered 429 with Retry-After; another client meanwhile: {neighbour:?}"
    ));
    let allowed = 50.0 + 50.0 * elapsed;
    row.check(other.is_empty(), format!("flood answers other than 2xx or 429: {other:?}"));
    row.check(
        accepted >= 50 && f64::from(accepted) <= allowed + 1.0,
        format!("{accepted} events recorded, expected 50 to {allowed:.0}"),
    );
    row.check(matches!(neighbour, Ok(201)), format!("another client was slowed: {neighbour:?}"));
    let stored = sqlite3(&database, "SELECT count(*) FROM events;");
    row.check(
        stored.trim() == (accepted + 1).to_string(),
        format!("{stored} events stored for {} recorded", accepted + 1),
    );
}

/// The HTTP/2 rapid-reset flood: calls opened and cancelled at once, over and over, on one
/// connection. The server must end the connection (GOAWAY, then close) and keep serving others.
pub async fn rapid_reset(card: &mut Scorecard) {
    let embedding = start_embedding(&[]);
    let address = embedding.address_of(EMBEDDING);
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut send, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut resets = 0;
    for _ in 0..10_000 {
        let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(2), send.clone().ready()).await else { break };
        send = ready;
        let request =
            http::Request::post(format!("http://{address}/embeddingmap.v1.EmbeddingMapService/GetEmbeddingMap"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
        let Ok((_, mut body)) = send.send_request(request, false) else { break };
        body.send_reset(h2::Reason::CANCEL);
        resets += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    // The server sends GOAWAY and closes; a client still writing may see the close (a broken
    // pipe) before it reads the GOAWAY. Either way the server ended the connection.
    let closed_by_server =
        matches!(&ended, Ok(Ok(Err(error))) if error.is_go_away() || error.is_remote() || error.is_io());
    let mut client = end_to_end_tests::map_client(&embedding).await;
    let after = client.get_embedding_map(pb_v1::GetEmbeddingMapRequest { omit_points: true }).await;
    let row = card.row("hostile connections");
    row.operations += resets;
    row.figures.push(format!(
        "HTTP/2 rapid reset (calls opened and cancelled at once): the connection ended after {resets} resets ({})",
        match &ended {
            Ok(Ok(Err(error))) => format!("{error}"),
            other => format!("{other:?}"),
        }
    ));
    row.check(
        closed_by_server && resets < 10_000,
        format!("the flood's connection was not closed by the server: {ended:?}"),
    );
    row.check(after.is_ok(), format!("serves others after the flood: {after:?}"));
}
