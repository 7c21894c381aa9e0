//! The api-service: owns the SQLite database that public traffic writes to, and is the one door
//! for internal services (gRPC), the browser admin page (gRPC-web) and probes (HTTP).

pub mod admin_page;
pub mod auth;
pub mod cluster_labels;
pub mod config;
pub mod database_health;
pub mod db;
pub mod error;
pub mod event_writer;
pub mod events;
pub mod grpc;
pub mod http;
pub mod items;
pub mod map_fields;
pub mod map_gateway;
pub mod map_json;
pub mod map_selection;
pub mod map_view;
pub mod neighbors;
pub mod rate_limit;
pub mod server;
pub mod state;
pub mod telemetry;

/// Entry points for the fuzz targets in `fuzz/` and for replaying their corpus in tests.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses `data` as each JSON body the HTTP API accepts and validates what parses, as the
    /// handlers do. Panics only on a bug.
    pub fn json_bodies(data: &[u8]) {
        if let Ok(item) = serde_json::from_slice::<crate::items::NewItem>(data) {
            let _ = item.validate();
        }
        if let Ok(import) = serde_json::from_slice::<crate::http::ImportBody>(data)
            && crate::items::validate_import(&import.items).is_ok()
        {
            let _ = crate::items::Import::new(&import.items);
        }
        let _ = serde_json::from_slice::<crate::events::NewEvent>(data);
        if let Ok(select) = serde_json::from_slice::<crate::map_selection::SelectRequest>(data) {
            let _ = crate::map_selection::Polygon::new(select.polygon);
        }
    }
}
