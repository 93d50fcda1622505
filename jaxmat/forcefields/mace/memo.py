"""Functions built once per piece of a model's config (custom-VJP closures over its constant tables), keyed by
the identity of that piece and bounded in number, so loading many models does not grow memory without end."""

from __future__ import annotations

from collections import OrderedDict


class IdentityMemo:
    """An LRU table of ``build(*objects)`` keyed by the objects' identities (plus hashable extras). Each entry keeps
    its objects alive, so an id cannot be reused while its entry exists; the oldest entries go beyond ``size``."""

    def __init__(self, size: int = 256):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, build, *objects, extra=()):
        key = tuple(id(o) for o in objects) + tuple(extra)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key][1]
        value = build(*objects)
        self._entries[key] = (objects, value)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
