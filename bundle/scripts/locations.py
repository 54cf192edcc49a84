"""Where the bundle's files are, in a source checkout and in an installed wheel alike.

The bundle is the ``corx_bundle`` package: its configs, docs and weight list are package data, found through
``importlib.resources``. The Triton Python-backend template (``corxnet/1/model.py``) is ``triton_repo/`` beside
``bundle/`` in a checkout and ``corx_bundle/triton_repo/`` in a wheel. Weights (``models/*.pt``) are not in the
wheel: pass ``--checkpoint``, or install from a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

TRITON_TEMPLATE = Path("corxnet") / "1" / "model.py"


def bundle_root() -> Path:
    """The bundle folder (configs/, models/, docs/)."""
    try:
        return Path(str(resources.files("corx_bundle")))
    except ModuleNotFoundError:  # run as a MONAI bundle from its folder (``scripts.*``), corx not installed
        return Path(__file__).resolve().parents[1]


def in_source_checkout() -> bool:
    """True when the bundle is ``bundle/`` of a corx source checkout (editable install or run from the tree)."""
    root = bundle_root()
    return (root.parent / "pyproject.toml").is_file() and (root.parent / "triton_repo").is_dir()


def triton_template_dir() -> Path:
    """The folder holding the Triton model repository template (``corxnet/1/model.py``)."""
    root = bundle_root()
    for candidate in (root.parent / "triton_repo", root / "triton_repo"):
        if (candidate / TRITON_TEMPLATE).is_file():
            return candidate
    raise FileNotFoundError(f"no Triton template {TRITON_TEMPLATE} under {root.parent / 'triton_repo'} or "
                            f"{root / 'triton_repo'}: the corx installation is incomplete")


def default_triton_repo() -> Path:
    """Where ``corx export``/``corx serve`` put the model repository without ``--repo``: the checkout's
    ``triton_repo/``, or ``./triton_repo`` for an installed wheel (never inside site-packages)."""
    return bundle_root().parent / "triton_repo" if in_source_checkout() else Path.cwd() / "triton_repo"


def default_checkpoint() -> Path:
    """The shipped CoRX-NET weights of the bundle (present in a checkout, absent from a wheel)."""
    return bundle_root() / "models" / "model.pt"
