# Build: docker build -f deploy/docker/embedding-service.Dockerfile -t embedding-map/embedding-service:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libopenblas-dev liblapack-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin embedding-service \
    && cp target/release/embedding-service /embedding-service

# FAISS is linked statically; BLAS, LAPACK and OpenMP come from the runtime's shared libraries.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libopenblas0-pthread liblapack3 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /embedding-service /usr/local/bin/embedding-service
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/embedding-service"]
