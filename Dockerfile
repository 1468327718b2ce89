# The meshfed controller image: `meshfed controller run` (see `meshfed controller manifests`).
#   docker build -t meshfed:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# jemalloc (Debian's), at one path on every architecture: an idle controller at ten clusters
# holds 146-149 MB with it as configured below, 200-235 MB with glibc's malloc
# (controller/manifests.py MEMORY_ENV, JEMALLOC).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(find /usr/lib -name libjemalloc.so.2 | head -n 1)" /usr/local/lib/libjemalloc.so.2
# A non-root user with no home directory of its own; the PKI state is checked out to the
# in-memory volume the Deployment mounts at /var/run/meshfed.
USER 65532:65532
# The C allocator (jemalloc, preloaded), so that a large reconcile's freed memory goes back to
# the system (controller/manifests.py MEMORY_ENV; the Deployment sets the same).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONMALLOC=malloc MALLOC_ARENA_MAX=2 \
    MALLOC_CONF=narenas:1,tcache:false,dirty_decay_ms:0,muzzy_decay_ms:0 \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
EXPOSE 8080
ENTRYPOINT ["meshfed"]
CMD ["controller", "run", "--namespace", "meshfed-system", "--work-dir", "/var/run/meshfed"]
