// A gRPC-web client written by others: Connect's gRPC-web transport over HTTP/1.1, with the
// services built at run time from the descriptor set (no generated code of ours).
//
//     node grpcweb_peer.mjs DESCRIPTORS.bin http://HOST:PORT ADMIN_TOKEN
import { readFileSync } from "node:fs";
import { fromBinary, createFileRegistry } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

const [descriptors, baseUrl, token] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
const admin = { headers: { authorization: `Bearer ${token}` } };
const fail = (message) => {
  console.error(`grpc-web peer: ${message}`);
  process.exit(1);
};

const maps = createClient(registry.getService("embeddingmap.api.v1.AdminMapService"), transport);
const items = createClient(registry.getService("embeddingmap.api.v1.ItemService"), transport);

// UNAUTHENTICATED, answered trailers-only (status in the headers, no body).
try {
  await maps.getEmbeddingMap({}, {});
  fail("an admin call without a token succeeded");
} catch (error) {
  if (!(error instanceof ConnectError) || error.code !== Code.Unauthenticated) fail(`expected Unauthenticated, got ${error}`);
}
// An error from the handler itself.
try {
  await items.getItem({ id: 987654321n }, admin);
  fail("a missing item was found");
} catch (error) {
  if (!(error instanceof ConnectError) || error.code !== Code.NotFound) fail(`expected NotFound, got ${error}`);
}

const READY = 2;
const deadline = Date.now() + 120_000;
let status;
for (;;) {
  status = await maps.getEmbeddingMap({}, admin);
  if (status.state === READY) break;
  if (Date.now() > deadline) fail("the map never became ready");
  await new Promise((resolve) => setTimeout(resolve, 100));
}
if (status.points.length === 0 || BigInt(status.points.length) !== status.count) fail(`bad point count ${status.points.length}`);
const zero = status.points.find((point) => point.id === 0n);
if (zero?.name !== "digit 0 #0") fail(`point 0 is named ${zero?.name}`);
console.log(`grpc-web peer: ok (${status.points.length} points)`);
