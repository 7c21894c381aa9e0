use clap::Parser;
use embedding_service::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    service_kit::init_logging(config.log_format);
    match embedding_service::server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("embedding-service stopped: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
