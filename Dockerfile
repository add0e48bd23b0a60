# syntax=docker/dockerfile:1
# Portico's image: one static-ish binary on distroless (glibc, no shell), running as the non-root user 65532.
#   docker build -t portico .
#   docker run --rm portico --help
# The chart (charts/portico) runs `portico run --kubernetes` with a read-only root filesystem; state goes to
# /var/lib/portico (an emptyDir there).

# Build on the same Debian release as the runtime image, so the binary's glibc is never newer than the runtime's.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile production --locked -p portico \
 && install -D -m 0755 target/production/portico /out/portico

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/portico /usr/local/bin/portico
USER 65532:65532
# Traffic (the listeners' ports; 80 and 443 need CAP_NET_BIND_SERVICE or net.ipv4.ip_unprivileged_port_start=0,
# which the chart sets) and the admin endpoint.
EXPOSE 80 443 9901
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run", "--kubernetes"]
