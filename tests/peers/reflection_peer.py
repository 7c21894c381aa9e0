"""A client that knows nothing of our protocol beforehand: Python's stock reflection client
(grpcio-reflection's ProtoReflectionDescriptorDatabase, which speaks grpc.reflection.v1alpha)
lists a server's services, learns their messages from the server, and calls one.

    python reflection_peer.py HOST:PORT SERVICE METHOD [ADMIN_TOKEN]

Prints the services, then `reflection peer: ok (STATE)` with the map state the call returned.
Exits non-zero, saying why, on the first check that fails.
"""
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main():
    address, service, method = sys.argv[1:4]
    metadata = [("authorization", f"Bearer {sys.argv[4]}")] if len(sys.argv) > 4 else None
    channel = grpc.insecure_channel(address)
    database = ProtoReflectionDescriptorDatabase(channel)
    services = database.get_services()
    print("services:", ", ".join(services))
    assert service in services, f"{service} is not listed"
    assert "grpc.health.v1.Health" in services, services

    pool = descriptor_pool.DescriptorPool(database)
    described = pool.FindServiceByName(service).FindMethodByName(method)
    request = message_factory.GetMessageClass(described.input_type)(omit_points=True)
    response_class = message_factory.GetMessageClass(described.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    answer = call(request, metadata=metadata, timeout=10)
    state = described.output_type.fields_by_name["state"].enum_type.values_by_number[answer.state].name
    print(f"reflection peer: ok ({state})")


if __name__ == "__main__":
    main()
