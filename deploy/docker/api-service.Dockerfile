# Build: docker build -f deploy/docker/api-service.Dockerfile -t embedding-map/api-service:dev .
FROM node:20-bookworm AS admin-ui
WORKDIR /src
COPY proto proto
COPY admin-ui admin-ui
RUN cd admin-ui && npm ci && npm run build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The admin page is embedded into the binary at compile time.
COPY --from=admin-ui /src/admin-ui/dist admin-ui/dist
RUN cargo build --release --locked --bin api-service && cp target/release/api-service /api-service

# debian-slim rather than distroless: the preStop hook runs `sleep`.
FROM debian:bookworm-slim
COPY --from=build /api-service /usr/local/bin/api-service
USER 65532:65532
EXPOSE 8080 8081
VOLUME /data
ENTRYPOINT ["/usr/local/bin/api-service"]
