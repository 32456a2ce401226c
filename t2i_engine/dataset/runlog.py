"""The run log: one JSON line per committed shard (and per run start, stop and error), which
`status` reads to say what is done, how fast and what went wrong, while a run goes on.

Every writer (a run's process, a worker, a Ray actor, a part on another machine) logs to files
of its own in the dataset's LOG_DIR, named after its host, pid and a random id, so writers never
share a file and no line is lost however many append at once, on a local disk, a network mount
or an object store. On a local (or mounted) folder a line is appended to the writer's file (one
`write` of O_APPEND); an object store cannot append, so there the writer rewrites its current
segment whole and starts a new one every SEGMENT_LINES lines (each upload stays small).

The log is advisory: a line that cannot be written (a full disk) is dropped, never the shard.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

from .layout import LOG_DIR
from .store import FsspecStore, LocalStore, writer_identity

SEGMENT_LINES = 256  # lines per log object at a URL (rewritten whole on each line)


class RunLog:
    def __init__(self, store: LocalStore | FsspecStore, **context):
        """`context`: what every line of this writer says of it (part, worker, device)."""
        self.store = store
        me = writer_identity()
        self.context = {**{k: v for k, v in context.items() if v is not None}, **me}
        self.writer = f"{me['host']}-{me['pid']}-{uuid.uuid4().hex[:8]}"
        self._segment, self._lines = 0, []
        self._folder_made = False  # LOG_DIR made once, not on every line

    def record(self, event: str, **fields) -> None:
        """Log one event ("shard", "start", "stop", "error") with `fields`, stamped with the time."""
        line = {"event": event, "time": round(time.time(), 3), **self.context, **fields}
        text = json.dumps(line, ensure_ascii=False, sort_keys=False) + "\n"
        try:
            self._write(text)
        except OSError:  # advisory: a full disk drops the line, not the run
            pass

    def _write(self, text: str) -> None:
        if isinstance(self.store, LocalStore):
            if not self._folder_made:
                self.store.makedirs(LOG_DIR)
                self._folder_made = True
            self.store.append_text(f"{LOG_DIR}/{self.writer}.jsonl", text)
            return
        if len(self._lines) == SEGMENT_LINES:
            self._segment, self._lines = self._segment + 1, []
        self._lines.append(text)
        self.store.write_text(f"{LOG_DIR}/{self.writer}.{self._segment:04d}.jsonl", "".join(self._lines))


def read_log(store: LocalStore | FsspecStore) -> list[dict]:
    """Every line of every writer's log, oldest first (a line cut short by a crash is skipped)."""
    lines = []
    for name in store.list(f"{LOG_DIR}/*.jsonl"):
        lines.extend(_parse(store.read_text(f"{LOG_DIR}/{name}")))
    return sorted(lines, key=lambda line: line.get("time", 0))


def _parse(text: str) -> Iterator[dict]:
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            yield line
