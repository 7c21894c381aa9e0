//! A small command-line client for the embedding service.
//!
//!     embedding-map-client [--addr URL] status     # one GetEmbeddingMap, summarised
//!     embedding-map-client [--addr URL] watch      # WatchEmbeddingMap until READY or FAILED
//!     embedding-map-client [--addr URL] watch --follow   # ... and on through refreshes
//!     embedding-map-client [--addr URL] refresh    # RefreshEmbeddingMap

use clap::{Parser, Subcommand};
use embeddingmap_proto::v1::{
    EmbeddingMapStatus, GetEmbeddingMapRequest, MapState, RefreshEmbeddingMapRequest, WatchEmbeddingMapRequest,
    embedding_map_service_client::EmbeddingMapServiceClient,
};
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(about = "Ask the embedding service for its map")]
struct Args {
    /// The service's gRPC URL.
    #[arg(long, env = "EMBEDDING_SERVICE_URL", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the current status once.
    Status,
    /// Follow the status until the map is ready or failed.
    Watch {
        /// Keep following: each refresh's progress and each new map, until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Ask the service to read its corpus again and map it if it changed.
    Refresh,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = EmbeddingMapServiceClient::connect(args.addr.clone()).await?;
    let last = match args.command {
        Command::Status => {
            let status = client.get_embedding_map(GetEmbeddingMapRequest { omit_points: true }).await?.into_inner();
            println!("{}", describe(&status));
            status
        }
        Command::Watch { follow } => {
            let mut stream =
                client.watch_embedding_map(WatchEmbeddingMapRequest { omit_points: true }).await?.into_inner();
            let mut last = EmbeddingMapStatus::default();
            while let Some(status) = stream.next().await {
                last = status?;
                println!("{}", describe(&last));
                if !follow && last.state() != MapState::Computing {
                    break;
                }
            }
            last
        }
        Command::Refresh => {
            let answer = client.refresh_embedding_map(RefreshEmbeddingMapRequest {}).await?.into_inner();
            println!("refresh {:?}", answer.start());
            return Ok(());
        }
    };
    if last.state() == MapState::Failed {
        std::process::exit(1);
    }
    Ok(())
}

fn describe(status: &EmbeddingMapStatus) -> String {
    match (status.state(), &status.progress, &status.map, &status.failure) {
        (MapState::Computing, Some(p), _, _) => format!(
            "COMPUTING phase={:?} iteration={}/{} points={} elapsed={:.1}s",
            p.phase(),
            p.iteration,
            p.total_iterations,
            p.point_count,
            p.elapsed.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
        ),
        (MapState::Ready, _, Some(map), _) => {
            let refresh = match (&status.refresh, &status.last_refresh) {
                (Some(p), _) => {
                    format!(" refreshing phase={:?} iteration={}/{}", p.phase(), p.iteration, p.total_iterations)
                }
                (None, Some(last)) => format!(" last refresh {:?}", last.result()),
                (None, None) => String::new(),
            };
            format!(
                "READY generation={} points={} dimensions={} fingerprint={} computed in {:.2}s{refresh}",
                map.generation,
                map.count,
                map.input_dimensions,
                map.corpus_fingerprint,
                map.compute_duration.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
            )
        }
        (MapState::Failed, _, _, Some(failure)) => format!("FAILED in {:?}: {}", failure.phase(), failure.message),
        (state, ..) => format!("{state:?}"),
    }
}
