"""Rebuild networks of the published PyTorch pickles (StyleGAN2-ADA-PyTorch, StyleGAN3, CREPS) as our classes.

The restricted unpickler (`training.safe_pickle`) reads each published network as a record: the classes its
embedded source defines, its class name, constructor arguments and state. Here our class is built from those
arguments (translated where we spell them differently, with the published defaults of arguments the pickle
does not store, read from that source), every tensor is copied by name, and every layer setting is compared.
Any name or shape that does not match, and any setting (clamp, precision, activation, ...) that would differ,
is refused with an error instead of being guessed. See docs/published-models.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from training import augment, networks_creps, networks_stylegan2, networks_stylegan3
from training.safe_pickle import (
    ModuleRecord,
    PersistentRecord,
    SnapshotError,
    find_submodule,
    module_attributes,
    named_tensors,
    plain,
)


class ConversionError(SnapshotError):
    """A published network that our classes cannot reproduce exactly; the message says which part and why."""


def words(names: str) -> frozenset[str]:
    """frozenset of the space-separated names."""
    return frozenset(names.split())


_MAPPING_KWARGS = words("num_layers embed_features layer_features activation lr_multiplier w_avg_beta")
_SPEED_ONLY = "speed or memory layout only; the computation is the same"


@dataclasses.dataclass(frozen=True)
class Translation:
    """How one published class (by source family and class name) is rebuilt as ours."""

    our_class: type[torch.nn.Module]
    accepted: frozenset[str]  # Constructor arguments passed on unchanged.
    nested: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # Dict arguments and their keys.
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # Arguments ('a' or 'a.b') left out, and why.
    # Arguments we do not pass but whose value must be one we implement: name -> (allowed values, the published
    # class whose default applies when the pickle does not store it).
    required: dict[str, tuple[tuple[Any, ...], str]] = dataclasses.field(default_factory=dict)
    # Arguments passed with the published default (read from the embedded source) when the pickle does not store
    # them: name -> published class. These are the ones whose defaults differ between published versions.
    defaults: dict[str, str] = dataclasses.field(default_factory=dict)
    # Published buffers that are constants our class computes itself: name -> how to get ours to compare.
    derived: dict[str, Callable[[torch.nn.Module], torch.Tensor]] = dataclasses.field(default_factory=dict)


TRANSLATIONS: dict[tuple[str, str], Translation] = {
    ("stylegan2", "Generator"): Translation(
        our_class=networks_stylegan2.Generator,
        accepted=words(
            "z_dim c_dim w_dim img_resolution img_channels channel_base channel_max num_fp16_res conv_clamp "
            "resample_filter use_noise activation kernel_size"
        ),
        nested={"mapping_kwargs": _MAPPING_KWARGS},
        dropped={"fused_modconv_default": _SPEED_ONLY, "fp16_channels_last": _SPEED_ONLY},
        required={"architecture": (("skip",), "SynthesisBlock")},
        defaults={"conv_clamp": "SynthesisBlock", "num_fp16_res": "SynthesisNetwork"},
    ),
    ("stylegan2", "Discriminator"): Translation(
        our_class=networks_stylegan2.Discriminator,
        accepted=words("c_dim img_resolution img_channels channel_base channel_max num_fp16_res conv_clamp cmap_dim"),
        nested={
            "block_kwargs": words("activation resample_filter"),
            "mapping_kwargs": _MAPPING_KWARGS,
            "epilogue_kwargs": words("mbstd_group_size mbstd_num_channels activation"),
        },
        dropped={
            "block_kwargs.freeze_layers": "a training setting: train.py --freezed",
            "block_kwargs.fp16_channels_last": _SPEED_ONLY,
        },
        required={"architecture": (("resnet",), "Discriminator")},
        defaults={"conv_clamp": "Discriminator", "num_fp16_res": "Discriminator"},
    ),
    ("stylegan3", "Generator"): Translation(
        our_class=networks_stylegan3.Generator,
        accepted=words(
            "z_dim c_dim w_dim img_resolution img_channels channel_base channel_max num_layers num_critical "
            "first_cutoff first_stopband last_stopband_rel margin_size output_scale num_fp16_res conv_kernel "
            "filter_size lrelu_upsampling use_radial_filters conv_clamp magnitude_ema_beta"
        ),
        nested={"mapping_kwargs": _MAPPING_KWARGS},
        defaults={
            "conv_clamp": "SynthesisLayer",
            "num_fp16_res": "SynthesisNetwork",
            "magnitude_ema_beta": "SynthesisLayer",
        },
    ),
    ("creps", "Generator"): Translation(
        our_class=networks_creps.Generator,
        accepted=words(
            "z_dim c_dim w_dim img_resolution img_channels biline_channels channel_base channel_max num_fp16_res "
            "fc_clamp"
        ),
        nested={"mapping_kwargs": _MAPPING_KWARGS},
        dropped={"fp16_channels_last": _SPEED_ONLY},
        required={"architecture": (("skip",), "SynthesisBlock"), "activation": (("lrelu",), "SynthesisLayer")},
        defaults={"fc_clamp": "SynthesisBlock", "num_fp16_res": "SynthesisNetwork"},
    ),
    ("augment", "AugmentPipe"): Translation(
        our_class=augment.AugmentPipe,
        accepted=words(
            "xflip rotate90 xint xint_max scale rotate aniso xfrac scale_std rotate_max aniso_std xfrac_std "
            "brightness contrast lumaflip hue saturation brightness_std contrast_std hue_max saturation_std "
            "imgfilter imgfilter_bands imgfilter_std noise cutout noise_std cutout_size"
        ),
        # The published pipe stores its wavelet and filter bank as buffers; ours computes the same constants.
        derived={
            "Hz_geom": lambda pipe: pipe.resample_filter,
            "Hz_fbank": lambda pipe: torch.as_tensor(augment.make_band_filters()),
        },
    ),
}

# Layer settings compared between each published submodule and ours after the rebuild: any difference means our
# network would compute something else, which is refused rather than loaded.
CHECKED_ATTRIBUTES = words(
    "activation act_gain bandwidth bias_gain channels cmap_dim conv_clamp conv_kernel down down_factor fc_clamp "
    "group_size img_channels img_resolution in_channels in_sampling_rate in_size is_critically_sampled is_torgb "
    "magnitude_ema_beta margin_size num_channels num_fp16_res num_ws out_channels out_sampling_rate out_size "
    "output_scale padding rank resolution sampling_rate up up_factor use_fp16 use_noise w_avg_beta w_dim "
    "weight_gain z_dim"
)


def translate_kwargs(record: PersistentRecord, spec: Translation, label: str) -> tuple[dict[str, Any], list[str]]:
    """Our constructor arguments for a published object, and notes on what was dropped or defaulted (`label`
    names it in errors)."""
    kwargs = record.init_kwargs
    kwargs.update(kwargs.pop("synthesis_kwargs", None) or {})  # StyleGAN2-ADA-PyTorch nests them; StyleGAN3 not.
    ours: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in kwargs.items():
        if key in spec.required:
            _check_required(record, spec, key, value, label)
        elif key in spec.dropped:
            notes.append(f"ignored {key}={value!r} ({spec.dropped[key]})")
        elif key in spec.nested:
            inner = {}
            for inner_key, inner_value in (value or {}).items():
                full = f"{key}.{inner_key}"
                if full in spec.dropped:
                    notes.append(f"ignored {full}={inner_value!r} ({spec.dropped[full]})")
                elif inner_key in spec.nested[key]:
                    inner[inner_key] = inner_value
                else:
                    raise ConversionError(
                        f"{label}: the published {record.class_name} was built with {full}="
                        f"{inner_value!r}, which our {spec.our_class.__name__} does not implement"
                    )
            ours[key] = inner
        elif key in spec.accepted:
            ours[key] = value
        else:
            raise ConversionError(
                f"{label}: the published {record.class_name} was built with {key}={value!r}, "
                f"which our {spec.our_class.__name__} does not implement"
            )
    for key in spec.required:
        if key not in kwargs:
            _check_required(record, spec, key, None, label)
    for key, published_class in spec.defaults.items():
        if key not in ours:
            ours[key] = record.source.default(published_class, key)
            notes.append(f"{key}={ours[key]!r}, the published {published_class}'s default")
    return ours, notes


def _check_required(record: PersistentRecord, spec: Translation, key: str, value: Any, label: str) -> None:
    """Refuse an architecture (or similar) setting that our class does not implement."""
    allowed, published_class = spec.required[key]
    if value is None:
        value = record.source.default(published_class, key)
    if value not in allowed:
        raise ConversionError(
            f"{label}: the published {record.class_name} uses {key}={value!r}; only "
            f"{' or '.join(map(repr, allowed))} is implemented here"
        )


def convert_published(record: Any, label: str) -> tuple[torch.nn.Module, list[str]]:
    """Rebuild one published persistent network as our class, with every tensor copied and checked.

    Args:
        record: The network as read by the restricted unpickler.
        label:  How messages name it ('file.pkl: G_ema').
    """
    if not isinstance(record, PersistentRecord):
        raise ConversionError(f"{label} is a {type(record).__name__}, not a published network")
    spec = TRANSLATIONS.get((record.source.family, record.class_name))
    if spec is None:
        known = ", ".join(f"{name} ({family})" for family, name in TRANSLATIONS)
        raise ConversionError(f"{label} is a {record.description}; the published classes read here are: {known}")
    kwargs, notes = translate_kwargs(record, spec, label)
    try:
        module = spec.our_class(**kwargs)
    except (AssertionError, TypeError, ValueError) as error:
        raise ConversionError(
            f"{label}: building our {spec.our_class.__name__} from the published arguments {kwargs} failed ({error})"
        ) from None
    published = named_tensors(record)
    for name, ours_of in spec.derived.items():
        value = published.pop(name, None)
        if value is not None and not _close(value, ours_of(module)):
            raise ConversionError(f"{label}: the published constant {name} differs from the one we compute")
    copy_tensors(published, module, label)
    check_attributes(record, module, label)
    return module.eval().requires_grad_(False), notes


def copy_tensors(tensors: dict[str, torch.Tensor | np.ndarray], module: torch.nn.Module, label: str) -> None:
    """Copy `tensors` into `module`'s parameters and buffers by name; every name and shape must match exactly."""
    targets = module.state_dict(keep_vars=True)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    mismatched = [
        f"{name} {list(np.shape(tensors[name]))} vs ours {list(targets[name].shape)}"
        for name in sorted(set(targets) & set(tensors))
        if tuple(np.shape(tensors[name])) != tuple(targets[name].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{title}: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}"
            for title, names in [("missing", missing), ("unexpected", unexpected), ("shape", mismatched)]
            if names
        ]
        raise ConversionError(f"{label}: its tensors do not match our network's ({'; '.join(parts)})")
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(torch.as_tensor(tensors[name]))


