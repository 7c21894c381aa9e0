# Build: docker build -f deploy/docker/api-service.Dockerfile -t embedding-map/api-service:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin api-service && cp target/release/api-service /api-service

# debian-slim rather than distroless: the preStop hook runs `sleep`.
FROM debian:bookworm-slim
COPY --from=build /api-service /usr/local/bin/api-service
USER 65532:65532
EXPOSE 8080 8081
VOLUME /data
ENTRYPOINT ["/usr/local/bin/api-service"]
