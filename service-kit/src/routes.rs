//! The gRPC services one server serves, gathered with their names, so that its reflection lists
//! exactly those: the names come from the services added, never from a list kept beside them.

use std::convert::Infallible;

use http::Request;
use tonic::{body::Body, server::NamedService, service::Routes};
use tower::Service;

#[derive(Default)]
pub struct ServedRoutes {
    routes: Routes,
    names: Vec<&'static str>,
}

impl ServedRoutes {
    pub fn serve<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// The names of the services added so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The routes, with both reflection services listing the services added (over
    /// `descriptor_sets`, which must describe them).
    pub fn with_reflection(self, descriptor_sets: &[&'static [u8]]) -> Result<Routes, tonic_reflection::server::Error> {
        let (v1, v1alpha) = crate::reflection::services(descriptor_sets, &self.names)?;
        Ok(self.routes.add_service(v1).add_service(v1alpha).prepare())
    }
}
