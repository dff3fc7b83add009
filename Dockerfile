# One image for both halves of cdmo: `cdmo operator` (a Deployment) and `cdmo agent`
# (a DaemonSet); the Helm chart passes the verb as the container's args.
#
#   docker build -t REGISTRY/cdmo:0.1.0 .
#   docker push REGISTRY/cdmo:0.1.0
#   helm install cdmo helm/cdmo -n cdmo --create-namespace --set image.repository=REGISTRY/cdmo
#
# The agent needs NVML (libnvidia-ml.so.1) at run time: the NVIDIA container runtime mounts
# the host driver's copy into the container (the chart sets NVIDIA_DRIVER_CAPABILITIES=utility),
# so the image carries no driver library of its own.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Everything pyproject.toml builds from: the package and the README it names; and the pins of
# every runtime dependency (scripts/lock-image writes them from the venv the tests passed in),
# so that the image holds the tested versions rather than whatever is newest on build day.
COPY pyproject.toml README.md ./
COPY constraints/image.txt ./constraints/image.txt
COPY cdmo ./cdmo
RUN python -m venv /opt/cdmo \
    && /opt/cdmo/bin/pip install --upgrade pip \
    && /opt/cdmo/bin/pip install --constraint constraints/image.txt . \
    && /opt/cdmo/bin/cdmo --version

FROM python:3.11-slim
ENV PATH=/opt/cdmo/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/cdmo /opt/cdmo
# A numeric user, so that Kubernetes' runAsNonRoot can check it (the chart runs the operator
# as 10001; the agent runs as root, privileged, because NVML's MIG calls need it).
RUN groupadd --system --gid 10001 cdmo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin cdmo
USER 10001:10001
ENTRYPOINT ["cdmo"]
CMD ["--help"]
