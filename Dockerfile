# refund-projector: multi-stage build. The builder compiles librdkafka (with
# TLS, zlib, zstd) and the binary; the runtime image is Debian slim with the
# binary, its shared libraries (OpenSSL) and a non-root user.
FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p refund-projector --bin refund-projector \
 && cp target/release/refund-projector /usr/local/bin/refund-projector

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 refund-projector \
 && useradd --system --uid 10001 --gid refund-projector --home-dir /var/lib/refund-projector --create-home refund-projector
COPY --from=builder /usr/local/bin/refund-projector /usr/local/bin/refund-projector
USER refund-projector:refund-projector
WORKDIR /var/lib/refund-projector
VOLUME ["/var/lib/refund-projector"]
EXPOSE 8080
ENV REFUND_PROJECTOR_LOG_FORMAT=json
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["refund-projector", "probe", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["refund-projector"]
CMD ["run", "--brokers", "kafka:9092", "--db", "/var/lib/refund-projector/refunds.redb", "--listen", "0.0.0.0:8080", "--api-keys", "/etc/refund-projector/keys.toml"]
