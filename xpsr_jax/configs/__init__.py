"""Training configs (ml_collections): ``xpsr_sd15`` (the paper's run), ``tiny`` (tests, demo) and the ablations.

``xpsr-jax train --config NAME`` takes a name from this folder or the path of a config file; a config of your own
can start from one of these (``from xpsr_jax.configs import xpsr_sd15``) and change what it needs.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def bundled() -> list[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.stem for p in FOLDER.glob("*.py") if not p.stem.startswith("_"))


def resolve(spec: str) -> Path:
    """A config file path, or a bundled name (``xpsr_sd15``, ``xpsr_sd15.py``) -> the file. FileNotFoundError
    lists the bundled names."""
    path = Path(spec)
    if path.is_file():
        return path.resolve()
    name = path.name[:-3] if path.name.endswith(".py") else path.name
    if path.parent == Path(".") and (FOLDER / f"{name}.py").is_file() and not name.startswith("_"):
        return FOLDER / f"{name}.py"
    raise FileNotFoundError(f"config {spec!r}: no such file, and not a bundled config ({', '.join(bundled())})")
