"""One name registry for plugin families (attacks, judges), garak style: a class registers
under its `name`, and is found by that name with its config dataclass built from keywords."""

from __future__ import annotations

from dataclasses import fields


class Registry:
    def __init__(self, kind: str):
        self.kind = kind  # "attack", "judge": named in every error
        self._classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        if cls.name in self._classes:
            raise ValueError(f"{self.kind} {cls.name!r} is already registered")
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def build(self, name: str, config: dict):
        """(class, config instance) for `name`; unknown names and config keys are refused."""
        if name not in self._classes:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        cls = self._classes[name]
        known = {f.name for f in fields(cls.config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"{self.kind} {name!r}: unknown config keys {unknown}; known: {sorted(known)}")
        return cls, cls.config_class(**config)
