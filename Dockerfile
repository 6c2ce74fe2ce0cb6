# edged container image.
#
#   docker build -t edged .
#   docker run --rm edged --version
#   docker run --rm -v edged-data:/var/lib/edged edged run --demo        # the embedded demo plant
#
# A real gateway: the config mounted read-only, the buffer on a named volume, serial ports passed
# in one by one (only for serial drivers), and time for the buffer flush on stop:
#   docker run -d --name edged --restart unless-stopped --stop-timeout 30 \
#       -v /srv/edged/edged.toml:/etc/edged/edged.toml:ro \
#       -v edged-data:/var/lib/edged \
#       --device /dev/ttyUSB0 \
#       edged
#
# The buffer in /var/lib/edged is the whole point of store-and-forward: keep it on a volume (never
# in the container layer) so an upgrade or a re-created container still delivers what is unsent.
# A bind-mounted host directory instead needs `chown 10001:10001` first. Secrets: mount files
# read-only (e.g. /run/secrets/mqtt-password) and use  password = { file = "/run/secrets/..." }.
# A full example with a broker: examples/compose.yaml.

# ---- build: a venv with edged and its extras; compilers and pip caches stay in this stage ----
FROM debian:bookworm-slim AS build
ARG EXTRAS=mqtt,modbus,opcua,http,hart,numerics,sparkplug,metrics
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv /opt/edged/venv \
    && /opt/edged/venv/bin/pip install "/src[${EXTRAS}]" \
    && /opt/edged/venv/bin/edged --version \
    && /opt/edged/venv/bin/python -m compileall -q /opt/edged/venv/lib

# ---- runtime: Debian's python3 (the venv links to it) and the CA bundle for TLS uplinks ----
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="edged" \
      org.opencontainers.image.description="Edge gateway daemon for plants: field drivers, durable buffer, uplinks" \
      org.opencontainers.image.licenses="Apache-2.0"
ARG DEBIAN_FRONTEND=noninteractive
# User edged has a fixed uid/gid 10001, so a bind-mounted data directory can be chown'ed on the host;
# dialout (gid 20, as on Debian/Ubuntu hosts) owns the /dev/ttyS*/ttyUSB* passed in with --device.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 edged \
    && useradd --system --uid 10001 --gid edged --groups dialout \
               --home-dir /var/lib/edged --no-create-home --shell /usr/sbin/nologin edged \
    && install -d -o edged -g edged -m 0750 /var/lib/edged \
    && install -d -o root -g edged -m 0750 /etc/edged
COPY --from=build /opt/edged/venv /opt/edged/venv

# The demo writes under the data volume too, so `run --demo` shows the same layout as a real config.
# EDGED_UMASK: the buffer (samples, command audit), status.json and state files are 0640 and
# directories 0750 (Docker starts processes with umask 0022); edged applies at least 0027 itself
# on `run`, `write` and `opcua-cert`, so this only states it (0077 would make them owner-only).
ENV PATH=/opt/edged/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGED_DEMO_DIR=/var/lib/edged/demo \
    EDGED_UMASK=0027
# The name alone (not edged:edged) so the runtime also applies edged's supplementary group dialout.
USER edged
WORKDIR /var/lib/edged
VOLUME ["/var/lib/edged"]

# Healthy while the daemon's event loop keeps rewriting status.json (every 2 s): a crashed or stuck
# daemon turns unhealthy. Checks /var/lib/edged/status.json and, for the demo, demo/status.json;
# a config with another gateway.data_dir needs its own --health-cmd. Needs no curl or open port.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/opt/edged/venv/bin/python", "-c", "import glob,json,sys,time\nfor p in glob.glob('/var/lib/edged/status.json') + glob.glob('/var/lib/edged/*/status.json'):\n    try: d = json.load(open(p))\n    except (OSError, ValueError): continue\n    if not d.get('stopped') and time.time_ns() - d['updated_ns'] < 30e9: sys.exit(0)\nsys.exit('edged: no fresh status.json under /var/lib/edged')"]

# SIGTERM stops drivers, flushes the buffer and exits 0; give it more than Docker's default 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["edged"]
CMD ["run", "--config", "/etc/edged/edged.toml"]
