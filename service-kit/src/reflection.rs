//! gRPC server reflection, served in both versions clients speak: `grpc.reflection.v1` (grpcurl,
//! current clients) and `grpc.reflection.v1alpha` (Python's grpcio-reflection and several GUI
//! clients still speak only this one). It lists only the services named, never every service of
//! the descriptor sets: a client that trusts the list must not find a service the server lacks.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// The reflection services' names, as request paths carry them.
pub const SERVICE_NAMES: [&str; 2] = [
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// Both reflection services over the same encoded file descriptor sets, listing `served` (and
/// themselves).
#[allow(clippy::type_complexity)]
pub fn services(
    descriptor_sets: &[&'static [u8]],
    served: &[&'static str],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    let builder = || {
        // Both reflection versions are listed by each, so each describes both.
        let reflection =
            [tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET, tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET];
        let builder = descriptor_sets
            .iter()
            .chain(&reflection)
            .fold(Builder::configure().include_reflection_service(false), |builder, set| {
                builder.register_encoded_file_descriptor_set(set)
            });
        served.iter().chain(&SERVICE_NAMES).fold(builder, |builder, name| builder.with_service_name(*name))
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
