use api_service::config::Config;
use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    service_kit::init_logging(config.log_format);
    match api_service::server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("api-service stopped: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
