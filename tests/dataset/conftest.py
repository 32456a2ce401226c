"""An S3 API server for the tests (moto's, on 127.0.0.1, started once per test process) and a
fresh bucket per test, reached the way a user reaches S3: s3fs with credentials and the endpoint
from the environment."""

from __future__ import annotations

import uuid

import pytest


class S3Server:
    """moto's S3 API server on 127.0.0.1, which a test may stop and start again on the same port:
    its buckets live in this process (moto's backend), so they outlast a stop."""

    def __init__(self, port: int = 0):
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # its request lines would land in a CLI test's stderr
        self.port, self.server = port, None
        # called with each request's WSGI environ before the server handles it; returning True
        # drops the request unanswered by the store (a 500), as a client killed mid-upload leaves it
        self.before_request = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        moto_app = self.server._server.app  # werkzeug's server: wrap its app to see each request first

        def app(environ, start_response):
            if self.before_request is not None and self.before_request(environ):
                start_response("500 Internal Server Error", [("Content-Length", "0")])
                return [b""]
            return moto_app(environ, start_response)

        self.server._server.app = app

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="session")
def s3_endpoint():
    server = S3Server()
    yield server.endpoint
    server.stop()


@pytest.fixture
def s3_server(monkeypatch):
    """A server of this test's own (to stop mid-run, or to watch its requests), with the
    environment pointing s3fs (and any subprocess) at it."""
    from s3fs import S3FileSystem

    server = S3Server()
    for key, value in s3_environment(server.endpoint).items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # fsspec caches clients whatever the environment: one for this one
    yield server
    server.stop()
    S3FileSystem.clear_instance_cache()


def s3_environment(endpoint: str) -> dict[str, str]:
    """What a user sets to reach S3 (here the test server): credentials, region and endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """A new bucket's URL, s3://NAME, with the environment pointing s3fs (and any subprocess) at the server."""
    import fsspec
    from s3fs import S3FileSystem

    for key, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # fsspec caches clients whatever the environment: one for this one
    name = f"t2i-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)
