"""Named builders, in the manner of timm's model registry: a decorated function adds a name, one `create`
call builds by name, and an unknown name is an error that lists the registered ones.

The registries live in the bottom layer so that the config (`covidxr.config`) can check a name against them
without importing the layer that builds the modules. Each registry names the module that registers its
built-in entries (`provider`, e.g. `covidxr.models.heads`); it is imported the first time a name is looked
up, so a name is checked against every built-in entry whichever module was imported first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from covidxr.errors import UsageError

Builder = Callable[..., Any]


class Registry:
    """Builders of one kind (`head`, `backbone`) by name."""

    def __init__(self, kind: str, provider: str):
        self.kind = kind
        self.provider = provider
        self.entries: dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """A decorator that registers a builder under `name` (a name registered twice is a programming error)."""

        def add(builder: Builder) -> Builder:
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self.entries[name].__module__})")
            self.entries[name] = builder
            return builder

        return add

    def names(self) -> list[str]:
        """The registered names, built-in ones first, in the order they were registered."""
        importlib.import_module(self.provider)
        return list(self.entries)

    def check(self, name: str) -> str:
        """`name`, or a UsageError naming it and the registered ones (a ValueError: in a pydantic validator it
        is the field's message)."""
        if name not in self.names():
            raise UsageError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return name

    def create(self, name: str, **kwargs: Any) -> Any:
        """What the builder registered under `name` returns for `kwargs`."""
        return self.entries[self.check(name)](**kwargs)


HEADS = Registry("head", provider="covidxr.models.heads")
"""Classification heads: builder(channels, height, width, num_classes, dropout) -> nn.Module on a backbone's
feature map (B, channels, height, width)."""
BACKBONES = Registry("backbone", provider="covidxr.models.covidxr_cnn")
"""covidxr's own backbones, beside timm's (each is also registered with timm, so timm builds it by name)."""
