"""A streamed jump's reduction, shared by the worker thread and the training thread that edits the model."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["Reduction"]


class Reduction:
    """A streamed plan's reduction, shared by two threads: the worker takes modules from the front of the plan, the
    training thread (reading ``ReducedUpdates.items()``) edits each module once it is final and, rather than wait,
    takes modules from the back and reduces them itself."""

    def __init__(self, names: list[str], reduce_one: Callable[[str], None]) -> None:
        self._pending = deque(names)  # nobody has taken these yet
        self._total = len(names)
        self._ready: deque[str] = deque()  # final, not yet handed to the reader
        self._done: set[str] = set()
        self._worker_on: str | None = None  # the module the worker is reducing
        self._finished = False
        self._reduce_one = reduce_one
        self._cond = threading.Condition()
        self._start, self.seconds = time.perf_counter(), 0.0  # until the last module was final

    def claim_first(self) -> str | None:
        """The worker's next module (None: none left)."""
        with self._cond:
            self._worker_on = self._pending.popleft() if self._pending and not self._finished else None
            return self._worker_on

    def mark(self, name: str) -> None:
        with self._cond:
            self._done.add(name)
            self._ready.append(name)
            self._worker_on = None
            self.seconds = time.perf_counter() - self._start
            self._cond.notify_all()

    def finish(self) -> None:
        """The worker stops: the modules nobody reduced (after a failure) are final as they are, exact."""
        with self._cond:
            left = [*([self._worker_on] if self._worker_on is not None else []), *self._pending]
            self._pending.clear()
            self._done.update(left)
            self._ready.extend(left)
            self._finished = True
            self._cond.notify_all()

    def wait(self, name: str | None = None) -> None:
        """Until ``name``'s update is final (None: until the worker has finished)."""
        with self._cond:
            self._cond.wait_for(lambda: self._finished or (name is not None and name in self._done))

    def completed(self) -> Iterator[str]:
        """Every module once, as soon as it is final: the worker's in its order, between them the ones this thread
        takes from the back and reduces itself whenever none is ready."""
        for _ in range(self._total):
            with self._cond:
                self._cond.wait_for(lambda: self._ready or self._pending)
                own = not self._ready
                name = self._pending.pop() if own else self._ready.popleft()
            if own:
                self._reduce_one(name)
                with self._cond:
                    self._done.add(name)
                    self.seconds = max(self.seconds, time.perf_counter() - self._start)
                    self._cond.notify_all()
            yield name