def check_attributes(record: ModuleRecord, module: torch.nn.Module, label: str) -> None:
    """Refuse if any published submodule's layer settings (CHECKED_ATTRIBUTES) differ from our rebuild's."""
    for path, submodule in module.named_modules():
        published = find_submodule(record, path)
        if published is None:
            continue
        attributes = module_attributes(published)
        for name in sorted(CHECKED_ATTRIBUTES):
            if name in attributes and name in submodule.__dict__:
                theirs, ours = attributes[name], submodule.__dict__[name]
                if not _same(theirs, ours):
                    where = f"{path}.{name}" if path else name
                    raise ConversionError(
                        f"{label}: {where} is {theirs!r} in the published network but would be "
                        f"{ours!r} in ours, so they would compute different images"
                    )


def _same(a: Any, b: Any) -> bool:
    """Equal settings: numbers to 1e-6 relative, sequences element by element (a per-axis pair equals a number
    when both entries do), anything else by ==."""
    a, b = plain(a), plain(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, list | tuple) != isinstance(b, list | tuple):  # Per-axis pairs such as StyleGAN3's [36, 36].
        pair, single = (a, b) if isinstance(a, list | tuple) else (b, a)
        return len(pair) > 0 and all(_same(x, single) for x in pair)
    return a == b


def _close(a: Any, b: torch.Tensor) -> bool:
    """Whether a published constant equals ours to float32 precision."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = b.detach().to(torch.float64).cpu()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-7))


def dataset_kwargs_of(published: Any) -> dict[str, Any] | None:
    """The published `training_set_kwargs` as our ImageFolderDataset arguments (class_name dropped)."""
    if not isinstance(published, dict):
        return None
    keep = ("path", "resolution", "max_size", "use_labels", "xflip", "random_seed")
    return {key: published[key] for key in keep if key in published}
