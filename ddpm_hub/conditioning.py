"""Class conditioning and classifier-free guidance (Ho & Salimans 2022): the contract and its checks.

A backbone that supports class conditioning

* sets the class attribute ``supports_class_conditioning = True``;
* takes ``num_class_embeds`` (the number of real classes, ``None`` for an unconditional model) in its
  constructor, so that it is in its config;
* takes ``class_labels`` in ``forward(sample, timestep, class_labels=None)``: a (B,) integer tensor in
  ``[0, num_class_embeds]``, where ``num_class_embeds`` itself is the *null class* (no label), the one
  classifier-free guidance contrasts with, as in DiT's ``LabelEmbedding``. ``class_labels=None`` on a
  conditional model means the null class for every image.

An unconditional model (``num_class_embeds`` null) given labels raises a ``ValueError`` that says so; a
backbone without ``supports_class_conditioning`` cannot be trained on labels (:func:`check_backbone_supports`).

Guidance: the pipeline runs the conditional and the null-class batch in one forward pass and combines them
as ``uncond + guidance_scale * (cond - uncond)`` (:func:`guide`). ``guidance_scale=1`` is the plain
conditional model, and the pipeline then skips the null half.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: the guidance scale the pipeline, the CLI and the Space use by default (see benchmarks/README.md)
DEFAULT_GUIDANCE_SCALE = 1.5


def supports_class_conditioning(backbone: Any) -> bool:
    """Whether a backbone class (or instance) implements the class-conditioning contract above."""
    return bool(getattr(backbone, "supports_class_conditioning", False))


def num_classes_of(unet: Any) -> int | None:
    """The number of real classes a backbone instance was built for, or None when it is unconditional."""
    if not supports_class_conditioning(unet):
        return None
    return getattr(unet.config, "num_class_embeds", None) or None


def check_backbone_supports(cls: type, name: str) -> None:
    """Raise a ValueError when the backbone class ``cls`` (registered as ``name``) cannot take class labels."""
    if not supports_class_conditioning(cls):
        raise ValueError(
            f"the backbone {name!r} ({cls.__name__}) does not support class conditioning (it does not set "
            "supports_class_conditioning = True and take num_class_embeds / class_labels); use backbone unet or "
            "dit, or train unconditionally with data.label_column: null"
        )


def embedding_labels(
    class_labels: torch.Tensor | None, num_class_embeds: int | None, batch_size: int, owner: str
) -> torch.Tensor | None:
    """The (B,) long labels a backbone's class embedding takes, checked; None for an unconditional model.

    ``None`` labels on a conditional model become the null class ``num_class_embeds``.
    """
    if not num_class_embeds:
        if class_labels is not None:
            raise ValueError(
                f"this {owner} is unconditional (num_class_embeds is null), so it takes no class_labels; load a "
                "class-conditional model, or call it without class_labels"
            )
        return None
    if class_labels is None:
        return torch.full((batch_size,), num_class_embeds, dtype=torch.long)
    labels = torch.as_tensor(class_labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class_labels must be integers, got a {labels.dtype} tensor")
    labels = labels.reshape(-1).long()
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    if labels.numel() != batch_size:
        raise ValueError(f"class_labels has {labels.numel()} labels for a batch of {batch_size} images")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_class_embeds):
        raise ValueError(
            f"class_labels must be in [0, {num_class_embeds - 1}] (or {num_class_embeds}, the null class); "
            f"got {labels.tolist()}"
        )
    return labels


def label_ids(
    class_labels: int | str | Sequence[int | str], class_names: Sequence[str], num_classes: int
) -> list[int]:
    """Class ids for what a user asked for: an id, a class name, or a list of either.

    ``class_names`` maps ids to names (a name may be given in place of its id, as in DiTPipeline's
    ``get_label_ids``).
    """
    items = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
    if not items:
        raise ValueError("class_labels is an empty list; give at least one class")
    by_name = {str(name): i for i, name in enumerate(class_names)}
    ids = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"class label {item!r} is a bool, not a class id or name")
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(
                    f"unknown class name {item!r}; this model's classes are {list(by_name)} (ids 0..{num_classes - 1})"
                )
            ids.append(by_name[item])
        elif isinstance(item, int) or (isinstance(item, torch.Tensor) and item.numel() == 1):
            value = int(item)
            if not 0 <= value < num_classes:
                raise ValueError(
                    f"class id {value} is out of range: this model has {num_classes} classes (ids 0..{num_classes - 1}"
                    f"{', names ' + str(list(by_name)) if by_name else ''})"
                )
            ids.append(value)
        else:
            raise ValueError(f"class label {item!r} is neither a class id (int) nor a class name (str)")
    return ids


def guide(model_output: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Combine a (2B, ...) batch of [conditional, null-class] outputs: ``uncond + s * (cond - uncond)``."""
    cond, uncond = model_output.chunk(2)
    return uncond + guidance_scale * (cond - uncond)
