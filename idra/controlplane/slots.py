"""Free client-address slots: O(log n) per assignment instead of a scan of every peer.

Built once at start from the slots in use: the gaps below the highest used slot go into
a min-heap, and everything above it is free. ``take`` returns the lowest free slot (the
same choice as before, so addresses stay compact). The store calls ``take``/``free``
inside its write lock and undoes them when a transaction rolls back. Slots outside
first..last (held from before the range shrank, e.g. in the canary block) are never
indexed: freeing one does not hand it out.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class SlotIndex:
    def __init__(self, used: Iterable[int], first: int, last: int) -> None:
        """``used``: slots held now, in ascending order; free slots are first..last."""
        self.first, self.last = first, last
        self._gaps: list[int] = []  # a heap
        expected = first
        for slot in used:
            if slot < expected or slot > last:
                continue
            self._gaps.extend(range(expected, slot))
            expected = slot + 1
        heapq.heapify(self._gaps)
        self._next = expected  # every slot from here on is free

    def take(self) -> int | None:
        """The lowest free slot (now taken), or None when the pool is exhausted."""
        if self._gaps:
            return heapq.heappop(self._gaps)
        if self._next > self.last:
            return None
        self._next += 1
        return self._next - 1

    def free(self, slot: int) -> None:
        if not self.first <= slot <= self.last:
            return
        if slot == self._next - 1:
            self._next -= 1  # keep the heap small when the newest leave first
        else:
            heapq.heappush(self._gaps, slot)

    def remove(self, slot: int) -> None:
        """Take a given free slot again (undo of :meth:`free`; rare, O(n))."""
        if not self.first <= slot <= self.last:
            return
        if slot == self._next:
            self._next += 1
        else:
            self._gaps.remove(slot)
            heapq.heapify(self._gaps)
