# The official Airflow image with airflow-sm-refs installed. The pod template,
# the Helm values and the Compose file in docs/deploy.md run this image: with
# `[secrets] backend` set, an image without the package stops every component
# ("The object could not be loaded").
#
#   make dist
#   docker build --build-arg AIRFLOW_VERSION=3.3.2 -t my-registry/airflow-sm-refs:3.3.2 .
#
# apache-airflow is pinned to the image's own version so that installing the
# plugin can never up- or downgrade Airflow (tests/test_dist.py runs this RUN
# line in a fresh venv).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
ARG PYTHON_VERSION
COPY dist/airflow_sm_refs-*.whl /tmp/wheels/
RUN pip install --no-cache-dir --constraint "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" "apache-airflow==${AIRFLOW_VERSION}" /tmp/wheels/airflow_sm_refs-*.whl
