"""An S3 API server and a GCS one for the tests (moto's and gcp-storage-emulator's, on 127.0.0.1,
started once per test process) and a fresh bucket per test, reached the way a user reaches the
store: s3fs or gcsfs, with credentials and the endpoint from the environment."""

from __future__ import annotations

import os
import uuid

import pytest

# gcsfs asks a bucket whether it has a hierarchical namespace (over gRPC and TLS), an API the GCS
# emulator lacks: it would retry for minutes; GCS itself answers it. gcsfs reads this once, when
# it is imported, so it is set here, before any test imports gcsfs (and for the CLI's subprocesses).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


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


class GCSServer:
    """A GCS JSON API server on 127.0.0.1 (gcp-storage-emulator, in memory), reached by gcsfs through
    STORAGE_EMULATOR_HOST as a user reaches GCS.

    The emulator ignores upload preconditions, which the leases rest on; GCS documents them
    (`ifGenerationMatch=0`: create only if no live object has the name, else 412 Precondition
    Failed, evaluated with the write). `_honour_preconditions` adds that check to the emulator's
    uploads, and its server answers one request at a time, so a check and its write are one step
    as on GCS. What the GCS tests show is therefore that our leases, through gcsfs, send the
    precondition and act rightly on GCS's documented answer; that GCS keeps its documentation is
    Google's promise, not something a test here can show."""

    def __init__(self):
        import logging

        from gcp_storage_emulator.storage import Storage

        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # its request log, in a CLI test's stderr
        _honour_preconditions()
        # called with (bucket, object name) before the server stores an upload; returning True
        # drops it unstored (a 503), as a client killed mid-upload leaves it
        self.before_upload = None
        self.storage = Storage(use_memory_fs=True)  # its buckets outlast a stop
        _SERVERS[self.storage] = self
        self.port, self.api = 0, None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from gcp_storage_emulator.server import APIThread

        self.api = APIThread("127.0.0.1", self.port, self.storage, daemon=True)
        self.api.start()
        self.api.is_running.wait()
        self.port = self.api._httpd.server_address[1]

    def stop(self) -> None:
        if self.api is not None:
            self.api.join()
            self.api = None


_SERVERS: dict = {}  # the emulator's storage -> its GCSServer (a handler sees only the storage)


def _honour_preconditions() -> None:
    """Upload preconditions in the emulator's uploads (once per process): ifGenerationMatch=0
    refuses a name that exists, ifGenerationMatch=N one whose generation is not N (412); and a
    test server's `before_upload` hook."""
    from http import HTTPStatus

    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.insert, "honours_preconditions", False):
        return
    plain_insert = objects.insert

    def insert(request, response, storage, *args, **kwargs):
        data = request.data if isinstance(request.data, dict) else {}
        name = request.query.get("name", [None])[0] or data.get("meta", data).get("name")
        server = _SERVERS.get(storage)
        if server is not None and server.before_upload is not None:
            if server.before_upload(request.params["bucket_name"], name):
                response.status = HTTPStatus.SERVICE_UNAVAILABLE
                return None
        match = request.query.get("ifGenerationMatch", [None])[0]
        if match is not None:
            try:
                generation = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
            except NotFound:
                generation = "0"
            if str(generation) != match:
                response.status = HTTPStatus.PRECONDITION_FAILED
                message = "At least one of the pre-conditions you specified did not hold."  # GCS's words
                response.json({"error": {"code": 412, "message": message, "errors": [{"reason": "conditionNotMet"}]}})
                return None
        return plain_insert(request, response, storage, *args, **kwargs)

    insert.honours_preconditions = True
    objects.insert = insert  # the router's fallback for uploads without /upload
    for _, handlers in emulator.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is plain_insert:
                handlers[method] = insert


def gcs_environment(endpoint: str) -> dict[str, str]:
    """What a user sets to reach a GCS emulator (here the test server); on GCS itself, only the
    credentials (GOOGLE_APPLICATION_CREDENTIALS), as google-auth reads them."""
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "FSSPEC_GCS_TOKEN": "anon",  # fsspec's per-protocol defaults, for gcsfs: no credentials to a local server
        "FSSPEC_GCS_PROJECT": "t2i-test",
    }


def _point_gcsfs_at(endpoint: str, monkeypatch) -> None:
    import fsspec.config
    from gcsfs import GCSFileSystem

    for key, value in gcs_environment(endpoint).items():
        monkeypatch.setenv(key, value)
    # fsspec reads FSSPEC_GCS_* when it is imported: in this process, set what it read
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon", "project": "t2i-test"})
    GCSFileSystem.clear_instance_cache()  # fsspec caches clients whatever the environment


@pytest.fixture(scope="session")
def gcs_endpoint():
    server = GCSServer()
    yield server.endpoint
    server.stop()


@pytest.fixture
def gcs_server(monkeypatch):
    """A server of this test's own (to watch or drop its requests), with the environment pointing
    gcsfs (and any subprocess) at it."""
    server = GCSServer()
    _point_gcsfs_at(server.endpoint, monkeypatch)
    yield server
    server.stop()
    _SERVERS.pop(server.storage, None)


@pytest.fixture
def gcs_bucket(gcs_endpoint, monkeypatch):
    """A new bucket's URL, gs://NAME, with the environment pointing gcsfs (and any subprocess) at the server."""
    import fsspec

    _point_gcsfs_at(gcs_endpoint, monkeypatch)
    name = f"t2i-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("gs", skip_instance_cache=True)
    fs.mkdir(name)
    yield f"gs://{name}"
    fs.rm(name, recursive=True)


@pytest.fixture(params=["s3", "gcs"])
def bucket(request):
    """A new bucket's URL on each store's test server (s3_bucket, gcs_bucket), for what both do alike."""
    clients = {"s3": ("s3fs", "moto"), "gcs": ("gcsfs", "gcp_storage_emulator")}[request.param]
    for module in clients:
        pytest.importorskip(module)
    return request.getfixturevalue(f"{request.param}_bucket")


@pytest.fixture(scope="session")
def on_disk(tmp_path_factory):
    """The files of dataset_files.RECIPE generated into a local folder: what a store must hold too."""
    from t2i_engine.engine.recipe import build_recipe
    from t2i_engine.engine.run import generate
    from tests.dataset.dataset_files import OPTIONS

    out = tmp_path_factory.mktemp("disk") / "ds"
    generate(build_recipe({"model": "digits", "images_per_class": 4, "steps": 2, "images_per_shard": 4}), out, OPTIONS)
    return {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".t2i-engine")}
