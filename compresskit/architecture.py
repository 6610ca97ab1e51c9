"""What a model is before any compression: a compresskit `ModelSpec`, or a named factory call.

A factory is ``"module:function"`` plus JSON keyword arguments, e.g. ``"torchvision.models:resnet18"``
with ``{"num_classes": 10}``. Building one imports its module, so a checkpoint (which anyone may
hand over) can only name a module inside `TRUSTED_MODULES`; any other factory is refused *before*
anything is imported unless the caller names that exact factory in ``trust_factory``. Arguments
that would download weights (``weights``, ``pretrained``, …) are refused too: a checkpoint carries its
own weights.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from torch import nn

from compresskit.errors import CompresskitError, ParameterError
from compresskit.models import ConvNet, ModelSpec

# compresskit.models rather than all of compresskit: other compresskit functions write files.
TRUSTED_MODULES = ("torchvision.models", "timm", "compresskit.models")
DOWNLOAD_KWARGS = ("weights", "pretrained", "weights_backbone", "pretrained_backbone")
_FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z][A-Za-z0-9_]*$")

Trust = str | Sequence[str] | None
# Set only by `trusting_recorded_factories`, i.e. by a caller who said so (the CLI's --trust-factory).
_TRUST_RECORDED: ContextVar[bool] = ContextVar("compresskit_trust_recorded_factories", default=False)


@contextmanager
def trusting_recorded_factories(enabled: bool = True) -> Iterator[None]:
    """Within this block, build any factory a checkpoint records, trusted module or not: the CLI's
    ``--trust-factory`` on commands that read an existing run, whose factory the user cannot name
    beforehand. With `enabled` False the block changes nothing."""
    token = _TRUST_RECORDED.set(_TRUST_RECORDED.get() or enabled)
    try:
        yield
    finally:
        _TRUST_RECORDED.reset(token)


def check_factory_name(name: object, where: str) -> str:
    """`name` if it has the form ``package.module:function`` (a public function name), else
    CompresskitError. Imports nothing."""
    if not isinstance(name, str) or not _FACTORY.match(name):
        raise CompresskitError(
            f"{where} factory {name!r} is not of the form 'package.module:function' (e.g. "
            "'torchvision.models:resnet18')."
        )
    return name


def is_trusted(name: str, trust_factory: Trust = None) -> bool:
    """True when `name`'s module is inside `TRUSTED_MODULES`, `name` is in `trust_factory`, or the
    caller is inside `trusting_recorded_factories`."""
    module = name.partition(":")[0]
    trusted = [trust_factory] if isinstance(trust_factory, str) else list(trust_factory or [])
    inside = any(module == t or module.startswith(t + ".") for t in TRUSTED_MODULES)
    return inside or name in trusted or _TRUST_RECORDED.get()


def check_factory_kwargs(kwargs: object, where: str) -> dict:
    """`kwargs` as a JSON round-tripped dict with string keys and no weight download, else
    CompresskitError."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise CompresskitError(f"{where} factory kwargs must be a dict with string keys.")
    try:
        plain = json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CompresskitError(f"{where} factory kwargs must be JSON values: {exc}.") from None
    loads = [k for k in DOWNLOAD_KWARGS if plain.get(k) not in (None, False)]
    if loads:
        raise CompresskitError(
            f"{where} factory kwargs set {', '.join(loads)}, which downloads weights; drop it, the "
            "checkpoint holds the weights."
        )
    return plain


@dataclass(frozen=True)
class Architecture:
    """Exactly one of `spec` (a compresskit `ConvNet`) and `factory` (``module:function``, called with
    `kwargs`)."""

    spec: ModelSpec | None = None
    factory: str | None = None
    kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        if self.spec is not None:
            return {"spec": self.spec.to_dict()}
        return {"factory": self.factory, "kwargs": self.kwargs}

    @classmethod
    def from_dict(cls, data: object, where: str) -> Architecture:
        """Read and check a checkpoint's ``architecture`` record; imports nothing."""
        if not isinstance(data, dict) or set(data) not in ({"spec"}, {"factory", "kwargs"}):
            raise CompresskitError(
                f"{where} has an architecture record that is neither {{spec}} nor {{factory, kwargs}}."
            )
        if "spec" in data:
            try:
                return cls(spec=ModelSpec.from_dict(data["spec"]))
            except (CompresskitError, TypeError) as exc:
                raise CompresskitError(f"{where} has an invalid model spec: {exc}") from None
        name = check_factory_name(data["factory"], where)
        return cls(factory=name, kwargs=check_factory_kwargs(data["kwargs"], where))

    def describe(self) -> str:
        if self.spec is not None:
            return f"ConvNet spec '{self.spec.name}'"
        return f"{self.factory}(**{json.dumps(self.kwargs)})"

    def build(self, *, trust_factory: Trust = None, where: str = "the checkpoint") -> nn.Module:
        """A freshly initialised model. A factory outside `TRUSTED_MODULES` and not named in
        `trust_factory` is refused before its module is imported."""
        if self.spec is not None:
            return ConvNet(self.spec)
        assert self.factory is not None
        if not is_trusted(self.factory, trust_factory):
            raise ParameterError(
                f"{where} names the model factory '{self.factory}', outside the trusted modules "
                f"({', '.join(TRUSTED_MODULES)}), so it was not imported; if you trust that code, allow "
                "it with {0}.",
                "trust_factory",
            )
        module_name, _, function = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise CompresskitError(
                f"{where} names the factory '{self.factory}', whose module cannot be imported: {exc}."
            ) from None
        fn = getattr(module, function, None)
        if not callable(fn):
            raise CompresskitError(f"{where} names the factory '{self.factory}', which is not a function.")
        try:
            model = fn(**self.kwargs)
        except ParameterError:  # the factory names its own bad argument (compresskit.zoo's)
            raise
        except (TypeError, ValueError) as exc:
            raise CompresskitError(f"{where} calls {self.describe()}, which fails: {exc}") from None
        if not isinstance(model, nn.Module):
            raise CompresskitError(
                f"{where} calls {self.describe()}, which returned a {type(model).__name__}, "
                "not a torch module."
            )
        return model
