"""When each key was last used (``used_at``), to within a minute, without a write per
request.

A request only compares the ``used_at`` its key lookup already read with the
clock; when it is older than RECORD_AFTER, the key is noted in memory. A thread of
the recorder's own writes the notes in one transaction every FLUSH_SECONDS, and
exits when there is nothing more to write, so a request never waits for, fails
on or is serialized by the record of its use. Each process records its own uses;
the update never moves a time backwards. A stored ``used_at`` is therefore at most
RECORD_AFTER + FLUSH_SECONDS (40 s) behind the key's last use.
"""

import logging
import threading
import time

from ..storage import Storage
from ..storage.interface import utc_text_of

EXTENSION_KEY = "pods.key_use"  # where an app keeps its recorder
RECORD_AFTER = 30.0
FLUSH_SECONDS = 10.0

log = logging.getLogger("pods.keyuse")


class KeyUseRecorder:
    def __init__(self, storage: Storage, flush_seconds: float = FLUSH_SECONDS):
        self.storage = storage
        self.flush_seconds = flush_seconds
        self._pending: dict[str, float] = {}  # key_id -> its last use noted, time.time()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # (whole second, the used_at text older than which a use is noted)
        self._threshold: tuple[int | None, str] = (None, "")

    def used(self, key_id: str, used_at: str | None) -> None:
        """A request was authenticated by ``key_id``, whose stored last use is ``used_at``."""
        now = time.time()
        second, threshold = self._threshold
        if second != int(now):
            second, threshold = self._threshold = (int(now), utc_text_of(now - RECORD_AFTER))
        if used_at is not None and used_at >= threshold:
            return  # the usual case: recorded recently enough
        with self._lock:
            # The time as it is, formatted when written: until the next write (up to
            # FLUSH_SECONDS) every request of this key comes here.
            self._pending[key_id] = now
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pods-key-use", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Write what is noted (at shutdown, and from the recorder's thread)."""
        with self._lock:
            noted, self._pending = self._pending, {}
        if not noted:
            return
        used = {key_id: utc_text_of(at) for key_id, at in noted.items()}
        try:
            self.storage.record_key_use(used)
        except Exception as e:  # the record is a convenience; the next use notes it again
            log.warning("could not record when %d key(s) were used: %s", len(used), e)
        finally:
            self.storage.end_request()

    def _run(self) -> None:
        while True:
            time.sleep(self.flush_seconds)
            self.flush()
            with self._lock:
                if not self._pending:  # nothing came meanwhile: stop until the next use
                    self._thread = None
                    break
        self.storage.end_thread()
