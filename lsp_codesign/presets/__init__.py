"""The hardware presets that ship inside the package, found by name.

Every ``*.yaml`` file in this folder is a preset: ``vita.yaml`` (the block-sparse engine of
``hw/``) and ``tpu_v3.yaml`` (an analytic 128x128 systolic array). They are package data, so an
installed ``lsp-codesign`` has them wherever it runs; the repository's ``configs/`` is a link to
this folder.

:func:`resolve_config` is how every ``--hw``/``--config`` value becomes a file: an existing file
wins; otherwise a bare name, with or without ``.yaml`` (``vita``, ``vita.yaml``), names a
preset; anything else is one :class:`~lsp_codesign.config_schema.ConfigError` that lists the
presets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config_schema import ConfigError

__all__ = ["PRESET_DIR", "Preset", "list_presets", "preset_path", "presets", "resolve_config"]

PRESET_DIR = Path(__file__).resolve().parent
_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Preset:
    """One shipped config: its name, file, and the fields a listing shows."""

    name: str
    path: Path
    description: str
    engine: str
    block: str


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob(f"*{_SUFFIX}") if p.is_file())


def preset_path(name: str) -> Path | None:
    """The file of preset ``name`` (``vita`` or ``vita.yaml``), or None if there is none."""
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        return None
    stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    return PRESET_DIR / f"{stem}{_SUFFIX}" if stem in list_presets() else None


def resolve_config(spec: str | os.PathLike) -> Path:
    """The config file that ``spec`` means: an existing path, else a preset of that name.

    Raises
    ------
    ConfigError
        Neither a file nor a preset; the message lists the presets.
    """
    path = Path(spec)
    if path.exists():
        return path
    hit = preset_path(str(spec))
    if hit is not None:
        return hit
    raise ConfigError(f"{spec}: config file not found, and not a preset name (presets: "
                      f"{', '.join(list_presets())}; `lsp-codesign configs` lists them)")


def presets() -> list[Preset]:
    """Every shipped preset with its description, engine and block (read and validated)."""
    from ..config import load_config

    out = []
    for name in list_presets():
        cfg = load_config(PRESET_DIR / f"{name}{_SUFFIX}")
        out.append(Preset(name=name, path=PRESET_DIR / f"{name}{_SUFFIX}",
                          description=cfg.description or "", engine=cfg.engine,
                          block=cfg.block_str))
    return out
