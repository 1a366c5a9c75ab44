"""Per-row LoRA scales: each row of a batch runs with its own LoRAs and scales, in one model call.

The LoRAs are PEFT adapters on the UNet and the text encoder (loaded by `finecontrol.loras`), kept
disabled so that the models compute with their base weights alone. While a `LoraMix` is active, a
forward hook on every LoRA layer adds to each row r of its output
`sum over adapters a: scale[a][r] * scaling_a * B_a(A_a(x[r]))`, PEFT's own unmerged LoRA term
with a per-row factor. An adapter runs only on the rows whose scale is not 0 (as PEFT's
mixed-batch forward runs each adapter on its own rows), so the extra work is the LoRA layers' own.
"""

from __future__ import annotations

import torch

RowScales = dict[str, list[float]]
"""Adapter name -> its scale for each row of the batch (0: the adapter does not act on that row)."""


class LoraMixError(RuntimeError):
    """A LoRA that cannot act per row here (it changes a layer that runs after the rows are merged)."""


def lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's PEFT LoRA layers."""
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def disable_lora_layers(model: torch.nn.Module) -> None:
    """Make every LoRA layer compute with its base weights only (a `LoraMix` adds the LoRA terms)."""
    for layer in lora_layers(model):
        layer.enable_adapters(False)


class LoraMix:
    """Hooks that add each row's LoRA terms in `model`'s LoRA layers; a context manager.

    `scales` gives each adapter's scale per row of the whole batch. When the batch runs in chunks,
    call `select(start, stop)` before each model call so the hooks use that chunk's rows. A layer
    whose input has fewer rows than the call (after the people's features are merged, e.g. the
    UNet's `conv_out`) gets the adapter's scale when all rows share it, else LoraMixError.
    """

    def __init__(self, model: torch.nn.Module, scales: RowScales):
        self.scales = {name: list(values) for name, values in scales.items() if any(values)}
        self.layers = [layer for layer in lora_layers(model) if any(name in layer.lora_A for name in self.scales)]
        self.rows = (0, len(next(iter(scales.values()), [])))
        self._handles: list = []
        self._picks: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}

    def select(self, start: int, stop: int) -> None:
        """The batch rows the next model call runs."""
        self.rows = (start, stop)

    def _pick(self, name: str, rows: int, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        """(index of the rows the adapter acts on, or None for all; their scales) for this call, or
        None when the adapter acts on none of its rows."""
        start, stop = self.rows
        values = self.scales[name][start:stop]
        if rows != len(values):  # a layer after the rows were merged
            if len(set(self.scales[name])) > 1:
                raise LoraMixError(
                    f"a LoRA changes a layer that runs after the people are composed, so it cannot act on "
                    f"one person only: give LoRA {name} the same scale for everyone"
                )
            values = [self.scales[name][0]] * rows
        key = (name, start, stop, rows, like.device, like.dtype)
        if key not in self._picks:
            used = [i for i, value in enumerate(values) if value != 0]
            index = None if len(used) == rows else torch.tensor(used, device=like.device)
            scale = torch.tensor([values[i] for i in used], device=like.device, dtype=like.dtype)
            self._picks[key] = (index, scale)
        index, scale = self._picks[key]
        return None if scale.numel() == 0 else (index, scale)

    def _add_lora_terms(self, layer: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        for name in self.scales:
            if name not in layer.lora_A:
                continue
            lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
            pick = self._pick(name, x.shape[0], lora_a.weight)
            if pick is None:
                continue
            index, scale = pick
            rows = x if index is None else x.index_select(0, index)
            term = lora_b(lora_a(layer.lora_dropout[name](rows.to(lora_a.weight.dtype))))
            term = (term * (layer.scaling[name] * scale).view(-1, *[1] * (term.dim() - 1))).to(output.dtype)
            output = output + term if index is None else output.index_add(0, index, term)
        return output

    def __enter__(self) -> LoraMix:
        self._handles = [layer.register_forward_hook(self._add_lora_terms) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
