//! What every handler shares.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::{
    auth::AdminToken, database_health::DatabaseHealth, db::Database, event_writer::EventWriter, items::ItemStore,
    map_gateway::MapGateway, rate_limit::RateLimiter,
};

#[derive(Clone)]
pub struct AppState {
    /// For stats; items go through `items`, events through `events`.
    pub db: Database,
    /// The one writer of events (group commit), which writes imports too (through `items`).
    pub events: EventWriter,
    pub items: ItemStore,
    pub map: MapGateway,
    pub token: AdminToken,
    /// Per-client limit on public writes (off unless configured).
    pub rate_limit: RateLimiter,
    /// Set once the database is open and migrated; cleared when shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// Whether the database has answered within the outage grace.
    pub database_health: DatabaseHealth,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.db.is_closed()
            && self.events.is_running()
            && self.database_health.healthy()
    }
}
