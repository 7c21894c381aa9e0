//! gRPC server reflection, served in both versions clients speak: `grpc.reflection.v1` (grpcurl,
//! current clients) and `grpc.reflection.v1alpha` (Python's grpcio-reflection and several GUI
//! clients still speak only this one).

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// Both reflection services over the same encoded file descriptor sets.
#[allow(clippy::type_complexity)]
pub fn services(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    let builder = || {
        descriptor_sets
            .iter()
            .fold(Builder::configure(), |builder, set| builder.register_encoded_file_descriptor_set(set))
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
