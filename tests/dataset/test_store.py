"""The storage interface every reader and writer of a dataset goes through (dataset/store.py):
the promises an object store must keep too, held against the local folder."""

from __future__ import annotations

import pytest

from t2i_engine.dataset.store import LocalStore, as_store
from t2i_engine.errors import InputError


def test_writes_are_whole_and_names_list_sorted(tmp_path):
    store = LocalStore(tmp_path / "ds")
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


def test_a_staged_file_has_no_name_until_it_is_published(tmp_path):
    store = LocalStore(tmp_path)
    with store.stage("000000.tar") as (f, staged):
        f.write(b"shard")
    assert not store.exists("000000.tar") and staged.read_bytes() == b"shard"
    store.publish(staged, "000000.tar", size=5, sha256=store.sha256(staged.name))
    assert store.read_bytes("000000.tar") == b"shard" and not staged.exists()
    with pytest.raises(RuntimeError), store.stage("000001.tar") as (f, staged):  # a failed build leaves nothing
        f.write(b"part")
        raise RuntimeError("killed")
    assert store.list("000001*") == []


def test_locks_exclude_as_asked(tmp_path):
    store = LocalStore(tmp_path)
    busy = InputError("out", str(tmp_path), "busy")
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


def test_a_url_is_refused_and_a_store_names_its_folder(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="s3://"):
        as_store("s3://bucket/ds")
    monkeypatch.chdir(tmp_path)
    assert as_store(".").name == tmp_path.name
    store = LocalStore(tmp_path)
    assert as_store(store) is store and as_store(tmp_path).url == str(tmp_path)
