//! The api-service: owns the SQLite database that public traffic writes to, and is the one door
//! for internal services (gRPC), the browser admin page (gRPC-web) and probes (HTTP).

pub mod admin_page;
pub mod auth;
pub mod config;
pub mod db;
pub mod deadline;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod items;
pub mod map_gateway;
pub mod server;
pub mod state;
