# syntax=docker/dockerfile:1
# filescan-operator: one image for the webhook, the operator and the scan Jobs (`filescan <command>`),
# which by default also runs clamd and freshclam (Debian's ClamAV packages; see the Helm chart).
#
# Build: docker build -t ghcr.io/comm100/filescan-operator:0.1.0 .
# Both stages use the same base, pinned by tag (Python 3.11, Debian 12); pin it by digest too in your
# registry mirror if your policy asks for it.

# ---- build: a virtualenv with the pinned runtime dependencies and the package, nothing else -------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/filescan
# Dependencies first, from the pinned list (make requirements), so this layer is cached across code changes.
COPY requirements.txt ./
RUN /opt/filescan/bin/pip install --no-deps --requirement requirements.txt
COPY pyproject.toml README.md ./
COPY controller ./controller
# --no-deps: every dependency is already installed, at the pinned version.
RUN /opt/filescan/bin/pip install --no-deps . \
 && /opt/filescan/bin/python -m compileall -q /opt/filescan/lib

# ---- runtime ----------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="filescan-operator" \
      org.opencontainers.image.description="Virus-scans Comm100 ticket and live chat attachments on Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/comm100/filescan-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Comm100"

# clamscan (the clamscan engine), clamd and freshclam (the chart's clamd Deployment). The signature
# database is not in the image: freshclam downloads it into a volume at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends clamav clamav-daemon clamav-freshclam \
 && rm -rf /var/lib/apt/lists/* /var/lib/clamav/* \
 && groupadd --gid 65532 filescan \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin filescan

COPY --from=build /opt/filescan /opt/filescan

# Read-only-root friendly: nothing is written outside TMPDIR and the mounted volumes (the chart mounts an
# emptyDir at /scratch and the signature database at /var/lib/clamav).
ENV PATH=/opt/filescan/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/scratch
USER 65532:65532
WORKDIR /scratch
ENTRYPOINT ["filescan"]
CMD ["--help"]
