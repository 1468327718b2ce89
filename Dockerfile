# The meshfed controller image: `meshfed controller run` (see `meshfed controller manifests`).
#   docker build -t meshfed:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# A non-root user with no home directory of its own; the PKI state is checked out to the
# in-memory volume the Deployment mounts at /var/run/meshfed.
USER 65532:65532
# The C allocator, so that a large reconcile's freed memory goes back to the system
# (controller/manifests.py MEMORY_ENV; the Deployment sets the same).
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONMALLOC=malloc MALLOC_ARENA_MAX=2
EXPOSE 8080
ENTRYPOINT ["meshfed"]
CMD ["controller", "run", "--namespace", "meshfed-system", "--work-dir", "/var/run/meshfed"]
