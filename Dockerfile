# herald: one binary for `dev`, `gateway`, `ingest` and `token`.
#
#   docker build -t herald:local .
#   docker run --rm -p 8080:8080 herald:local      # herald dev
#
# Add a .dockerignore with `target/` to keep the build context small.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the workspace build reads: the manifests and the member packages.
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY crates crates
COPY tests tests
COPY benches benches
RUN cargo build --release --locked -p herald --bin herald

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/herald --create-home herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
WORKDIR /var/lib/herald
# public: dev/gateway 8080, ingest 8081; admin: gateway 9090, ingest 9091
EXPOSE 8080 8081 9090 9091
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
CMD ["dev", "--listen", "0.0.0.0:8080", "--database-url", "sqlite:///var/lib/herald/herald-dev.db"]
