//! The admin page at /admin/: static assets built from admin-ui/ and embedded in the binary.
//! The page itself is public; everything it shows comes over gRPC-web with the admin token,
//! served on this same port under the service's own path.

use axum::{
    Json, Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};

use tonic::server::NamedService;

use embeddingmap_proto::api::admin_neighbor_service_server::AdminNeighborServiceServer;

use crate::{
    grpc::{AdminMapService, Api, CallLayers},
    state::AppState,
};

#[derive(rust_embed::Embed)]
#[folder = "../admin-ui/dist/"]
// A build without the page (npm not run) still compiles and says so at /admin/.
#[allow_missing = true]
struct Assets;

const NOT_BUILT: &str = "<!doctype html><title>Admin page not built</title><p>The admin page was not \
    built into this binary. Run <code>npm ci &amp;&amp; npm run build</code> in <code>admin-ui/</code> \
    (scripts/run.sh does), then rebuild the api-service.</p>";

/// The page, its config, and the two gRPC services it calls (the map and a point's neighbours), as
/// gRPC-web on this same origin (so the page needs no CORS), inside the same call layers as on the
/// gRPC port (`grpc::call_layers`: counted, the token checked before the body is read).
/// `grpc_web_url` overrides where the page sends its calls.
pub fn routes(
    grpc_web_url: String,
    map_service: AdminMapService,
    neighbor_service: AdminNeighborServiceServer<Api>,
    call_layers: &CallLayers,
) -> Router<AppState> {
    let csp = content_security_policy(&grpc_web_url);
    let config = serde_json::json!({ "grpc_web_url": grpc_web_url });
    Router::new()
        .route_service(
            &format!("/{}/{{*method}}", <AdminMapService as NamedService>::NAME),
            call_layers.service(map_service),
        )
        .route_service(
            &format!("/{}/{{*method}}", <AdminNeighborServiceServer<Api> as NamedService>::NAME),
            call_layers.service(neighbor_service),
        )
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route(
            "/admin/",
            get({
                let csp = csp.clone();
                || async move { asset("index.html", csp) }
            }),
        )
        .route("/admin/config.json", get(move || async move { Json(config) }))
        .route("/admin/{*path}", get(|Path(path): Path<String>| async move { asset(&path, csp) }))
}

/// The page loads its own scripts and styles only, calls only its gRPC-web endpoint, and may not
/// be framed (clickjacking) or have its base URL or form targets changed.
fn content_security_policy(grpc_web_url: &str) -> HeaderValue {
    let origin = grpc_web_url.split('/').take(3).collect::<Vec<_>>().join("/");
    let connect = if grpc_web_url.is_empty() { "'self'".to_owned() } else { format!("'self' {origin}") };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    // A URL with characters a header cannot hold falls back to the page's own origin.
    HeaderValue::from_str(&policy).unwrap_or_else(|_| content_security_policy(""))
}

fn asset(path: &str, csp: HeaderValue) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mut response = file.data.into_owned().into_response();
            let headers = response.headers_mut();
            if let Ok(mime) = HeaderValue::from_str(file.metadata.mimetype()) {
                headers.insert(header::CONTENT_TYPE, mime);
            }
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
            headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            // Vite names assets by content hash; index.html must be revalidated.
            let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            response
        }
        None if path == "index.html" => (StatusCode::NOT_FOUND, Html(NOT_BUILT)).into_response(),
        None => crate::error::ApiError::not_found(format!("admin asset {path}")).into_response(),
    }
}
