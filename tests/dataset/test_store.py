"""The storage interface every reader and writer of a dataset goes through (dataset/store.py):
the promises an object store must keep too, held against the local folder."""

from __future__ import annotations

import pytest

from t2i_engine.dataset.store import FsspecStore, LocalStore, as_store, open_store
from t2i_engine.errors import InputError, StoreUnavailable


def _fresh_root(kind: str, request) -> str:
    """A fresh URL of `kind`: memory://, or a new bucket on the S3 or GCS test server (conftest.py)."""
    import uuid

    if kind == "memory":
        return f"memory:///t2i-test-{uuid.uuid4().hex}"
    if kind == "gcs":
        pytest.importorskip("gcsfs")
        pytest.importorskip("gcp_storage_emulator")
        return request.getfixturevalue("gcs_bucket")
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    return request.getfixturevalue("s3_bucket")


def _remove(url: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def make_store(request, tmp_path):
    """A store of each kind at a fresh location: make_store("ds") -> the store of DIR/ds."""
    if request.param == "local":
        yield lambda name="": LocalStore(tmp_path / name)
        return
    root = _fresh_root(request.param, request)
    yield lambda name="": FsspecStore(f"{root}/{name}".rstrip("/"))
    if request.param == "memory":  # a bucket goes with its fixture
        _remove(root)


def test_writes_are_whole_and_names_list_sorted(make_store):
    store = make_store("ds")
    assert not store.exists() and store.list("*") == []
    store.makedirs()
    store.write_text("b.json", "{}\n")
    store.write_bytes("a.bin", b"\x00\x01")
    store.write_text("b.json", '{"x": 1}\n')  # replaced whole
    assert store.list("*") == ["a.bin", "b.json"] and store.list("*.json") == ["b.json"]
    assert store.read_text("b.json") == '{"x": 1}\n' and store.read_bytes("a.bin") == b"\x00\x01"
    assert store.size("a.bin") == 2 and len(store.sha256("a.bin")) == 64
    store.remove("a.bin")
    store.remove("a.bin")  # a missing name is fine
    assert store.list("*") == ["b.json"]


def test_a_staged_file_has_no_name_until_it_is_published(make_store):
    store = make_store()
    store.makedirs()
    with store.stage("000000.tar") as (f, staged):
        f.write(b"shard")
    assert not store.exists("000000.tar") and staged.read_bytes() == b"shard"
    import hashlib

    if isinstance(store, FsspecStore):  # an upload is read back (a local rename cannot change the bytes)
        with pytest.raises(StoreUnavailable, match="read back"):
            store.publish(staged, "000000.tar", size=5, sha256=hashlib.sha256(b"other").hexdigest())
        assert not store.exists("000000.tar")
        with store.stage("000000.tar") as (f, staged):
            f.write(b"shard")
    store.publish(staged, "000000.tar", size=5, sha256=hashlib.sha256(b"shard").hexdigest())
    assert store.read_bytes("000000.tar") == b"shard" and not staged.exists()
    with pytest.raises(RuntimeError), store.stage("000001.tar") as (f, staged):  # a failed build leaves nothing
        f.write(b"part")
        raise RuntimeError("killed")
    assert store.list("000001*") == [] and not staged.exists()


def test_locks_exclude_as_asked(make_store):
    store = make_store()
    store.makedirs()
    busy = InputError("out", store.url, "busy")
    with store.lock("lock", refusal=busy):
        with pytest.raises(InputError, match="busy"):
            with store.lock("lock", refusal=busy):
                pass
        with pytest.raises(InputError, match="busy"), store.lock("lock", shared=True, refusal=busy):
            pass
    with store.lock("lock", shared=True, refusal=busy), store.lock("lock", shared=True, refusal=busy):
        with pytest.raises(InputError, match="busy"), store.lock("lock", refusal=busy):
            pass
    with store.lock("lock", refusal=busy):  # free again
        pass


def test_a_url_of_another_scheme_is_refused_and_a_store_names_its_folder(tmp_path, monkeypatch):
    for url in ("az://container/ds", "file:///tmp/ds", "nosuch://x"):
        with pytest.raises(InputError, match="not written to yet"):
            open_store(url)
    assert isinstance(open_store("memory://b/ds"), FsspecStore) and open_store("memory://b/ds").name == "ds"
    monkeypatch.chdir(tmp_path)
    assert as_store(".").name == tmp_path.name
    store = LocalStore(tmp_path)
    assert as_store(store) is store and as_store(tmp_path).url == str(tmp_path)


def test_bucket_names_follow_each_stores_rules():
    """GCS allows underscores and dotted names up to 222 characters (63 between dots); S3 neither."""
    from t2i_engine.dataset.store import _checked_url

    dotted = ".".join(["a" * 63] * 3)  # 191 characters
    for url in ("gs://my_bucket/ds", f"gs://{dotted}/ds", "gcs://my-bucket.example.com/ds", "s3://my-bucket.x/ds"):
        scheme, rest = url.split("://", 1)
        assert _checked_url(scheme, rest, url, "out") == url
    for url in ("s3://my_bucket/ds", "gs://" + "a" * 64 + "/ds", "gs://" + "a" * 64 + ".b/ds", "gs://_bucket/ds"):
        scheme, rest = url.split("://", 1)
        with pytest.raises(InputError, match="is not one"):
            _checked_url(scheme, rest, url, "out")


def test_only_the_store_touches_the_filesystem():
    """Every reader and writer in dataset/ goes through the store (so an object store can take its
    place): no os, fcntl, shutil or open() there, nor pathlib's file methods, but in store.py, and
    for the two local files the interface hands out: the staged shard (its size and sha256 before
    it is published) and `preview --out FILE` (files.atomic_write_bytes)."""
    import ast
    from pathlib import Path

    import t2i_engine.dataset as package

    forbidden_modules = {"os", "fcntl", "shutil"}
    forbidden_methods = {
        "unlink", "rename", "replace", "glob", "iterdir", "mkdir", "read_text", "write_text", "read_bytes",
        "write_bytes", "stat", "exists", "is_file", "is_dir", "open",
    }  # fmt: skip
    allowed = {("shards.py", "stat")}  # staged.stat(): the local staged shard
    found = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        if path.name == "store.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [(path.name, n) for n in names if n.split(".")[0] in forbidden_modules]
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "open":
                    found.append((path.name, "open"))
                elif isinstance(f, ast.Attribute) and f.attr in forbidden_methods:
                    owner = ast.unparse(f.value)  # the store's, or tarfile's and PIL's on open streams
                    through = owner in ("store", "self.store", "tarfile", "Image") or owner.startswith("as_store(")
                    if not through and (path.name, f.attr) not in allowed:
                        found.append((path.name, f"{owner}.{f.attr}"))
    assert found == []


@pytest.fixture(params=["memory", "s3", "gcs"])
def url(request):
    """A fresh location in each store with conditional creates: memory://, S3 and GCS (the test servers)."""
    root = _fresh_root(request.param, request)
    yield f"{root}/ds"
    if request.param == "memory":
        _remove(root)


def test_of_many_takers_at_once_exactly_one_gets_the_lease(url):
    """The conditional create the leases rest on (S3: PutObject If-None-Match: *; GCS:
    ifGenerationMatch=0), raced by eight
    threads as eight processes would: one holds it, the seven others are refused."""
    import threading

    stores = _stores(url, 8, lease_seconds=30)
    barrier, outcomes = threading.Barrier(8), []

    def take(store):
        barrier.wait()
        outcomes.append(store._take("L", shared=False)[0])

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes, key=str) == ["L.1"] + [None] * 7 and stores[0].list("L.*") == ["L.1"]


