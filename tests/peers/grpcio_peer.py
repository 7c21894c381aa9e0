"""A gRPC client written against the protocol only: Python's grpcio, with message classes built
at run time from the descriptor set (no generated code of ours).

    python grpcio_peer.py DESCRIPTORS.bin HOST:PORT ADMIN_TOKEN

Exits non-zero, saying why, on the first check that fails.
"""
import sys
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc


def load_pool(path):
    files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(open(path, "rb").read()).file}
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name in added:
            return
        proto = files.get(name)
        if proto is None:  # a well-known type the set does not carry
            proto = descriptor_pb2.FileDescriptorProto()
            descriptor_pool.Default().FindFileByName(name).CopyToProto(proto)
        for dependency in proto.dependency:
            add(dependency)
        pool.Add(proto)
        added.add(name)

    for name in files:
        add(name)
    return pool


def main():
    descriptors, address, token = sys.argv[1:4]
    pool = load_pool(descriptors)

    def message(type_name, **fields):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(type_name))(**fields)

    channel = grpc.insecure_channel(address)
    admin = [("authorization", f"Bearer {token}")]

    def call(method, request, response_type, metadata=None):
        stub = channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=message_factory.GetMessageClass(pool.FindMessageTypeByName(response_type)).FromString,
        )
        return stub(request, metadata=metadata, timeout=10)

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health

    api = "embeddingmap.api.v1"
    new_item = message(f"{api}.NewItem", id=4242, name="from python", category="peer")
    created = call(f"/{api}.ItemService/CreateItem", message(f"{api}.CreateItemRequest", item=new_item), f"{api}.Item", admin)
    assert created.name == "from python", created
    fetched = call(f"/{api}.ItemService/GetItem", message(f"{api}.GetItemRequest", id=4242), f"{api}.Item", admin)
    assert fetched.category == "peer", fetched

    view = pool.FindEnumTypeByName(f"{api}.EventKind").values_by_name["EVENT_KIND_VIEW"].number
    recorded = call(
        f"/{api}.EventService/RecordEvent",
        message(f"{api}.RecordEventRequest", item_id=4242, kind=view, client_key="python-1"),
        f"{api}.RecordEventResponse",
    )
    assert recorded.created, recorded
    stats = call(
        f"/{api}.StatsService/GetItemStats",
        message(f"{api}.GetItemStatsRequest", item_ids=[4242]),
        f"{api}.GetItemStatsResponse",
        admin,
    )
    assert stats.stats[0].views == 1, stats

    try:
        call(f"/{api}.ItemService/GetItem", message(f"{api}.GetItemRequest", id=4242), f"{api}.Item")
        raise AssertionError("an admin call without a token succeeded")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error

    ready = pool.FindEnumTypeByName("embeddingmap.v1.MapState").values_by_name["MAP_STATE_READY"].number
    deadline = time.monotonic() + 120
    while True:
        status = call(
            f"/{api}.AdminMapService/GetEmbeddingMap",
            message(f"{api}.GetAdminMapRequest"),
            f"{api}.AdminMapStatus",
            admin,
        )
        if status.state == ready:
            break
        assert time.monotonic() < deadline, "the map never became ready"
        time.sleep(0.1)
    names = {point.id: point.name for point in status.points}
    assert len(status.points) == status.count > 0, status.count
    assert names.get(0) == "digit 0 #0", names.get(0)
    print(f"python grpcio peer: ok ({len(status.points)} points)")


if __name__ == "__main__":
    main()
