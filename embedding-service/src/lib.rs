//! The embedding service: computes a t-SNE map of an embedding corpus in the background and
//! serves its status (computing, ready, failed) over gRPC from the moment it starts.

pub mod config;
pub mod corpus;
pub mod error;
mod faiss_ext;
pub mod health;
pub mod job;
pub mod pipeline;
pub mod server;
pub mod service;
pub mod status;