def _stores(url: str, n: int, lease_seconds: float = 0.4) -> list[FsspecStore]:
    """n holders of one location (as n processes would be), with short leases."""
    stores = [FsspecStore(url) for _ in range(n)]
    for store in stores:
        store.lease_seconds = lease_seconds
        store.makedirs()
    return stores


def test_a_lease_stands_while_its_holder_renews_it_and_says_whose_it_is(url):
    import time

    a, b = _stores(url, 2)
    busy = InputError("out", url, "busy")
    with a.lock("L", refusal=busy):
        time.sleep(1.0)  # 2.5 lease lengths: renewed meanwhile
        assert b.held("L")
        with pytest.raises(InputError, match="busy") as e, b.lock("L", refusal=busy):
            pass
        assert "its lease:" in str(e.value) and "pid" in str(e.value)
    assert not b.held("L")
    with b.lock("L", refusal=busy):  # released: free at once
        pass


def test_a_renewal_that_fails_once_the_lock_has_ended_ends_quietly(monkeypatch):
    """A store that failed the run: lock() lets go without waiting for a renewal still in the
    client, which may then fail in any way as the process exits; the renewer ends without a
    traceback. The same failure while the lock stands is raised (a bug, not a store outage)."""
    import threading
    import uuid

    (store,) = _stores(f"memory:///t2i-test-{uuid.uuid4().hex}", 1, lease_seconds=0.04)
    stop = threading.Event()

    def failing_at_exit(name, data):
        stop.set()  # the lock ended while this renewal was in flight
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(store, "write_bytes", failing_at_exit)
    store._renew("L.1", False, stop)  # returns: nothing raised

    def failing_while_held(name, data):
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "write_bytes", failing_while_held)
    with pytest.raises(RuntimeError, match="a bug"):
        store._renew("L.1", False, threading.Event())


def test_a_dead_holders_lease_is_taken_over_once_it_expires(url):
    import json
    import time

    (b,) = _stores(url, 1)
    b.write_text(
        "L.1", json.dumps({"owner": "gone", "host": "h", "pid": 1, "shared": False, "expires": time.time() + 0.3})
    )
    busy = InputError("out", url, "busy")
    with pytest.raises(InputError, match="free from"):
        with b.lock("L", refusal=busy):
            pass
    time.sleep(0.4)
    with b.lock("L", refusal=busy):
        assert b.list("L.*") == ["L.2"]  # the next generation; the stale one gone
    assert b.list("L.*") == []


def test_shared_leases_keep_an_exclusive_one_out_and_the_other_way_round(url):
    import threading
    import time

    a, b, c = _stores(url, 3)
    busy = InputError("out", url, "busy")
    with a.lock("L", shared=True, refusal=busy), b.lock("L", shared=True, refusal=busy):
        with pytest.raises(InputError, match="busy"), c.lock("L", refusal=busy):
            pass
    with c.lock("L", refusal=busy):
        with pytest.raises(InputError, match="busy"), a.lock("L", shared=True, refusal=busy):
            pass
    # wait=True waits for the holder's release instead of refusing
    got = []

    def wait_for_it():
        with b.lock("W", wait=True):
            got.append(time.monotonic())

    with a.lock("W", refusal=busy):
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)
        released = time.monotonic()
    waiter.join(5)
    assert len(got) == 1 and got[0] >= released


def test_a_lock_is_not_held_by_the_leases_of_a_lock_named_after_it(url):
    """LOCK and LOCK.part-0-of-2 are two locks: the second's lease (LOCK.part-0-of-2.1) is not the first's."""
    a, b = _stores(url, 2)
    busy = InputError("out", url, "busy")
    with a.lock("L.part-0-of-2", refusal=busy):
        assert not b.held("L")
        with b.lock("L", shared=True, refusal=busy), b.lock("L.part-1-of-2", refusal=busy):
            pass
