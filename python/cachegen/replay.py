"""Start a transformers causal LM's forward pass at a given decoder layer: the layers below it
give back the outputs they gave in a recorded run over the same input instead of computing.

Calibration continues the same tokens hundreds of times with one layer's prefix cache changed.
The layers below that layer see the same input and their own unchanged cache, so their outputs
are those of the intact run; replaying them saves about half of every pass on average, with
results equal to full passes (`LayerReplay.record` checks that on the model at hand: a model
whose layers read another layer's cache, for example, falls back to full passes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class LayerReplay:
    """Decoder layers (`decoder_layers`; none: nothing replays) and the outputs they gave in
    the last `recording()`."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers
        self.outputs: list[Any] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Keep every decoder layer's output of the forward pass run inside."""
        outputs: dict[int, Any] = {}
        hooks = [
            layer.register_forward_hook(
                lambda _module, _args, out, i=i: outputs.__setitem__(i, out)
            )
            for i, layer in enumerate(self.layers)
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
        self.outputs = [outputs[i] for i in range(len(self.layers))] if outputs else []

    @contextlib.contextmanager
    def starting_at(self, first: int) -> Iterator[None]:
        """Inside, the layers below `first` return their recorded outputs without computing
        (nothing replays before a recording or where the layers were not found)."""
        replayed = self.layers[:first] if self.outputs else []
        saved = [layer.__dict__.get("forward") for layer in replayed]
        for layer, out in zip(replayed, self.outputs, strict=False):
            layer.forward = _returning(out)
        try:
            yield
        finally:
            for layer, own in zip(replayed, saved, strict=True):
                del layer.forward
                if own is not None:
                    layer.forward = own

    def record(self, run: Callable[[], T], same: Callable[[T, T], bool]) -> T:
        """`run()`'s result, with every layer's output kept for replay when replaying all but
        the last layer gives that result again (`same`); otherwise nothing is kept and passes
        stay full."""
        with self.recording():
            want = run()
        if self.outputs:
            with self.starting_at(len(self.layers) - 1):
                if not same(run(), want):
                    self.outputs = []
        return want


def _returning(out: Any) -> Callable[..., Any]:
    return lambda *_args, **_kwargs: out


def decoder_layers(model: Any, num_layers: int) -> list[Any]:
    """The model's decoder layers in order, or none when they are not where transformers
    keeps them (`get_decoder().layers`, one per cache layer)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = list(getattr(decoder, "layers", None) or [])
    return layers if len(layers) == num_layers else []
